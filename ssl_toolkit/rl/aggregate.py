"""Aggregate scores over games and runs: interquartile mean with stratified bootstrap intervals.

Agarwal et al., "Deep Reinforcement Learning at the Edge of the Statistical Precipice" (NeurIPS
2021): with few runs per game, report the interquartile mean (IQM, the mean of the middle 50% of
all run × game scores) and a percentile confidence interval from a *stratified* bootstrap, which
resamples runs with replacement within each game (the games are fixed, the runs are the noise).
Numpy only; ``rliable`` computes the same quantities.
"""
from __future__ import annotations

import numpy as np


def iqm(scores: np.ndarray) -> float:
    """Interquartile mean of all entries of ``scores`` (any shape, e.g. runs × games).

    The mean of the sorted values after cutting ``floor(0.25 n)`` from each end: rliable's
    ``aggregate_iqm`` (``scipy.stats.trim_mean(scores, 0.25, axis=None)``), so numbers compare.
    """
    x = np.sort(np.asarray(scores, np.float64).ravel())
    if x.size == 0:
        raise ValueError("iqm of an empty score array")
    cut = int(0.25 * x.size)
    return float(x[cut:x.size - cut].mean())


def stratified_bootstrap_ci(
    scores: np.ndarray, statistic=iqm, reps: int = 2000, confidence: float = 0.95, seed: int = 0,
) -> tuple[float, float]:
    """Percentile confidence interval of ``statistic`` under a stratified bootstrap.

    Args:
        scores: ``(runs, games)``; each replicate draws ``runs`` rows with replacement independently
            for every game (column).
        statistic: maps a ``(runs, games)`` array to a float (default :func:`iqm`).
        reps: bootstrap replicates.
        confidence: the interval covers this central fraction of the replicates.
        seed: seeds the resampling.

    Returns:
        ``(low, high)``.
    """
    scores = np.asarray(scores, np.float64)
    if scores.ndim != 2 or scores.size == 0:
        raise ValueError(f"scores must be a non-empty (runs, games) array, got shape {scores.shape}")
    runs, games = scores.shape
    rng = np.random.default_rng(seed)
    stats = np.empty(reps)
    cols = np.arange(games)
    for r in range(reps):
        rows = rng.integers(0, runs, size=(runs, games))  # an independent resample per game
        stats[r] = statistic(scores[rows, cols])
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(low), float(high)


def aggregate(scores: np.ndarray, reps: int = 2000, seed: int = 0) -> dict:
    """IQM, mean and median of ``(runs, games)`` scores, each with its stratified-bootstrap 95% CI.

    Mean and median follow rliable: the mean over all entries, the median over games of each game's
    mean over runs.
    """
    scores = np.asarray(scores, np.float64)
    out = {"runs": int(scores.shape[0]), "games": int(scores.shape[1])}
    for name, fn in (("iqm", iqm), ("mean", lambda s: float(np.mean(s))), ("median", lambda s: float(np.median(np.mean(s, axis=0))))):
        low, high = stratified_bootstrap_ci(scores, fn, reps=reps, seed=seed)
        out[name] = fn(scores)
        out[f"{name}_ci"] = [low, high]
    return out
