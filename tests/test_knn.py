"""Weighted cosine kNN: against a brute-force re-statement of the formula, the (k, T) grid, and
``ssl-toolkit probe knn`` as a real process on real JPEGs."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ssl_toolkit.eval.knn import knn_classify, knn_grid, knn_votes

ROOT = Path(__file__).resolve().parents[1]
EXE = Path(sys.executable).parent / "ssl-toolkit"


def brute_force_knn(train_x, train_y, test_x, k, temperature, num_classes):
    """The formula written out per sample: cosine similarity to every training sample, the k most
    similar, each voting exp(sim / T) for its class."""
    out = []
    for q in test_x.tolist():
        sims = []
        for j, t in enumerate(train_x.tolist()):
            dot = sum(a * b for a, b in zip(q, t))
            norm = math.sqrt(sum(a * a for a in q)) * math.sqrt(sum(b * b for b in t))
            sims.append((dot / norm, j))
        sims.sort(key=lambda s: -s[0])
        votes = [0.0] * num_classes
        for sim, j in sims[:k]:
            votes[int(train_y[j])] += math.exp(sim / temperature)
        out.append(votes)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("k,temperature", [(1, 0.07), (5, 0.07), (7, 0.1), (30, 0.5)])
def test_knn_matches_brute_force(k, temperature):
    g = torch.Generator().manual_seed(0)
    train_x, train_y = torch.randn(30, 6, generator=g), torch.randint(0, 4, (30,), generator=g)
    test_x = torch.randn(9, 6, generator=g) * 5  # scale must not matter: cosine
    scores = knn_classify(train_x, train_y, test_x, k=k, temperature=temperature, num_classes=4, chunk=4)
    expected = brute_force_knn(train_x, train_y, test_x, k, temperature, 4)
    torch.testing.assert_close(scores.double(), expected, rtol=1e-5, atol=1e-5)


def test_grid_rows_equal_single_runs():
    g = torch.Generator().manual_seed(1)
    train_x, train_y = torch.randn(50, 8, generator=g), torch.randint(0, 6, (50,), generator=g)
    val_x, val_y = torch.randn(20, 8, generator=g), torch.randint(0, 6, (20,), generator=g)
    grid = knn_grid(train_x, train_y, val_x, val_y, ks=(3, 10), temperatures=(0.07, 0.1), num_classes=6)
    assert [(r["k"], r["temperature"]) for r in grid["results"]] == [(3, 0.07), (3, 0.1), (10, 0.07), (10, 0.1)]
    for row in grid["results"]:
        scores = knn_classify(train_x, train_y, val_x, k=row["k"], temperature=row["temperature"], num_classes=6)
        top1 = 100.0 * float((scores.argmax(1) == val_y).float().mean())
        assert row["top1"] == pytest.approx(top1)
        assert row["top1"] <= row["top5"] <= 100.0
    assert grid["best"]["top1"] == max(r["top1"] for r in grid["results"])


def test_clusters_are_recovered_and_few_classes_make_top5_trivial():
    g = torch.Generator().manual_seed(2)
    centres = torch.eye(3) * 10
    train_y, val_y = torch.arange(3).repeat(10), torch.arange(3).repeat(4)
    train_x = centres[train_y] + torch.randn(30, 3, generator=g)
    val_x = centres[val_y] + torch.randn(12, 3, generator=g)
    grid = knn_grid(train_x, train_y, val_x, val_y, ks=(1, 5), temperatures=(0.07,))
    assert all(r["top1"] == 100.0 and r["top5"] == 100.0 for r in grid["results"])


def test_bad_k_and_temperature():
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 0, 1, 0])
    with pytest.raises(ValueError, match="only 5 samples"):
        knn_classify(x, y, x, k=6)
    with pytest.raises(ValueError, match="k must be"):
        knn_classify(x, y, x, k=0)
    with pytest.raises(ValueError, match="temperature"):
        knn_votes(torch.ones(2, 2), torch.zeros(2, 2, dtype=torch.long), 2, temperature=0.0)


def test_probe_knn_cli_on_real_jpegs(jpeg_folder, jpeg_shards, tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore"}
    cmd = [str(EXE), "probe", "knn", "--encoder", "random:resnet18", "--crop-size", "32", "--workers", "0",
           "--train", str(jpeg_folder), "--val", str(jpeg_shards), "--k", "1", "5", "--temperature", "0.07",
           "--cache-dir", str(tmp_path / "cache"), "--output", str(tmp_path / "knn.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "knn.json").read_text())
    assert [(r["k"], r["temperature"]) for r in result["results"]] == [(1, 0.07), (5, 0.07)]
    # val holds the train images themselves (read from shards): the nearest neighbour is the image itself
    assert result["results"][0]["top1"] == 100.0
    assert result["num_train"] == result["num_val"] == 24
    assert result["features"]["train"]["cached"] is False
    assert "    1   0.07  100.00  100.00" in proc.stdout
