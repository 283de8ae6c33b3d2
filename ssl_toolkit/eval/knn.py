"""Weighted k-nearest-neighbour classifier on cached features.

The protocol of Wu et al., "Unsupervised Feature Learning via Non-Parametric Instance
Discrimination" (CVPR 2018), used by DINO, solo-learn and most SSL papers since: features are
L2-normalised, each test sample takes its ``k`` most cosine-similar training samples, and each
neighbour votes for its class with weight ``exp(similarity / T)``. The usual settings are k = 20 or
200 and T = 0.07 or 0.1; :func:`knn_grid` scores all combinations from one similarity pass.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ssl_toolkit.eval.linear_probe import topk_accuracy

DEFAULT_KS = (20, 200)
DEFAULT_TEMPERATURES = (0.07, 0.1)


def _neighbours(train_x: torch.Tensor, test_x: torch.Tensor, k: int, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarities ``(N_test, k)`` and indices ``(N_test, k)`` of each test sample's top-``k``."""
    train_n = F.normalize(train_x.float(), dim=1)
    test_n = F.normalize(test_x.float(), dim=1)
    # at most ~2^27 similarities (512 MB) at a time, whatever the size of the train split
    chunk = max(1, min(chunk, (1 << 27) // max(len(train_n), 1)))
    sims, idx = [], []
    for start in range(0, len(test_n), chunk):
        s, i = (test_n[start : start + chunk] @ train_n.T).topk(k, dim=1)
        sims.append(s)
        idx.append(i)
    return torch.cat(sims), torch.cat(idx)


def knn_votes(
    sims: torch.Tensor, neighbour_labels: torch.Tensor, num_classes: int, temperature: float
) -> torch.Tensor:
    """Class scores ``(N, num_classes)``: ``Σ_neighbours exp(sim / T) · onehot(label)``.

    Args:
        sims: ``(N, k)`` cosine similarities; neighbour_labels: long ``(N, k)``.
    """
    if temperature <= 0:
        raise ValueError(f"kNN temperature must be > 0, got {temperature}")
    weights = (sims / temperature).exp()
    votes = torch.zeros(len(sims), num_classes, dtype=weights.dtype, device=weights.device)
    return votes.scatter_add_(1, neighbour_labels, weights)


def knn_classify(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, k: int = 20,
    temperature: float = 0.07, num_classes: int | None = None, chunk: int = 1024,
) -> torch.Tensor:
    """Class scores ``(N_test, num_classes)`` of the temperature-weighted cosine kNN (see module doc).

    Args:
        train_x: ``(N, D)`` features, train_y: long ``(N,)``; test_x: ``(M, D)``.
        k: neighbours (at most N).
    """
    num_classes = num_classes or int(train_y.max()) + 1
    k = _check_k(k, len(train_x))
    sims, idx = _neighbours(train_x, test_x, k, chunk)
    return knn_votes(sims, train_y[idx], num_classes, temperature)


def _check_k(k: int, n: int) -> int:
    if k < 1:
        raise ValueError(f"--k must be ≥ 1, got {k}")
    if k > n:
        raise ValueError(f"k={k} neighbours asked for but the train split has only {n} samples; pass a smaller --k")
    return k


def knn_grid(
    train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
    ks: Sequence[int] = DEFAULT_KS, temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
    num_classes: int | None = None, chunk: int = 1024,
) -> dict[str, Any]:
    """Top-1/top-5 for every ``(k, T)``; the neighbours are found once, for the largest k.

    Returns:
        ``{"results": [{"k", "temperature", "top1", "top5"}], "best": <row with the highest top-1>,
        "num_train", "num_val", "num_classes"}``.
    """
    if not ks or not temperatures:
        raise ValueError("give at least one k and one temperature")
    num_classes = num_classes or int(max(train_y.max(), val_y.max())) + 1
    k_max = max(_check_k(k, len(train_x)) for k in ks)
    sims, idx = _neighbours(train_x, val_x, k_max, chunk)
    labels = train_y[idx]
    rows = []
    for k in ks:  # topk returns neighbours sorted by similarity, so the first k columns are the top-k
        for t in temperatures:
            scores = knn_votes(sims[:, :k], labels[:, :k], num_classes, t)
            rows.append({"k": int(k), "temperature": float(t), **topk_accuracy(scores, val_y, num_classes)})
    return {"results": rows, "best": max(rows, key=lambda r: r["top1"]), "num_train": len(train_x),
            "num_val": len(val_x), "num_classes": num_classes}


def knn_eval(
    encoder: torch.nn.Module,
    train_path: str,
    val_path: str,
    ks: Sequence[int] = DEFAULT_KS,
    temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
    crop_size: int | None = None,
    batch_size: int = 128,
    num_workers: int = 1,
    precision: str = "auto",
    cache_dir: str | None = None,
    use_cache: bool = True,
) -> dict[str, Any]:
    """:func:`knn_grid` on the frozen ``encoder``'s train and val features (the linear probe's cache).

    Returns:
        :func:`knn_grid`'s result plus ``"features"`` (per split: ``cached``, ``seconds``, ``key``) and
        ``"seconds"`` end to end.
    """
    import time

    from ssl_toolkit.eval.features import extract_splits

    start = time.perf_counter()
    train, val = extract_splits(encoder, train_path, val_path, crop_size=crop_size, batch_size=batch_size,
                                num_workers=num_workers, precision=precision, cache_dir=cache_dir, use_cache=use_cache)
    result = knn_grid(train.features, train.labels, val.features, val.labels, ks=ks, temperatures=temperatures,
                      num_classes=max(train.num_classes, val.num_classes))
    result["features"] = {"train": train.summary(), "val": val.summary()}
    result["crop_size"] = train.meta.get("size")
    result["seconds"] = time.perf_counter() - start
    return result
