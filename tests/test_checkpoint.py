"""A crash mid-run leaves the last good checkpoint intact, and a run resumes from it."""
from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from ssl_toolkit.data.datamodule import SSLDataModule
from ssl_toolkit.methods import VICReg


def _run(data_path, tmp_path, max_steps, callbacks, ckpt_path=None):
    data = SSLDataModule(train_path=str(data_path), batch_size=4, num_workers=0, preset="vicreg",
                         crop_size=32)
    model = VICReg(backbone="resnet18", backbone_kwargs={"small_images": True}, in_chans=3, projector="16-16")
    ckpt = ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True, save_top_k=0, every_n_train_steps=2)
    trainer = pl.Trainer(max_steps=max_steps, accelerator="cpu", default_root_dir=tmp_path, logger=False,
                         callbacks=[ckpt, *callbacks], enable_progress_bar=False)
    trainer.fit(model, data, ckpt_path=ckpt_path)
    return trainer


def test_crash_keeps_last_good_checkpoint_and_resume_continues(jpeg_folder, tmp_path, crash_at):
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(jpeg_folder, run, max_steps=10, callbacks=[crash_at(5)])
    last = run / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["global_step"] == 4  # the last checkpoint written before the crash, loadable
    assert not list((run / "checkpoints").glob("*.tmp*"))
    trainer = _run(jpeg_folder, run, max_steps=6, callbacks=[], ckpt_path=str(last))
    assert trainer.global_step == 6
