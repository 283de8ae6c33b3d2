"""Linear probe on cached features: multinomial logistic regression with a small weight-decay sweep.

The classifier is fit full-batch with L-BFGS (the solver scikit-learn's ``LogisticRegression``
uses), which on fixed features converges in seconds where the published protocol
(:mod:`ssl_toolkit.eval.standard_protocol`) spends 100 epochs of forward passes. The weight decay is
picked on a held-out part of the training split (never on the validation split), then the model is
refit on all of train and scored on val: top-1 and top-5 accuracy.

Optionally the features first pass a BatchNorm without affine parameters (train mean and variance),
as MAE evaluates its linear probe (He et al., "Masked Autoencoders Are Scalable Vision Learners",
CVPR 2022, appendix A.2); for a linear classifier that is a re-parametrisation, but it makes the
problem well conditioned and the weight decay comparable across encoders.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F

DEFAULT_WEIGHT_DECAYS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)
BN_EPS = 1e-5  # torch.nn.BatchNorm1d's
# below this many multiply-adds per pass (N·D·C) the fit runs on one thread: OpenMP's barriers cost
# more than such small matmuls gain, and on a busy machine 10× more (measured: 71 ms vs 6.5 ms per
# L-BFGS evaluation of a 1509×512×7 problem on 2 loaded cores)
SINGLE_THREAD_MACS = 1 << 26


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, float]:
    """Top-1 and top-5 accuracy in percent (top-5 is top-``num_classes`` when there are fewer classes).

    Args:
        scores: ``(N, num_classes)`` logits or votes, higher is better.
        labels: long ``(N,)``.
    """
    if scores.shape[1] != num_classes:
        raise ValueError(f"scores have {scores.shape[1]} columns for {num_classes} classes")
    # by hand rather than torchmetrics: its import alone costs seconds of every CLI start
    top = scores.float().topk(min(5, num_classes), dim=1).indices
    hits = top == labels.view(-1, 1)
    return {"top1": 100.0 * float(hits[:, 0].float().mean()), "top5": 100.0 * float(hits.any(dim=1).float().mean())}


@dataclass
class Standardizer:
    """Non-affine BatchNorm with fixed (train) statistics: ``(x − mean) / sqrt(var + eps)``."""

    mean: torch.Tensor  # (D,)
    scale: torch.Tensor  # (D,)

    @classmethod
    def fit(cls, x: torch.Tensor) -> "Standardizer":
        var, mean = torch.var_mean(x, dim=0, unbiased=False)
        return cls(mean, torch.rsqrt(var + BN_EPS))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) * self.scale


def fit_logistic(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    weight_decay: float,
    max_iter: int = 100,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
    chunk: int = 65536,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise ``mean CE(x Wᵀ + b, y) + weight_decay / 2 · ‖W‖²`` (bias not decayed) with L-BFGS.

    Args:
        x: float ``(N, D)`` features; y: long ``(N,)`` in ``[0, num_classes)``.
        init: ``(W (C, D), b (C,))`` to start from (warm start along a sweep); zeros by default.
        chunk: rows per forward/backward, so memory stays bounded for large N.

    Returns:
        ``(W (num_classes, D), b (num_classes,))``.
    """
    n, d = x.shape
    if init is None:
        weight = torch.zeros(num_classes, d, device=x.device)
        bias = torch.zeros(num_classes, device=x.device)
    else:
        weight, bias = init[0].clone(), init[1].clone()
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-6, tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        # the gradient in closed form, (softmax − onehot)ᵀ x / N, rather than through autograd: the
        # same numbers without building a graph (a 1509×512×7 sweep: 0.72 s against 0.92 s)
        grad_w = weight * weight_decay
        grad_b = torch.zeros_like(bias)
        total = 0.5 * weight_decay * float(weight.pow(2).sum())
        for start in range(0, n, chunk):
            xs, ys = x[start : start + chunk], y[start : start + chunk]
            logits = torch.addmm(bias, xs, weight.t())
            log_norm = torch.logsumexp(logits, dim=1)
            total += float((log_norm - logits.gather(1, ys.view(-1, 1)).squeeze(1)).sum()) / n
            residual = torch.exp(logits - log_norm.view(-1, 1))  # softmax, (B, C)
            residual[torch.arange(len(ys), device=ys.device), ys] -= 1.0
            grad_w.addmm_(residual.t(), xs, alpha=1.0 / n)
            grad_b += residual.sum(0) / n
        weight.grad, bias.grad = grad_w, grad_b
        return torch.tensor(total)

    threads = torch.get_num_threads()
    if n * d * num_classes < SINGLE_THREAD_MACS:
        torch.set_num_threads(1)
    try:
        with torch.no_grad():
            optimizer.step(closure)
    finally:
        torch.set_num_threads(threads)
    return weight.detach(), bias.detach()


