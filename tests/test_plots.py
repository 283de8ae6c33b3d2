"""Figures: curves from a real run's metrics.csv, embeddings, AtariARI bars, and `ssl-toolkit plot`."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_toolkit.plots import plot_atariari, plot_embeddings, project_2d, read_metrics
from ssl_toolkit.plots.atariari import category_key
from ssl_toolkit.plots.curves import plot_curves, without_repeats

ROOT = Path(__file__).resolve().parents[1]
EXE = Path(sys.executable).parent / "ssl-toolkit"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_cli(*args, check=True) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([str(EXE), *map(str, args)], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=600, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-3000:]}")
    return proc


def assert_png(path: Path, min_bytes: int = 5000) -> None:
    """A real, non-blank PNG: signature, decodable, more than a few colours."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > min_bytes, (path, len(data))
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        pixels = np.asarray(im.convert("L"), dtype=np.float32)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert pixels.std() > 5, f"{path} looks blank"


@pytest.fixture(scope="module")
def pretrain_run(atari_shards, tmp_path_factory) -> Path:
    """A real `ssl-toolkit pretrain` run: VICReg on collected Pong frames, 4 steps, every metric logged."""
    runs = tmp_path_factory.mktemp("runs")
    run_cli("pretrain", "--config", "configs/vicreg_atari.yaml", "--data.train_path", atari_shards,
            "--runs_dir", runs, "--name", "tiny", "--trainer.max_steps", 4, "--data.batch_size", 16,
            "--data.num_workers", 0, "--trainer.accelerator", "cpu", "--trainer.devices", 1,
            "--trainer.precision", 32, "--trainer.enable_progress_bar", "false",
            "--trainer.log_every_n_steps", 1, "--model.init_args.projector", "64-64",
            "--model.init_args.monitor_every_n_steps", 2)
    return runs / "tiny"


def test_pretrain_run_writes_its_plots(pretrain_run):
    # the RunArtifacts callback is on by default in `ssl-toolkit pretrain`
    for name in ("loss", "collapse", "lr", "embeddings"):
        assert_png(pretrain_run / "plots" / f"{name}.png")
    stored = np.load(pretrain_run / "embeddings.npz")
    assert stored["embeddings"].shape == (256, 512) and stored["labels"].shape == (256,)


def test_metrics_csv_has_each_loss_term(pretrain_run):
    metrics = read_metrics(pretrain_run / "metrics.csv")
    for key in ("train/loss", "train/invariance", "train/variance", "train/covariance",
                "collapse/std_mean", "collapse/std_min", "collapse/effective_rank"):
        assert key in metrics, key
    assert [s for s, _ in metrics["train/loss"]] == [0, 1, 2, 3]
    # the collapse monitor measured at steps 0 and 2; Lightning repeats the value in between
    assert [s for s, _ in without_repeats(metrics["collapse/effective_rank"])] == [0, 2]


def test_plot_cli_regenerates_every_plot(pretrain_run, tmp_path):
    out = tmp_path / "figs"
    proc = run_cli("plot", pretrain_run, "--out", out, "--max-samples", 64, "--output", tmp_path / "plot.json")
    summary = json.loads((tmp_path / "plot.json").read_text())
    names = sorted(Path(p).name for p in summary["written"])
    assert names == ["collapse.png", "embeddings.png", "loss.png", "lr.png"]
    for name in names:
        assert_png(out / name)
    # no labels in Atari frames and no AtariARI result: said, not failed
    assert "online_probe" not in " ".join(names)
    assert "atariari" in summary["skipped"]
    assert f"wrote {out / 'loss.png'}" in proc.stdout


def test_plot_cli_embeds_from_the_checkpoint_and_draws_atariari(pretrain_run, tmp_path):
    # without the stored embeddings.npz the features come from checkpoints/last.ckpt and the run's data
    run = tmp_path / "copy"
    shutil.copytree(pretrain_run, run, ignore=shutil.ignore_patterns("embeddings.npz", "plots"))
    (run / "probe_atariari_pong.json").write_text(json.dumps(PROBE_RESULT))
    run_cli("plot", run, "--max-samples", 40)
    assert_png(run / "plots" / "embeddings.png")
    assert_png(run / "plots" / "atariari.png")


def test_plot_cli_errors_are_one_line(tmp_path, capsys):
    proc = run_cli("plot", tmp_path / "nope", check=False)
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    # the same entry point in-process (a second process start costs more than the check)
    from ssl_toolkit.cli import main

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["plot", str(empty)]) == 2
    assert "nothing to plot" in capsys.readouterr().err


