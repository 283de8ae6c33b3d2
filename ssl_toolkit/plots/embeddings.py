"""A 2-D picture of what an encoder learned: embeddings projected to the plane, coloured by label.

The projection is PCA (``torch.pca_lowrank`` on the centred embeddings: the two directions of largest
variance, deterministic for a seed); ``method="tsne"`` uses scikit-learn's t-SNE when it is installed.
:func:`embed_checkpoint` computes the embeddings of a run's last checkpoint on the run's own data (one
evaluation view per image, no colour augmentation), so ``ssl-toolkit plot RUN_DIR`` can draw this
without extra input; the run-end callback writes ``embeddings.npz`` from the live model instead.
"""
from __future__ import annotations

import importlib
import inspect
import os
from pathlib import Path

import numpy as np
import torch
# matplotlib's object API, never pyplot (see the package docstring)
from matplotlib import colormaps
from matplotlib.figure import Figure

PROJECTIONS = ("pca", "tsne")


def project_2d(embeddings: torch.Tensor | np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """``(N, D)`` embeddings → ``(N, 2)`` coordinates.

    Args:
        embeddings: one row per sample (N ≥ 2).
        method: ``pca`` (always available) or ``tsne`` (needs scikit-learn).
        seed: seeds the randomised low-rank SVD / t-SNE.
    """
    z = torch.as_tensor(np.asarray(embeddings), dtype=torch.float32)
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(f"embeddings must be (N >= 2, D), got shape {tuple(z.shape)}")
    if method == "pca":
        if z.shape[1] == 1:
            return torch.cat([z - z.mean(0), torch.zeros_like(z)], dim=1).numpy()
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            # pca_lowrank centres z itself; its randomised SVD draws from torch's global RNG. Asking for
            # a few more components than 2 (oversampling) makes the top two exact, not approximate
            u, s, _ = torch.pca_lowrank(z, q=min(z.shape[0], z.shape[1], 12), center=True, niter=6)
        finally:
            torch.random.set_rng_state(generator_state)
        return (u[:, :2] * s[:2]).numpy()
    if method == "tsne":
        try:
            manifold = importlib.import_module("sklearn.manifold")
        except ImportError as err:
            raise ValueError("method='tsne' needs scikit-learn (pip install scikit-learn); or use method='pca'") from err
        perplexity = min(30.0, max(2.0, (z.shape[0] - 1) / 3))
        return manifold.TSNE(2, perplexity=perplexity, random_state=seed, init="pca").fit_transform(z.numpy())
    raise ValueError(f"unknown projection {method!r}; choose one of {list(PROJECTIONS)}")


def plot_embeddings(
    embeddings: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray | list[int] | None,
    out_path: str | os.PathLike,
    class_names: list[str] | None = None,
    method: str = "pca",
    title: str | None = None,
    seed: int = 0,
) -> Path:
    """Scatter of the 2-D projection, one colour per label (label −1, or no labels: one grey cloud).

    Args:
        embeddings: ``(N, D)``.
        labels: ``(N,)`` integer labels or None.
        out_path: PNG to write (parents created).
        class_names: names for the legend, indexed by label.
        method: ``pca`` or ``tsne`` (see :func:`project_2d`).
    """
    xy = project_2d(embeddings, method=method, seed=seed)
    y = np.full(len(xy), -1) if labels is None else np.asarray(labels).reshape(-1)
    if len(y) != len(xy):
        raise ValueError(f"got {len(y)} labels for {len(xy)} embeddings; pass one label per row")
    fig = Figure(figsize=(5.5, 5.0))
    ax = fig.subplots()
    classes = sorted(int(c) for c in np.unique(y) if c >= 0)
    if (y < 0).any():
        ax.scatter(xy[y < 0, 0], xy[y < 0, 1], s=8, c="0.6", alpha=0.7, label="no label" if classes else None)
    cmap = colormaps.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for i, c in enumerate(classes):
        name = class_names[c] if class_names and c < len(class_names) else str(c)
        ax.scatter(xy[y == c, 0], xy[y == c, 1], s=10, color=cmap(i % cmap.N), alpha=0.8, label=name)
    if classes and len(classes) <= 20:
        ax.legend(fontsize=7, markerscale=1.5, loc="best")
    axis = {"pca": "PC", "tsne": "t-SNE "}[method]
    ax.set_xlabel(f"{axis}1")
    ax.set_ylabel(f"{axis}2")
    ax.set_title(title or f"embeddings ({method}, {len(xy)} samples)")
    ax.grid(alpha=0.3)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    return out_path


def _method_class(hparams: dict):
    """The LightningModule class a checkpoint was written by: LightningCLI records it as ``_class_path``;
    a plain ``Trainer.fit`` (the demo) does not, so the one method whose own arguments cover every
    hyper-parameter that the base class does not know is taken."""
    from ssl_toolkit.methods import METHODS, SSLMethod

    class_path = hparams.get("_class_path")
    if class_path:
        module_name, _, class_name = class_path.rpartition(".")
        return getattr(importlib.import_module(module_name), class_name)
    base = set(inspect.signature(SSLMethod.__init__).parameters)
    own = {k for k in hparams if not k.startswith("_")} - base
    fits = [cls for cls in METHODS.values() if own <= set(inspect.signature(cls.__init__).parameters)]
    if len(fits) != 1:
        raise ValueError(f"cannot tell which method wrote this checkpoint (hyper-parameters {sorted(own)}); "
                         "train it through `ssl-toolkit pretrain`, which records the class")
    return fits[0]


@torch.no_grad()
def embed_checkpoint(
    ckpt: str | os.PathLike,
    data_path: str | None = None,
    max_samples: int = 512,
    batch_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Backbone features of a pretraining checkpoint on up to ``max_samples`` images.

    The data is ``data_path``, else the run's own ``val_path`` or ``train_path`` (the data module's
    hyper-parameters stored in the checkpoint), read in order with the run's preset as one evaluation
    view (resize or centre crop, normalise; no colour augmentation).

    Returns: ``(embeddings (N, D), labels (N,), class_names)``; labels are −1 where the data has none.
    """
    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(ckpt)!r}; train the run first or pass another checkpoint")
    # weights_only: a checkpoint is read as plain tensors and containers, never unpickled into code
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    cls = _method_class(state.get("hyper_parameters") or {})
    model = cls.load_from_checkpoint(str(ckpt), map_location="cpu", weights_only=True).eval()
    data_cfg = state.get("datamodule_hyper_parameters") or {}
    path = data_path or data_cfg.get("val_path") or data_cfg.get("train_path")
    if not path:
        raise ValueError(f"checkpoint {str(ckpt)!r} names no data; pass a data path")
    return embed_loader(model, eval_datamodule(data_cfg, path, batch_size), max_samples)


def eval_datamodule(data_hparams: dict, path: str, batch_size: int = 64):
    """An :class:`~ssl_toolkit.data.datamodule.SSLDataModule` reading ``path`` in order as evaluation
    views, with the preset, crop size, image mode and normalisation of a run's data hyper-parameters."""
    from ssl_toolkit.data.datamodule import SSLDataModule

    keep = ("preset", "crop_size", "image_mode", "mean", "std", "view_overrides")
    return SSLDataModule(train_path=path, val_path=path, batch_size=batch_size, num_workers=0, pin_memory=False,
                         **{k: data_hparams[k] for k in keep if data_hparams.get(k) is not None})


@torch.no_grad()
def embed_loader(model, datamodule, max_samples: int = 512) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Backbone features (``model.encode``) of the first ``max_samples`` evaluation views of
    ``datamodule`` (its ``val_dataloader``; an :class:`~ssl_toolkit.data.datamodule.SSLDataModule`)."""
    device = next(model.parameters()).device
    normalise = datamodule.gpu_augment(False, device)
    was_training = model.training
    model.eval()
    feats, labels = [], []
    seen = 0
    try:
        for batch in datamodule.val_dataloader():
            datamodule.on_before_batch_transfer(batch, 0)
            x = normalise([v.to(device) for v in batch["views"]])[0]
            feats.append(model.encode(x).float().cpu())
            labels.append(batch["label"])
            seen += len(x)
            if seen >= max_samples:
                break
    finally:
        model.train(was_training)
    if not feats:
        raise ValueError("the evaluation data yielded no images")
    return torch.cat(feats)[:max_samples], torch.cat(labels)[:max_samples], list(datamodule.classes)
