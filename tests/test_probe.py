"""Linear probe: cached features (extraction, cache keys), logistic regression, the standard protocol,
and ``ssl-toolkit probe linear`` as a real process on real JPEGs (folder and shards)."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ssl_toolkit.cli import main
from ssl_toolkit.eval.features import extract_features, load_frozen_encoder, weights_sha256
from ssl_toolkit.eval.linear_probe import fit_logistic, linear_probe, topk_accuracy
from ssl_toolkit.eval.standard_protocol import lr_at, sgd_on_features

ROOT = Path(__file__).resolve().parents[1]
EXE = Path(sys.executable).parent / "ssl-toolkit"
# a tiny but real encoder: ResNet-18 at 32 px; decoding in the main process (no worker start-up)
TINY = ["--encoder", "random:resnet18", "--crop-size", "32", "--workers", "0"]


def run_cli(*args, check=True) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([str(EXE), *map(str, args)], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-3000:]}")
    return proc


def blobs(n_per_class: int, num_classes: int, dim: int, spread: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian blobs around fixed random centres (the same centres for every seed)."""
    centres = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(123)) * 3
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(num_classes).repeat_interleave(n_per_class)
    return centres[y] + spread * torch.randn(len(y), dim, generator=g), y


# ------------------------------------------------------------------------------------- end to end
def test_probe_linear_cli_learns_real_jpegs_and_hits_the_cache(jpeg_folder, jpeg_shards, tmp_path, capsys):
    # train on the folder, score on the same images read from shards: learnable, and both readers covered
    args = ["probe", "linear", *TINY, "--train", jpeg_folder, "--val", jpeg_shards, "--cache-dir", tmp_path / "cache"]
    run_cli(*args, "--output", tmp_path / "first.json")
    first = json.loads((tmp_path / "first.json").read_text())
    assert first["protocol"] == "cached"
    assert first["num_train"] == 24 and first["num_val"] == 24 and first["num_classes"] == 3
    assert first["top1"] >= 90.0
    assert first["top5"] == 100.0  # 3 classes: "top-5" is top-3
    assert first["features"]["train"]["cached"] is False and first["features"]["val"]["cached"] is False
    assert [row["weight_decay"] for row in first["sweep"]] == [1e-2, 1e-3, 1e-4, 1e-5, 1e-6]

    # the second run in-process (the entry point's own function; a process start costs seconds here)
    assert main([*map(str, args), "--output", str(tmp_path / "second.json")]) == 0
    second = json.loads((tmp_path / "second.json").read_text())
    assert second["features"]["train"]["cached"] is True and second["features"]["val"]["cached"] is True
    assert "features from cache: train, val" in capsys.readouterr().out
    assert second["top1"] == first["top1"] and second["weight_decay"] == first["weight_decay"]
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2


def test_probe_linear_standard_protocol_cli(jpeg_folder, tmp_path):
    args = ["probe", "linear", *TINY, "--train", jpeg_folder, "--val", jpeg_folder, "--protocol", "standard",
            "--epochs", 2, "--batch-size", 8, "--schedule", "step", "--quiet", "--output", tmp_path / "std.json"]
    assert main(list(map(str, args))) == 0
    result = json.loads((tmp_path / "std.json").read_text())
    assert result["protocol"] == "standard"
    assert result["epochs"] == 2 and result["steps"] == 2 * 3  # 24 images in batches of 8
    assert result["lr"] == pytest.approx(0.1 * 8 / 256)
    assert 0.0 <= result["top1"] <= result["top5"] == 100.0
    assert math.isfinite(result["train_loss"])