def test_curves_from_a_csv_with_gaps_and_probe(tmp_path):
    # the CSVLogger layout: one column per metric, empty where not logged that step
    rows = ["epoch,step,train/loss,train/invariance,online_probe/top1,online_probe/loss,lr-SGD"]
    for step in range(40):
        probe = f"{min(1.0, step / 40):.3f},{2.0 - step / 40:.3f}" if step % 2 == 0 else ","
        rows.append(f"0,{step},{5 - step / 10:.3f},{1 / (step + 1):.4f},{probe},")
        rows.append(f",{step},,,,,{0.1 * (1 - step / 40):.4f}")
    (tmp_path / "metrics.csv").write_text("\n".join(rows) + "\n")
    metrics = read_metrics(tmp_path / "metrics.csv")
    assert len(metrics["train/loss"]) == 40 and len(metrics["online_probe/top1"]) == 20
    written = {p.name for p in plot_curves(tmp_path, tmp_path / "plots")}
    assert written == {"loss.png", "online_probe.png", "lr.png"}  # nothing logged for collapse: no figure
    for name in written:
        assert_png(tmp_path / "plots" / name)


def test_pca_projection_is_the_top_two_principal_components():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(200, 16, generator=g) @ torch.diag(torch.linspace(5, 0.1, 16))
    xy = project_2d(z, "pca")
    centred = z - z.mean(0)
    u, s, _ = torch.linalg.svd(centred, full_matrices=False)
    expected = (u[:, :2] * s[:2]).numpy()
    # components are defined up to sign
    for k in range(2):
        sign = np.sign((xy[:, k] * expected[:, k]).sum())
        np.testing.assert_allclose(sign * xy[:, k], expected[:, k], atol=1e-3, rtol=1e-3)


def test_embeddings_plot_coloured_by_label(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 30)
    z = rng.normal(size=(90, 8)) + 4 * np.eye(8)[labels]
    out = plot_embeddings(z, labels, tmp_path / "emb.png", class_names=["bird", "cat", "dog"])
    assert_png(out)
    with pytest.raises(ValueError, match="labels"):
        plot_embeddings(z, labels[:10], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="unknown projection"):
        project_2d(z, "umap")


# the shape `probe atariari --output` writes, with a few of the paper's per-variable numbers for Pong
PROBE_RESULT = {
    "game": "pong",
    "categories_f1": {"Agent Loc.": 0.62, "Small Loc.": 0.35, "Other Loc.": 0.55, "Score/Clock/Lives/Display": 0.8},
    "score_f1": 0.58,
    "variables": {"player_y": {"categories": ["Agent Loc."], "f1": 0.62},
                  "ball_x": {"categories": ["Small Loc."], "f1": 0.3}},
    "published": {
        "f1": {"maj-clf": 0.1, "random-cnn": 0.17, "st-dim": 0.81, "supervised": 0.87},
        "variables": {"player_y": {"random-cnn": 0.2, "st-dim": 0.6, "supervised": 0.9},
                      "ball_x": {"random-cnn": 0.1, "st-dim": 0.8, "supervised": 0.9},
                      "ball_y": {"random-cnn": 0.3, "st-dim": 0.9, "supervised": 1.0}},
    },
}


def test_atariari_bars_from_probe_result_and_paper_table(tmp_path):
    assert_png(plot_atariari(PROBE_RESULT, tmp_path / "a.png"))
    path = tmp_path / "result.json"
    path.write_text(json.dumps({
        "game": "breakout", "categories": {"agent_localization": {"f1": 0.5}, "misc": 0.4},
        "published": {"columns": ["random-cnn"], "rows": {"Agent Loc.": {"random-cnn": 0.31}, "Misc.": {"random-cnn": 0.2}}},
    }))
    assert_png(plot_atariari(path, tmp_path / "b.png", columns=None))
    with pytest.raises(ValueError, match="per-category F1"):
        plot_atariari({"game": "pong"}, tmp_path / "c.png")


def test_category_names_match_in_any_spelling():
    assert {category_key(n) for n in ("Agent Loc.", "agent_localization", "agent")} == {"agent"}
    assert category_key("Small Loc.") == category_key("small_object_localization") == "small"
    assert category_key("Score/Clock/Lives/Display") == "score"
    assert category_key("Misc.") == "misc"


def test_method_of_a_plain_trainer_checkpoint_is_recognised():
    # the demo trains with a plain Trainer: its checkpoint has no LightningCLI `_class_path`
    from ssl_toolkit.methods import METHODS
    from ssl_toolkit.plots.embeddings import _method_class

    small = {"vicreg": {"projector": "32-32"}, "simclr": {"projector": "32-16"},
             "simsiam": {"proj_dim": 32, "pred_dim": 8},
             "mae": {"backbone": "vit_tiny_patch16_224", "backbone_kwargs": {"img_size": 32, "patch_size": 8, "depth": 1},
                     "decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 1}}
    for name, cls in METHODS.items():
        kwargs = {"backbone": "nature_cnn", "backbone_kwargs": {"img_size": [84, 84]}, "in_chans": 1, **small[name]}
        hparams = dict(cls(**kwargs).hparams)
        assert "_class_path" not in hparams
        assert _method_class(hparams) is cls, name
