"""Every figure a run directory allows, regenerated from what the directory holds.

=====================================  ================================================================
the run directory holds                 figure (in ``<run_dir>/plots/`` unless told otherwise)
=====================================  ================================================================
``metrics.csv`` (CSVLogger)              ``loss.png``, ``online_probe.png``, ``collapse.png``, ``lr.png``
``embeddings.npz`` (run-end callback)    ``embeddings.png`` (PCA of the stored features)
or ``checkpoints/last.ckpt``             ``embeddings.png`` (features computed from the checkpoint)
``*atariari*.json`` (probe results)      ``atariari.png`` (``atariari_<name>.png`` for several)
=====================================  ================================================================

A figure whose inputs are missing or unreadable is skipped with the reason, never fatal: the caller
gets ``{"written": [...], "skipped": {figure: reason}}``.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ssl_toolkit.plots.atariari import plot_atariari
from ssl_toolkit.plots.curves import plot_curves
from ssl_toolkit.plots.embeddings import PROJECTIONS, embed_checkpoint, plot_embeddings

EMBEDDINGS_NAME = "embeddings.npz"
PLOTS_DIR = "plots"


def save_embeddings(path: str | os.PathLike, embeddings, labels, class_names: list[str] | None = None) -> Path:
    """Store features for later plotting: ``embeddings (N, D)``, ``labels (N,)``, ``classes``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, embeddings=np.asarray(embeddings, dtype=np.float32),
                        labels=np.asarray(labels, dtype=np.int64), classes=np.asarray(class_names or [], dtype=str))
    return path


def load_embeddings(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, list[str]]:
    with np.load(path) as f:
        return f["embeddings"], f["labels"], [str(c) for c in f["classes"]]


def atariari_results(run_dir: Path) -> list[Path]:
    """AtariARI result files in the run directory or one folder below it."""
    found = {*run_dir.glob("*atariari*.json"), *run_dir.glob("*/*atariari*.json")}
    return sorted(p for p in found if p.is_file())


def plot_run(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    projection: str | None = "pca",
    max_samples: int = 512,
    data_path: str | None = None,
) -> dict:
    """Write every figure the run directory allows (see the module docstring).

    Args:
        run_dir: a run directory (``runs/<name>``).
        out_dir: where the PNGs go; default ``<run_dir>/plots``.
        projection: ``pca`` or ``tsne`` for the embedding figure; None skips that figure.
        max_samples: images embedded when the features come from the checkpoint.
        data_path: images to embed instead of the run's own data.
    Returns: ``{"written": [paths], "skipped": {figure: reason}}``.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {str(run_dir)!r} does not exist; pass runs/<name>")
    if projection is not None and projection not in PROJECTIONS:
        raise ValueError(f"unknown projection {projection!r}; choose one of {list(PROJECTIONS)}")
    out = Path(out_dir) if out_dir is not None else run_dir / PLOTS_DIR
    written: list[Path] = []
    skipped: dict[str, str] = {}

    try:
        written += plot_curves(run_dir, out)
    except (FileNotFoundError, ValueError) as err:
        skipped["curves"] = str(err)

    if projection is None:
        skipped["embeddings"] = "turned off"
    else:
        try:
            stored, ckpt = run_dir / EMBEDDINGS_NAME, run_dir / "checkpoints" / "last.ckpt"
            if stored.is_file() and data_path is None:
                z, y, classes = load_embeddings(stored)
            elif ckpt.is_file():
                z, y, classes = embed_checkpoint(ckpt, data_path=data_path, max_samples=max_samples)
            else:
                raise FileNotFoundError(f"neither {EMBEDDINGS_NAME} nor checkpoints/last.ckpt in the run directory")
            written.append(plot_embeddings(z, y, out / "embeddings.png", class_names=classes, method=projection,
                                           title=f"{run_dir.name}: embeddings ({projection}, {len(z)} samples)"))
        except (FileNotFoundError, ValueError) as err:
            skipped["embeddings"] = str(err)

    results = atariari_results(run_dir)
    if not results:
        skipped["atariari"] = "no *atariari*.json result in the run directory"
    for path in results:
        name = "atariari.png" if len(results) == 1 else f"atariari_{path.stem.replace('atariari', '').strip('_-') or path.parent.name}.png"
        try:
            written.append(plot_atariari(path, out / name))
        except (ValueError, OSError) as err:
            skipped[f"atariari:{path.name}"] = str(err)
    return {"written": [str(p) for p in written], "skipped": skipped}
