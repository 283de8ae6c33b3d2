"""The `ssl-toolkit` entry point, run as a real process on real files."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
EXE = Path(sys.executable).parent / "ssl-toolkit"


def run_cli(*args, cwd=None, check=True) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([str(EXE), *map(str, args)], capture_output=True, text=True, cwd=cwd or ROOT, env=env,
                          timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-3000:]}")
    return proc


# small but real: the config's backbone and heads, tiny batch, 5 steps, single process
FAST = ["--data.batch_size", "8", "--data.num_workers", "0", "--trainer.accelerator", "cpu",
        "--trainer.devices", "1", "--trainer.enable_progress_bar", "false",
        "--trainer.log_every_n_steps", "1"]
MAE_SMALL = ["--model.init_args.backbone_kwargs", "{img_size: 32, patch_size: 4, depth: 2}"]


@pytest.mark.parametrize("method", ["vicreg", "simsiam", "simclr", "mae"])
def test_pretrain_cifar_configs_on_real_jpegs(method, jpeg_folder, tmp_path):
    extra = MAE_SMALL if method == "mae" else []
    run_cli("pretrain", "--config", f"configs/{method}_cifar.yaml", "--data.train_path", jpeg_folder,
            "--trainer.max_steps", 5, "--runs_dir", tmp_path, *FAST, *extra)
    ckpt = tmp_path / f"{method}_cifar" / "checkpoints" / "last.ckpt"
    assert ckpt.exists()
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["global_step"] == 5
    assert (tmp_path / f"{method}_cifar" / "metrics.csv").exists()


@pytest.mark.parametrize("method", ["vicreg", "simsiam", "simclr", "mae"])
def test_pretrain_atari_configs_on_collected_frames(method, atari_shards, tmp_path):
    extra = ["--model.init_args.backbone_kwargs", "{img_size: [84, 84], patch_size: 12, depth: 2}"] if method == "mae" else []
    run_cli("pretrain", "--config", f"configs/{method}_atari.yaml", "--data.train_path", atari_shards,
            "--trainer.max_steps", 5, "--runs_dir", tmp_path, *FAST, *extra)
    state = torch.load(tmp_path / f"{method}_atari" / "checkpoints" / "last.ckpt", map_location="cpu",
                       weights_only=True)
    assert state["global_step"] == 5
    # in_chans was linked from the grayscale data, not typed in the config
    assert state["hyper_parameters"]["in_chans"] == 1


def test_resume_with_ckpt_path_last(jpeg_folder, tmp_path):
    common = ["pretrain", "--config", "configs/vicreg_cifar.yaml", "--data.train_path", jpeg_folder,
              "--runs_dir", tmp_path, "--model.init_args.projector", "64-64", *FAST]
    run_cli(*common, "--trainer.max_steps", 3)
    proc = run_cli(*common, "--trainer.max_steps", 6, "--ckpt_path", "last")
    state = torch.load(tmp_path / "vicreg_cifar" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 6
    assert "Restoring states from the checkpoint" in proc.stderr + proc.stdout


def test_unknown_config_key_is_an_error(jpeg_folder, tmp_path):
    proc = run_cli("pretrain", "--config", "configs/vicreg_cifar.yaml", "--data.train_path", jpeg_folder,
                   "--model.init_args.no_such_key", "1", check=False)
    assert proc.returncode != 0
    assert "no_such_key" in proc.stderr


def test_print_config_shows_resolved_sections():
    proc = run_cli("pretrain", "--config", "configs/simclr_imagenet.yaml", "--print_config")
    assert "class_path: ssl_toolkit.methods.SimCLR" in proc.stdout
    assert "train_path: /data/imagenet/train-{000000..001281}.tar" in proc.stdout


def test_atari_collect_cli(tmp_path):
    out = tmp_path / "frames"
    run_cli("atari", "collect", "--game", "pong", "--frames", 64, "--out", out, "--output", tmp_path / "c.json")
    summary = json.loads((tmp_path / "c.json").read_text())
    assert summary["frames"] == 64
    assert list(out.glob("*.tar"))


def test_bad_game_is_one_line_error(tmp_path):
    proc = run_cli("atari", "collect", "--game", "notagame", "--frames", 8, "--out", tmp_path, check=False)
    assert proc.returncode != 0
    assert "notagame" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_demo_end_to_end_small(tmp_path):
    out = tmp_path / "demo"
    run_cli("demo", "--frames", 300, "--steps", 4, "--probe-frames", 3000, "--ppo-steps", 128,
            "--out", out, "--output", tmp_path / "demo.json")
    summary = json.loads((tmp_path / "demo.json").read_text())
    assert summary["steps"] == 4
    assert Path(summary["checkpoint"]).exists()
    from ssl_toolkit import load_encoder

    assert load_encoder(summary["encoder"]).num_features > 0  # the export loads back
    for name in ("pretrained", "random"):
        assert 0.0 <= summary["atariari"][name]["score_f1"] <= 1.0
        assert "84x84" in summary["atariari"][name]["protocol_deviation"]  # stated, not hidden
    assert Path(summary["ppo"]["agent"]).exists()
    assert (out / "plots" / "loss.png").exists()
    for name in ("pretrained", "random"):  # the AtariARI bars beside the paper's columns
        assert (out / "plots" / f"atariari_{name}.png").stat().st_size > 1000
        saved = json.loads((out / f"atariari_{name}.json").read_text())
        assert saved["score_f1"] == summary["atariari"][name]["score_f1"]


def test_bench_step_writes_json(tmp_path):
    out = tmp_path / "step.json"
    run_cli("bench", "step", "--methods", "vicreg_nature_cnn_84px", "--steps", 1, "--warmup", 0, "--output", out)
    result = json.loads(out.read_text())
    row = result["results"][0]
    assert row["name"] == "vicreg_nature_cnn_84px"
    assert row["float32"]["images_per_s"] > 0 and row["bf16_channels_last"]["gflop_per_step"] > 0
    assert result["matmul_peak_gflops"]["bfloat16"] > 0


def test_missing_data_path_is_one_line_error(tmp_path):
    proc = run_cli("pretrain", "--config", "configs/vicreg_cifar.yaml", "--data.train_path", tmp_path / "nope",
                   "--runs_dir", tmp_path, check=False)
    assert proc.returncode != 0
    assert str(tmp_path / "nope") in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_backbone_lists_close_names(jpeg_folder, tmp_path):
    proc = run_cli("pretrain", "--config", "configs/vicreg_cifar.yaml", "--data.train_path", jpeg_folder,
                   "--model.init_args.backbone", "resnet181", "--runs_dir", tmp_path, check=False)
    assert proc.returncode != 0
    assert "did you mean" in proc.stderr and "resnet18" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bench_collect_cli_writes_json(tmp_path):
    out = tmp_path / "collect.json"
    run_cli("bench", "collect", "--game", "pong", "--frames", 100, "--output", out)
    result = json.loads(out.read_text())
    assert result["frames_per_s"] > 0 and result["ale_steps_per_s"] > 0
