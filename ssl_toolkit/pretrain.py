"""Pretraining through LightningCLI: configs as YAML, derived values linked at run time.

``ssl-toolkit pretrain --config configs/vicreg_cifar.yaml`` runs ``fit`` with:
- ``model``: any :class:`~ssl_toolkit.methods.base.SSLMethod` subclass (``class_path``/``init_args``);
- ``data``: :class:`~ssl_toolkit.data.datamodule.SSLDataModule`;
- ``name`` / ``runs_dir``: checkpoints go to ``<runs_dir>/<name>/checkpoints`` (``last.ckpt`` kept,
  so ``--ckpt_path last`` resumes), logs to ``<runs_dir>/<name>/``;
- ``loggers``: any of ``csv`` (default), ``tensorboard``, ``wandb`` (offline unless ``WANDB_API_KEY``).
The model's ``in_chans`` and ``num_classes`` are not typed in configs: they are linked from the data.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.cli import LightningCLI

from ssl_toolkit.data.datamodule import SSLDataModule
from ssl_toolkit.methods.base import SSLMethod
from ssl_toolkit.tracking import RunArtifacts

LOGGER_NAMES = ("csv", "tensorboard", "wandb")


def make_loggers(names: list[str], run_dir: Path, name: str) -> list:
    """Lightning loggers writing under ``run_dir``; wandb never blocks: offline without an API key."""
    from pytorch_lightning import loggers as pl_loggers

    unknown = sorted(set(names) - set(LOGGER_NAMES))
    if unknown:
        raise ValueError(f"unknown logger(s) {unknown}; choose from {list(LOGGER_NAMES)}")
    out = []
    for logger in names:
        if logger == "csv":
            out.append(pl_loggers.CSVLogger(save_dir=str(run_dir), name="", version=""))
        elif logger == "tensorboard":
            out.append(pl_loggers.TensorBoardLogger(save_dir=str(run_dir), name="tb", version=""))
        elif logger == "wandb":
            offline = not os.environ.get("WANDB_API_KEY")
            out.append(pl_loggers.WandbLogger(
                project=os.environ.get("WANDB_PROJECT", "ssl_toolkit"), name=name,
                save_dir=str(run_dir), offline=offline,
            ))
    return out


class PretrainCLI(LightningCLI):
    """LightningCLI with run naming, a checkpoint callback and data → model links."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--name", type=str, default="pretrain",
                            help="run name: checkpoints and logs go to <runs_dir>/<name>/")
        parser.add_argument("--runs_dir", type=str, default="runs", help="parent of all run directories")
        parser.add_argument("--loggers", type=list[str], default=["csv"],
                            help="any of csv, tensorboard, wandb (offline unless WANDB_API_KEY is set)")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.save_top_k": 0,
                             "checkpoint.every_n_train_steps": 500})
        parser.link_arguments(("runs_dir", "name"), "checkpoint.dirpath",
                              compute_fn=lambda runs_dir, name: str(Path(runs_dir) / name / "checkpoints"))
        parser.link_arguments("data.in_chans", "model.init_args.in_chans", apply_on="instantiate")
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")

    def instantiate_trainer(self, **kwargs):
        cfg = self.config_init[self.subcommand] if self.subcommand else self.config_init
        run_dir = Path(cfg["runs_dir"]) / cfg["name"]
        trainer_cfg = cfg["trainer"]
        if trainer_cfg.get("logger") in (None, True):
            kwargs["logger"] = make_loggers(list(cfg["loggers"]), run_dir, cfg["name"])
        if not trainer_cfg.get("default_root_dir"):
            kwargs["default_root_dir"] = str(run_dir)
        trainer = super().instantiate_trainer(**kwargs)
        if trainer.loggers and not any(isinstance(c, LearningRateMonitor) for c in trainer.callbacks):
            trainer.callbacks.append(LearningRateMonitor(logging_interval="step"))
        if not any(isinstance(c, RunArtifacts) for c in trainer.callbacks):
            # figures, embeddings and (with wandb) the config and encoder artifact at the end of fit
            trainer.callbacks.append(RunArtifacts())
        return trainer


def run_pretrain_cli(args: list[str]) -> PretrainCLI:
    """Run LightningCLI on ``args`` (``["fit", "--config", ...]``)."""
    # the arguments come from `ssl-toolkit pretrain`, not from sys.argv: hide the latter from
    # LightningCLI so it does not warn about receiving both
    saved_argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        return _make_cli(args)
    finally:
        sys.argv = saved_argv


def _make_cli(args: list[str]) -> PretrainCLI:
    return PretrainCLI(
        SSLMethod,
        SSLDataModule,
        subclass_mode_model=True,
        args=args,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )
