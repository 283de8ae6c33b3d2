"""The data benchmarks (`bench pipeline`, `bench collect`) on tiny inputs: they run, return the
documented keys with positive numbers, and their baseline and synthetic images are what they claim.
Speed is never asserted here: these are shape-and-contract tests."""
from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_toolkit.augment.presets import IMAGENET_MEAN, IMAGENET_STD
from ssl_toolkit.bench.collect import run_collect_bench
from ssl_toolkit.bench.images import synthetic_jpegs
from ssl_toolkit.bench.pipeline import VICRegTrainTransform, pil_decode, run_pipeline_bench


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_synthetic_jpegs_decode_at_the_requested_size():
    images = synthetic_jpegs(3, size=(120, 90), seed=1)
    assert len(images) == 3 and len({bytes(b) for b in images}) == 3
    assert synthetic_jpegs(3, size=(120, 90), seed=1) == images  # seeded
    for data in images:
        image = Image.open(io.BytesIO(data))
        assert image.format == "JPEG" and image.size == (120, 90)
        pixels = np.asarray(image.convert("RGB"))
        assert pixels.shape == (90, 120, 3) and pixels.std() > 10  # not a flat image


def test_baseline_transform_gives_two_normalised_views():
    torch.manual_seed(0)
    transform = VICRegTrainTransform(crop=224, views=2)
    views = transform(pil_decode(synthetic_jpegs(1, size=(160, 120))[0]))
    assert len(views) == 2
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    for view in views:
        assert view.dtype == torch.float32 and view.shape == (3, 224, 224)
        pixels = view * std + mean  # undo Normalize: ToTensor's [0, 1] (tolerance: float rounding)
        assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
        assert view.min() < 0 or view.max() > 1  # normalised, not left in [0, 1]


def test_pipeline_bench_keys_and_positive_rates(tmp_path):
    out = tmp_path / "pipeline.json"
    result = run_pipeline_bench(
        num_images=16, image_size=(200, 160), device_batches=1, output=str(out),
        repeats=1, baseline_images=4, device_batch_size=4,
    )
    for stage in ("cpu_stage", "baseline", "decode"):
        assert _positive(result[stage]["images_per_s"]) and _positive(result[stage]["images_per_s_median"])
    assert result["cpu_stage"]["num_images"] == 16 and result["baseline"]["num_images"] == 4
    assert _positive(result["speedup_vs_baseline"]) and _positive(result["fraction_of_decode"])
    assert result["speedup_vs_baseline"] == pytest.approx(
        result["cpu_stage"]["images_per_s"] / result["baseline"]["images_per_s"])
    assert result["fraction_of_decode"] == pytest.approx(
        result["cpu_stage"]["images_per_s"] / result["decode"]["images_per_s"])
    assert all(len(v) == 1 and _positive(v[0]) for v in result["per_round"].values())
    cpu_device = result["device_stage"]["cpu"]
    assert _positive(cpu_device["ms_per_batch"]) and cpu_device["threads"] >= 1
    assert result["device_stage"]["batch_size"] == 4
    assert (result["device_stage"]["cuda"] is None) == (not torch.cuda.is_available())
    data = result["data"]
    assert data["source"] == "synthetic" and data["num_images"] == 16 and data["formats"] == ["JPEG"]
    assert data["width_px"] == {"min": 200, "max": 200} and data["height_px"] == {"min": 160, "max": 160}
    assert _positive(data["bytes"]["mean"])
    assert set(result["targets"]) == {"speedup_vs_baseline", "fraction_of_decode"}
    assert result["meets_targets"] == all(t["met"] for t in result["targets"].values())
    assert result["threads"] == 1 and torch.get_num_threads() == result["machine"]["threads"]  # restored
    assert json.loads(out.read_text())["cpu_stage"]["num_images"] == 16


def test_pipeline_bench_reads_given_shards(jpeg_shards):
    result = run_pipeline_bench(
        shards=str(jpeg_shards), num_images=8, device_batches=1, repeats=1, baseline_images=2, device_batch_size=2,
    )
    assert result["data"]["source"] == "shards" and result["data"]["num_images"] == 8
    assert _positive(result["cpu_stage"]["images_per_s"])


def test_collect_bench_keys_and_positive_rates(tmp_path):
    out = tmp_path / "collect.json"
    result = run_collect_bench(game="pong", frames=200, output=str(out), repeats=1)
    assert result["env_id"] == "ALE/Pong-v5" and result["frames"] == 200
    for key in ("frames_per_s", "ale_steps_per_s", "ratio"):
        assert _positive(result[key])
    assert result["ratio"] == pytest.approx(result["frames_per_s"] / result["ale_steps_per_s"])
    assert result["meets_target"] == (result["ratio"] >= result["target_ratio"])
    assert set(result["stages"]) == {"ale", "env", "samples", "collect"}
    for stage in result["stages"].values():
        assert _positive(stage["steps_per_s"]) and _positive(stage["end_to_end_steps_per_s"])
    assert set(result["cost_us_per_frame"]) == {"ale", "env_wrapper", "png_and_samples", "tar_and_index", "total"}
    assert json.loads(out.read_text())["frames"] == 200