def test_cli_errors_are_one_line(jpeg_folder, tmp_path, capsys):
    # in-process through the entry point's main(): the CLI's own error path (exit 2, one line)
    missing = str(tmp_path / "missing")
    cases = ((["--encoder", "random:resnet18", "--train", missing], f"data path {missing!r} does not exist"),
             (["--encoder", "random:resnet1", "--train", str(jpeg_folder)], "unknown backbone 'resnet1'; did you mean"),
             (["--encoder", str(tmp_path / "nope.safetensors"), "--train", str(jpeg_folder)], "does not exist"))
    for args, message in cases:
        for command in ("linear", "knn"):
            assert main(["probe", command, *args, "--val", str(jpeg_folder), "--crop-size", "32"]) == 2
            err = capsys.readouterr().err
            assert message in err and len(err.strip().splitlines()) == 1, err


# --------------------------------------------------------------------------------------- features
@pytest.fixture(scope="module")
def encoder():
    return load_frozen_encoder("random:resnet18", seed=0)


def test_random_encoders_are_seeded():
    a, b = load_frozen_encoder("random:resnet18", seed=0), load_frozen_encoder("random:resnet18", seed=0)
    c = load_frozen_encoder("random:resnet18", seed=1)
    assert weights_sha256(a) == weights_sha256(b) != weights_sha256(c)
    assert not any(p.requires_grad for p in a.parameters()) and not a.training


def test_folder_and_shards_give_the_same_features(encoder, jpeg_folder, jpeg_shards, tmp_path):
    kw = dict(crop_size=32, num_workers=0, precision="fp32", cache_dir=tmp_path)
    folder, shards = extract_features(encoder, jpeg_folder, **kw), extract_features(encoder, jpeg_shards, **kw)
    assert folder.features.shape == (24, encoder.num_features) and folder.features.dtype == torch.float32
    assert folder.classes == shards.classes == ["bird", "cat", "dog"]
    # the shards hold the folder's files in folder order, read back in file order
    assert torch.equal(folder.labels, shards.labels)
    torch.testing.assert_close(folder.features, shards.features, rtol=0, atol=0)
    assert folder.key != shards.key


