"""What a finished run leaves behind: figures in its directory and, with wandb, a complete record.

:class:`RunArtifacts` is a Lightning callback (on by default in ``ssl-toolkit pretrain``). When ``fit``
ends, on rank 0, it

1. stores the backbone features of up to ``max_samples`` images of the run's data as
   ``<run_dir>/embeddings.npz`` (one evaluation view per image, no colour augmentation);
2. writes every figure the run directory allows into ``<run_dir>/plots/`` (:func:`ssl_toolkit.plots.plot_run`:
   loss terms, online probe, collapse metrics, learning rate, embeddings);
3. when a ``WandbLogger`` is active: puts the resolved LightningCLI config (``config.yaml``) into the
   wandb run's config, logs the figures as images, and logs the exported encoder
   (:func:`ssl_toolkit.export.save_encoder`, ``<run_dir>/encoder.safetensors``) with the config as a
   ``model`` artifact.

wandb never blocks or prompts here: the toolkit creates its WandbLogger offline when ``WANDB_API_KEY``
is unset (``wandb sync <run_dir>/wandb/offline-run-*`` uploads it later), and ``WANDB_MODE=disabled``
turns it into a no-op. A failure in any of these steps is a warning, never an error: the checkpoint is
already written and a figure is not worth a failed run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import CSVLogger, WandbLogger
from pytorch_lightning.utilities import rank_zero_warn

ENCODER_NAME = "encoder.safetensors"
CONFIG_NAME = "config.yaml"


def run_directory(trainer: pl.Trainer) -> Path:
    """Where a run's files are: the CSVLogger's folder (it holds ``metrics.csv``), else
    ``trainer.log_dir``, else ``default_root_dir``."""
    for logger in trainer.loggers:
        if isinstance(logger, CSVLogger):
            return Path(logger.log_dir)
    return Path(trainer.log_dir or trainer.default_root_dir)


class RunArtifacts(Callback):
    """At the end of ``fit``: embeddings, figures and (with wandb) config, images and encoder artifact.

    Args:
        run_dir: the run directory; default: found from the loggers (see :func:`run_directory`).
        embeddings: compute and store ``embeddings.npz`` for the embedding figure.
        max_samples: images embedded for that figure.
        projection: ``pca`` or ``tsne`` (needs scikit-learn) for the embedding figure.
        export_encoder: write ``encoder.safetensors``; None (default): only when logging to wandb,
            which needs the file for its artifact.
    """

    def __init__(self, run_dir: str | None = None, embeddings: bool = True, max_samples: int = 256,
                 projection: str = "pca", export_encoder: bool | None = None):
        super().__init__()
        self.run_dir = run_dir
        self.embeddings = embeddings
        self.max_samples = max_samples
        self.projection = projection
        self.export_encoder = export_encoder
        self.written: list[str] = []

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.fast_dev_run:
            return  # other ranks hold no files; a fast_dev_run logs nothing worth drawing
        run_dir = Path(self.run_dir) if self.run_dir else run_directory(trainer)
        for logger in trainer.loggers:
            # metrics.csv holds only what was flushed: write the rest before reading it
            _warn_on_failure("saving the logger", logger.save)
        if self.embeddings:
            _warn_on_failure("storing embeddings", self._store_embeddings, trainer, pl_module, run_dir)
        result = _warn_on_failure("writing the plots", _plot_run, run_dir, self.projection)
        self.written = list((result or {}).get("written", []))
        wandb_loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        export = self.export_encoder if self.export_encoder is not None else bool(wandb_loggers)
        encoder = _warn_on_failure("exporting the encoder", _export, pl_module, run_dir) if export else None
        for logger in wandb_loggers:
            _warn_on_failure("logging to wandb", _log_to_wandb, logger, run_dir, self.written, encoder)

    def _store_embeddings(self, trainer: pl.Trainer, pl_module: pl.LightningModule, run_dir: Path) -> None:
        from ssl_toolkit.plots.embeddings import embed_loader, eval_datamodule
        from ssl_toolkit.plots.run_dir import EMBEDDINGS_NAME, save_embeddings

        dm = getattr(trainer, "datamodule", None)
        hparams = dict(getattr(dm, "hparams", {}) or {})
        path = hparams.get("val_path") or hparams.get("train_path")
        if not path or not hasattr(pl_module, "encode"):
            return  # not an SSLDataModule / SSLMethod run: nothing to embed
        z, y, classes = embed_loader(pl_module, eval_datamodule(hparams, path), self.max_samples)
        save_embeddings(run_dir / EMBEDDINGS_NAME, z.numpy(), y.numpy(), classes)


def _warn_on_failure(what: str, fn, *args) -> Any:
    try:
        return fn(*args)
    except Exception as err:  # noqa: BLE001 — the run is finished; report and go on
        rank_zero_warn(f"RunArtifacts: {what} failed ({type(err).__name__}: {err}); the run itself is complete")
        return None


def _plot_run(run_dir: Path, projection: str) -> dict:
    from ssl_toolkit.plots.run_dir import plot_run

    return plot_run(run_dir, projection=projection)


def _export(pl_module: pl.LightningModule, run_dir: Path) -> tuple[Path, dict]:
    # imported here: the export module is optional at import time of this callback
    from ssl_toolkit.export import save_encoder

    path = run_dir / ENCODER_NAME
    meta = save_encoder(pl_module, path)
    return path, meta


def _log_to_wandb(logger: WandbLogger, run_dir: Path, images: list[str], encoder: tuple[Path, dict] | None) -> None:
    import wandb
    import yaml

    run = logger.experiment
    if run is None or getattr(run, "disabled", False) or not hasattr(run, "log_artifact"):
        return  # WANDB_MODE=disabled: nothing is recorded
    config_path = run_dir / CONFIG_NAME
    if config_path.is_file():
        config = yaml.safe_load(config_path.read_text()) or {}
        run.config.update({"cli": config}, allow_val_change=True)
    for image in images:
        # one key per figure: wandb shows each in its own panel, at its own size
        logger.log_image(key=f"plots/{Path(image).stem}", images=[str(image)])
    if encoder is not None:
        path, meta = encoder
        artifact = wandb.Artifact(
            name=f"encoder-{run.id}", type="model",
            description=f"{meta.get('method') or 'SSL'} encoder ({meta.get('backbone')}), ssl_toolkit export format",
            metadata={k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool, list, type(None)))},
        )
        artifact.add_file(str(path), name=path.name)
        if config_path.is_file():
            artifact.add_file(str(config_path), name=CONFIG_NAME)
        run.log_artifact(artifact, aliases=["latest"])

