"""Logger selection for pretraining runs: csv by default, tensorboard and wandb on request."""
from __future__ import annotations

import pytest
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger, WandbLogger

from ssl_toolkit.pretrain import make_loggers


def test_all_loggers_write_under_the_run_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    loggers = make_loggers(["csv", "tensorboard", "wandb"], tmp_path / "run", "run")
    assert [type(lg) for lg in loggers] == [CSVLogger, TensorBoardLogger, WandbLogger]
    assert loggers[0].log_dir.rstrip("/") == str(tmp_path / "run")
    assert loggers[1].log_dir.startswith(str(tmp_path / "run"))
    # no API key: wandb must never block or ask, so it runs offline
    assert loggers[2]._offline is True


def test_unknown_logger_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="unknown logger"):
        make_loggers(["mlflow"], tmp_path, "run")