def _split_holdout(n: int, fraction: float, seed: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(device)
    held = max(1, int(round(n * fraction)))
    return order[held:], order[:held]


def linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    num_classes: int | None = None,
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
    holdout_fraction: float = 0.1,
    batchnorm: bool = True,
    max_iter: int = 100,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Fit the probe on train features (weight decay picked on a held-out part), score it on val.

    Args:
        train_x, val_x: float ``(N, D)`` features; train_y, val_y: long ``(N,)`` labels.
        num_classes: default ``max label + 1``.
        weight_decays: the sweep; one value skips the hold-out.
        holdout_fraction: part of train held out to pick the weight decay.
        batchnorm: standardise features with train statistics first (non-affine BatchNorm).
        device: where to fit; default CUDA when available, else the CPU.

    Returns:
        ``{"top1", "top5", "weight_decay", "sweep": [{"weight_decay", "holdout_top1"}], "batchnorm",
        "num_classes", "num_train", "num_val", "num_features"}``.
    """
    if len(train_x) < 2 or len(val_x) < 1:
        raise ValueError(f"the probe needs ≥ 2 train and ≥ 1 val samples, got {len(train_x)} and {len(val_x)}")
    if train_x.shape[1] != val_x.shape[1]:
        raise ValueError(f"train features have {train_x.shape[1]} dimensions, val {val_x.shape[1]}; same encoder?")
    if not weight_decays:
        raise ValueError("give at least one weight decay")
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    num_classes = num_classes or int(max(train_y.max(), val_y.max())) + 1
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    train_x, val_x = train_x.to(device, torch.float32), val_x.to(device, torch.float32)
    train_y, val_y = train_y.to(device), val_y.to(device)

    sweep, solutions = [], {}
    if len(weight_decays) > 1:
        fit_idx, held_idx = _split_holdout(len(train_x), holdout_fraction, seed, device)
        norm = Standardizer.fit(train_x[fit_idx]) if batchnorm else (lambda t: t)
        fit_x, held_x = norm(train_x[fit_idx]), norm(train_x[held_idx])
        params = None
        # strongest decay first: each solution warm-starts the next, less regularised one
        for wd in sorted(weight_decays, reverse=True):
            params = fit_logistic(fit_x, train_y[fit_idx], num_classes, wd, max_iter=max_iter, init=params)
            held = topk_accuracy(F.linear(held_x, *params), train_y[held_idx], num_classes)
            sweep.append({"weight_decay": wd, "holdout_top1": held["top1"]})
            solutions[wd] = params
        # ties go to the stronger decay (listed first)
        best = max(sweep, key=lambda row: row["holdout_top1"])["weight_decay"]
    else:
        best = float(weight_decays[0])

    norm = Standardizer.fit(train_x) if batchnorm else (lambda t: t)
    # warm start from the sweep's solution: same decay, 1 - holdout_fraction of the data
    weight, bias = fit_logistic(norm(train_x), train_y, num_classes, best, max_iter=max_iter, init=solutions.get(best))
    scores = F.linear(norm(val_x), weight, bias)
    train_top1 = topk_accuracy(F.linear(norm(train_x), weight, bias), train_y, num_classes)["top1"]
    return {
        **topk_accuracy(scores, val_y, num_classes),
        "train_top1": train_top1,
        "weight_decay": best,
        "sweep": sweep,
        "batchnorm": batchnorm,
        "num_classes": num_classes,
        "num_train": len(train_x),
        "num_val": len(val_x),
        "num_features": train_x.shape[1],
        "holdout_fraction": holdout_fraction if sweep else None,
        "converged_loss": _loss(norm(train_x), train_y, weight, bias, best),
    }


def _loss(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, wd: float) -> float:
    value = float(F.cross_entropy(F.linear(x, weight, bias), y)) + 0.5 * wd * float(weight.pow(2).sum())
    return value if math.isfinite(value) else float("nan")


def cached_linear_eval(
    encoder: torch.nn.Module,
    train_path: str,
    val_path: str,
    crop_size: int | None = None,
    batch_size: int = 128,
    num_workers: int = 1,
    precision: str = "auto",
    cache_dir: str | None = None,
    use_cache: bool = True,
    **probe_kwargs: Any,
) -> dict[str, Any]:
    """Extract (or load) train and val features of the frozen ``encoder``, then :func:`linear_probe`.

    Returns:
        :func:`linear_probe`'s result plus ``"features": {"train"|"val": {"cached", "seconds", "key",
        "num_samples"}}``, ``"crop_size"``, ``"bf16"`` and ``"seconds"`` (end to end).
    """
    import time

    from ssl_toolkit.eval.features import extract_splits

    start = time.perf_counter()
    train, val = extract_splits(encoder, train_path, val_path, crop_size=crop_size, batch_size=batch_size,
                                num_workers=num_workers, precision=precision, cache_dir=cache_dir, use_cache=use_cache)
    num_classes = max(train.num_classes, val.num_classes)
    fit_start = time.perf_counter()
    result = linear_probe(train.features, train.labels, val.features, val.labels, num_classes=num_classes,
                          **probe_kwargs)
    result["fit_seconds"] = time.perf_counter() - fit_start
    result["features"] = {"train": train.summary(), "val": val.summary()}
    result["crop_size"] = train.meta.get("size")
    result["bf16"] = train.meta.get("bf16")
    result["seconds"] = time.perf_counter() - start
    return result