def test_cache_key_follows_weights_data_and_preprocessing(encoder, jpeg_folder, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(jpeg_folder, data)
    kw = dict(num_workers=0, precision="fp32", cache_dir=tmp_path / "cache")
    base = extract_features(encoder, data, crop_size=32, **kw)
    assert not base.cached
    again = extract_features(encoder, data, crop_size=32, **kw)
    assert again.cached and again.key == base.key
    torch.testing.assert_close(again.features, base.features, rtol=0, atol=0)
    assert not extract_features(encoder, data, crop_size=40, **kw).cached  # preprocessing
    other = load_frozen_encoder("random:resnet18", seed=1)
    assert not extract_features(other, data, crop_size=32, **kw).cached  # weights
    image = next(data.glob("cat/*.jpg"))
    image.write_bytes(image.read_bytes())  # same bytes, new mtime: the data may have changed
    os.utime(image, ns=(1, 1))
    assert not extract_features(encoder, data, crop_size=32, **kw).cached
    assert not extract_features(encoder, data, crop_size=32, use_cache=False, **kw).cached


# ----------------------------------------------------------------------------- logistic regression
def test_logistic_regression_separates_separable_features():
    train_x, train_y = blobs(40, 10, 32, spread=0.5, seed=0)
    val_x, val_y = blobs(20, 10, 32, spread=0.5, seed=1)
    for batchnorm in (True, False):
        result = linear_probe(train_x, train_y, val_x, val_y, batchnorm=batchnorm)
        assert result["top1"] == 100.0 and result["top5"] == 100.0
        assert result["num_classes"] == 10 and len(result["sweep"]) == 5


def test_logistic_regression_matches_its_objective():
    # the L-BFGS solution is a stationary point of mean CE + wd/2 ‖W‖²
    torch.manual_seed(0)
    x, y = torch.randn(200, 8), torch.randint(0, 4, (200,))
    wd = 1e-2
    weight, bias = fit_logistic(x, y, 4, wd, max_iter=500)
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(x @ weight.T + bias, y) + 0.5 * wd * weight.pow(2).sum()
    grad_w, grad_b = torch.autograd.grad(loss, (weight, bias))
    assert grad_w.abs().max() < 1e-4 and grad_b.abs().max() < 1e-4


def test_weight_decay_is_picked_on_held_out_train_not_val():
    # noisy labels: the sweep must matter; and val labels must not influence the pick
    train_x, train_y = blobs(30, 5, 64, spread=4.0, seed=0)
    val_x, val_y = blobs(30, 5, 64, spread=4.0, seed=1)
    a = linear_probe(train_x, train_y, val_x, val_y)
    b = linear_probe(train_x, train_y, val_x, val_y[torch.randperm(len(val_y))])
    assert a["weight_decay"] == b["weight_decay"] == max(a["sweep"], key=lambda r: r["holdout_top1"])["weight_decay"]


def test_topk_accuracy_with_few_classes():
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    labels = torch.tensor([1, 0, 0, 2])
    acc = topk_accuracy(scores, labels, num_classes=3)
    assert acc == {"top1": 50.0, "top5": 100.0}  # fewer than 5 classes: every class is in the "top 5"
    two = topk_accuracy(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([0, 1]), num_classes=2)
    assert two == {"top1": 50.0, "top5": 100.0}
    six = torch.arange(6.0).repeat(2, 1)  # class 5 scores highest, class 0 lowest
    assert topk_accuracy(six, torch.tensor([0, 1]), num_classes=6) == {"top1": 0.0, "top5": 50.0}
    with pytest.raises(ValueError, match="columns"):
        topk_accuracy(scores, labels, num_classes=4)


def test_probe_rejects_bad_input():
    x, y = blobs(4, 2, 8, spread=1.0, seed=0)
    with pytest.raises(ValueError, match="dimensions"):
        linear_probe(x, y, x[:, :4], y)
    with pytest.raises(ValueError, match="holdout_fraction"):
        linear_probe(x, y, x, y, holdout_fraction=1.0)


# ------------------------------------------------------------------------------- standard protocol
def test_schedules():
    assert lr_at(0, 100, 0.4, "cosine") == pytest.approx(0.4)
    assert lr_at(50, 100, 0.4, "cosine") == pytest.approx(0.2)
    assert lr_at(100, 100, 0.4, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert [lr_at(s, 100, 1.0, "step") for s in (0, 59, 60, 79, 80, 99)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_standard_protocol_rejects_a_bad_crop_scale(jpeg_folder, capsys):
    args = ["probe", "linear", *TINY, "--train", str(jpeg_folder), "--val", str(jpeg_folder), "--protocol", "standard",
            "--crop-scale", "0.9", "0.5"]
    assert main(args) == 2
    assert "--crop-scale must be 0 < LO <= HI <= 1" in capsys.readouterr().err


def test_normalisation_follows_the_encoder():
    from ssl_toolkit.eval.features import IMAGENET_MEAN, normalisation

    gray = load_frozen_encoder("random:nature_cnn", in_chans=1)
    assert normalisation(gray) == ((pytest.approx(sum(IMAGENET_MEAN) / 3),), (pytest.approx(0.226, abs=1e-3),))
    gray.encoder_meta.update(mean=[0.0], std=[1.0])  # what an Atari-pretrained encoder records
    assert normalisation(gray) == ((0.0,), (1.0,))
    rgb = load_frozen_encoder("random:resnet18")
    assert normalisation(rgb) == (IMAGENET_MEAN, (0.229, 0.224, 0.225))


def test_standard_protocol_crops_are_the_eval_view_shifted_or_resized(jpeg_folder):
    from ssl_toolkit.eval.features import CenterView
    from ssl_toolkit.eval.standard_protocol import RandomCropFlip

    data = next(iter(sorted(jpeg_folder.glob("cat/*.jpg")))).read_bytes()
    view = CenterView((32, 32), "RGB")(data)[0]
    # "center" without flips is exactly the cached probe's view
    assert torch.equal(RandomCropFlip((32, 32), "RGB", kind="center", flip_p=0.0)(data)[0], view)
    assert torch.equal(RandomCropFlip((32, 32), "RGB", kind="center", flip_p=1.0)(data)[0], view.flip(-1))
    # "padded": a 32×32 window of the view zero-padded by 4 on each side
    padded = torch.nn.functional.pad(view, (4, 4, 4, 4))
    windows = {(t, l): padded[:, t:t + 32, l:l + 32] for t in range(9) for l in range(9)}
    torch.manual_seed(0)
    seen = set()
    for _ in range(20):
        out = RandomCropFlip((32, 32), "RGB", kind="padded", flip_p=0.0)(data)[0]
        matches = [pos for pos, w in windows.items() if torch.equal(out, w)]
        assert matches, "a padded crop is not a window of the padded view"
        seen.update(matches)
    assert len(seen) > 3  # and the shift is random
    resized = RandomCropFlip((32, 32), "RGB", kind="resized")(data)[0]
    assert resized.shape == (3, 32, 32) and resized.dtype == torch.uint8
    with pytest.raises(ValueError, match="--crop must be one of"):
        RandomCropFlip((32, 32), "RGB", kind="random")


def test_sgd_head_on_fixed_features_learns_and_follows_the_schedule():
    train_x, train_y = blobs(40, 4, 16, spread=0.5, seed=0)
    val_x, val_y = blobs(20, 4, 16, spread=0.5, seed=1)
    result = sgd_on_features(train_x, train_y, val_x, val_y, epochs=20, batch_size=32, batchnorm=True)
    assert result["top1"] == 100.0
    assert result["steps"] == 20 * 5 and result["lr"] == pytest.approx(0.1 * 32 / 256)
    assert result["train_loss"] < 0.1


def test_bench_probe_runs_both_protocols_on_real_frames(tmp_path):
    # the benchmark's plumbing on its real dataset (Space Invaders frames labelled from RAM), one epoch
    from ssl_toolkit.bench.probe import run_probe_bench

    result = run_probe_bench(work_dir=tmp_path, epochs=1, num_workers=0)
    data = result["dataset"]
    assert len(data["classes"]) == 7
    for split in ("train", "val"):
        on_disk = len(list((tmp_path / "data" / split).glob("*/*.jpg")))
        assert sum(data["counts"][split].values()) == data["images"][split] == on_disk
    assert result["cached"]["features"]["train"]["cached"] is False  # timed from an empty cache
    assert result["cached_rerun"]["features"]["train"]["cached"] is True
    assert result["cached_rerun"]["top1"] == result["cached"]["top1"]
    assert result["standard"]["epochs"] == 1 and result["standard"]["crop"] == "resized"
    assert result["speedup"] == pytest.approx(result["standard"]["seconds"] / result["cached"]["seconds"])
    split = result["top1_gap_split"]
    assert split["solver"] + split["augmentation"] == pytest.approx(result["top1_gap"])
    assert 100 / 7 < result["cached"]["top1"] <= 100  # above chance on 7 classes


def test_auto_precision_is_decided_once_and_remembered(monkeypatch, tmp_path):
    from ssl_toolkit.eval import features

    monkeypatch.setenv("SSL_TOOLKIT_CACHE", str(tmp_path))
    encoder = load_frozen_encoder("random:resnet18", seed=0).eval()
    x = torch.rand(4, 3, 32, 32)
    first = features.pick_precision(encoder, x, "auto")
    choices = json.loads(features.precision_choices_file().read_text())
    (entry,) = choices.values()
    assert entry["bf16"] == first == (entry["seconds_bf16"] < entry["seconds_fp32"])
    # the next call reads the remembered choice instead of racing again, even if the race would differ
    entry["bf16"] = not first
    features.precision_choices_file().write_text(json.dumps({next(iter(choices)): entry}))
    assert features.pick_precision(encoder, x, "auto") is (not first)
    assert features.pick_precision(encoder, x, "fp32") is False and features.pick_precision(encoder, x, "bf16")
    with pytest.raises(ValueError, match="precision must be one of"):
        features.pick_precision(encoder, x, "fp16")
