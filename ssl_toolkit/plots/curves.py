"""Training curves from a run directory's ``metrics.csv`` (Lightning's CSVLogger).

A pretraining run (``ssl-toolkit pretrain`` or ``ssl-toolkit demo``) writes ``<run_dir>/metrics.csv``:
one row per logged step, one column per metric, empty where a metric was not logged that step. What
:class:`~ssl_toolkit.methods.base.SSLMethod` logs, and the figure each group becomes:

- ``loss.png``: ``train/loss`` and every loss term the method passes to ``log_terms``
  (``train/invariance``, ``train/variance``, ``train/covariance`` for VICReg), one panel each, since the
  terms live on different scales;
- ``online_probe.png``: ``online_probe/top1`` and ``online_probe/loss`` (only when the data has labels);
- ``collapse.png``: ``collapse/std_mean``, ``collapse/std_min`` (per-dimension std of the
  L2-normalised embeddings; 0 is complete collapse) and ``collapse/effective_rank`` (RankMe);
- ``lr.png``: the learning rate of each parameter group (``lr-*``, from ``LearningRateMonitor``).

Every function is lenient about what is there: a missing group is skipped, never an error.
"""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path

# matplotlib's object API, never pyplot (see the package docstring)
from matplotlib.figure import Figure

Series = list[tuple[int, float]]
METRICS_NAME = "metrics.csv"
# what is not a per-step curve worth a panel
_NOT_TERMS = {"train/loss"}


def find_metrics_csv(run_dir: str | os.PathLike) -> Path:
    """The CSVLogger file of ``run_dir``: ``run_dir/metrics.csv``, else the newest one below it
    (a CSVLogger with its default ``version_N`` folders)."""
    run_dir = Path(run_dir)
    if run_dir.is_file() and run_dir.name.endswith(".csv"):
        return run_dir
    direct = run_dir / METRICS_NAME
    if direct.is_file():
        return direct
    found = sorted(run_dir.rglob(METRICS_NAME), key=lambda p: p.stat().st_mtime) if run_dir.is_dir() else []
    if not found:
        raise FileNotFoundError(
            f"no {METRICS_NAME} in {str(run_dir)!r}; train with the csv logger (--loggers [csv], the default)")
    return found[-1]


def read_metrics(path: str | os.PathLike) -> dict[str, Series]:
    """Every metric of a CSVLogger file as ``{name: [(step, value), …]}`` in file order.

    Rows without a ``step`` and cells that are empty or not numbers are left out.
    """
    series: dict[str, Series] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                step = int(float(row.get("step") or "nan"))
            except ValueError:
                continue
            for key, text in row.items():
                if key in ("step", "epoch") or not text:
                    continue
                try:
                    value = float(text)
                except ValueError:
                    continue
                if math.isfinite(value):
                    series.setdefault(key, []).append((step, value))
    return series


def without_repeats(points: Series) -> Series:
    """Drop a point that repeats the previous value exactly.

    Lightning re-logs a step-level value on later steps until it is logged again, so a metric logged
    every N steps (the collapse monitor) shows up as N identical rows; only the first is a measurement.
    """
    out: Series = []
    for step, value in points:
        if not out or value != out[-1][1]:
            out.append((step, value))
    return out


def smooth(values: list[float], weight: float) -> list[float]:
    """Exponential moving average, debiased as TensorBoard's smoothing slider (weight 0: unchanged)."""
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight**i) if weight else v)
    return out


def _panel(ax, points: Series, label: str, smoothing: float = 0.0) -> None:
    steps = [s for s, _ in points]
    values = [v for _, v in points]
    if smoothing and len(points) > 10:
        ax.plot(steps, values, alpha=0.3, linewidth=1, label=f"{label} (raw)")
        ax.plot(steps, smooth(values, smoothing), linewidth=1.5, label=f"{label} (EMA {smoothing})")
    else:
        ax.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3, linewidth=1.5, label=label)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)


def _save(fig, out_path: Path) -> Path:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    return out_path


def _grid(n: int, width: float = 4.2, height: float = 3.0):
    cols = min(n, 2) if n <= 4 else 3
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(width * cols, height * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def plot_losses(metrics: dict[str, Series], out_path: str | os.PathLike, smoothing: float = 0.6,
                title: str | None = None) -> Path | None:
    """``train/loss`` and every ``train/<term>``, one panel each. None when no loss was logged."""
    keys = (["train/loss"] if "train/loss" in metrics else []) + sorted(
        k for k in metrics if k.startswith("train/") and k not in _NOT_TERMS)
    if not keys:
        return None
    fig, axes = _grid(len(keys))
    for ax, key in zip(axes, keys):
        _panel(ax, metrics[key], key, smoothing)
        ax.set_title(key if key == "train/loss" else f"term: {key.split('/', 1)[1]}")
    if title:
        fig.suptitle(title)
    return _save(fig, Path(out_path))


def plot_online_probe(metrics: dict[str, Series], out_path: str | os.PathLike, smoothing: float = 0.6,
                      title: str | None = None) -> Path | None:
    """Online-probe top-1 accuracy (and its loss). None when the run had no labels."""
    keys = [k for k in ("online_probe/top1", "online_probe/loss") if k in metrics]
    if not keys:
        return None
    fig, axes = _grid(len(keys))
    for ax, key in zip(axes, keys):
        _panel(ax, metrics[key], key, smoothing)
        ax.set_title(key)
        if key.endswith("top1"):
            ax.set_ylim(0, 1)
            ax.set_ylabel("top-1 accuracy (training batches)")
    if title:
        fig.suptitle(title)
    return _save(fig, Path(out_path))


def plot_collapse(metrics: dict[str, Series], out_path: str | os.PathLike, title: str | None = None) -> Path | None:
    """Embedding std (mean and min over dimensions) and effective rank. None when not logged."""
    std_keys = [k for k in ("collapse/std_mean", "collapse/std_min") if k in metrics]
    rank = metrics.get("collapse/effective_rank")
    panels = int(bool(std_keys)) + int(rank is not None)
    if not panels:
        return None
    fig, axes = _grid(panels)
    ax_iter = iter(axes)
    if std_keys:
        ax = next(ax_iter)
        for key in std_keys:
            _panel(ax, without_repeats(metrics[key]), key.split("/", 1)[1])
        ax.set_ylim(bottom=0)
        ax.set_title("embedding std per dimension (L2-normalised; 0 = collapse)")
        ax.legend(fontsize=8)
    if rank is not None:
        ax = next(ax_iter)
        _panel(ax, without_repeats(rank), "effective rank")
        ax.set_ylim(bottom=0)
        ax.set_title("effective rank (RankMe)")
    if title:
        fig.suptitle(title)
    return _save(fig, Path(out_path))


def plot_lr(metrics: dict[str, Series], out_path: str | os.PathLike, title: str | None = None) -> Path | None:
    """Learning rate of every parameter group that ``LearningRateMonitor`` logged."""
    keys = sorted(k for k in metrics if k.startswith("lr-"))
    if not keys:
        return None
    fig = Figure(figsize=(5.5, 3.2))
    ax = fig.subplots()
    for key in keys:
        _panel(ax, metrics[key], key)
    ax.set_title("learning rate")
    ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, Path(out_path))


def plot_curves(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> list[Path]:
    """Write every curve figure the run's ``metrics.csv`` allows into ``out_dir`` (default: the run
    directory's ``plots/``). Returns the written paths."""
    csv_path = find_metrics_csv(run_dir)
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "plots"
    metrics = read_metrics(csv_path)
    if not metrics:
        raise ValueError(f"{str(csv_path)!r} holds no logged values yet; train for at least one logged step")
    title = Path(run_dir).name
    written = [
        plot_losses(metrics, out / "loss.png", title=title),
        plot_online_probe(metrics, out / "online_probe.png", title=title),
        plot_collapse(metrics, out / "collapse.png", title=title),
        plot_lr(metrics, out / "lr.png", title=title),
    ]
    return [p for p in written if p is not None]
