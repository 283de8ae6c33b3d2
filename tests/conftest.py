"""Session fixtures shared by the test modules: small but real data on disk.

- ``jpeg_folder``: an ImageFolder tree of real JPEGs, 3 classes × 8 images of 64×48 … 96×80 px, each
  class with its own colour and gradient direction (labels are learnable).
- ``jpeg_shards``: the same files written as webdataset shards (3 shards of ≤ 10 samples + index.json).
- ``atari_shards``: a real ALE collect of Pong, 300 grayscale 210×160 frames with RAM, 3 shards.
"""
from __future__ import annotations

import os
import tempfile

os.environ["WANDB_MODE"] = "disabled"
# feature caches and remembered precision choices of this run stay out of the user's ~/.cache
os.environ["SSL_TOOLKIT_CACHE"] = tempfile.mkdtemp(prefix="ssl_toolkit_test_cache_")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

# created in this order, listed sorted: bird (0), cat (1), dog (2)
JPEG_CLASSES = ("dog", "cat", "bird")
IMAGES_PER_CLASS = 8
ATARI_FRAMES = 300


def _class_image(class_index: int, i: int, rng: np.random.Generator) -> Image.Image:
    width, height = 64 + 4 * i, 48 + 4 * i  # 64×48 … 92×76
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = [x / width, y / height, (x + y) / (width + height)][class_index]  # gradient direction per class
    image = np.zeros((height, width, 3), np.float32)
    image[..., class_index] = 120 + 135 * ramp  # dominant channel per class
    image[..., (class_index + 1) % 3] = 60 * (1 - ramp)
    image += rng.normal(0, 8, image.shape)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), "RGB")


@pytest.fixture(scope="session")
def jpeg_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("jpeg_folder")
    rng = np.random.default_rng(0)
    for class_index, name in enumerate(JPEG_CLASSES):
        (root / name).mkdir()
        for i in range(IMAGES_PER_CLASS):
            # one upper-case extension per class: listing is case-insensitive
            suffix = ".JPEG" if i == IMAGES_PER_CLASS - 1 else ".jpg"
            _class_image(class_index, i, rng).save(root / name / f"img_{i:03d}{suffix}", quality=90)
    return root


@pytest.fixture(scope="session")
def jpeg_shards(jpeg_folder, tmp_path_factory) -> Path:
    from ssl_toolkit.data import list_image_folder, write_shards

    samples, classes = list_image_folder(jpeg_folder)
    out = tmp_path_factory.mktemp("jpeg_shards")

    def records():
        for path, label in samples:
            path = Path(path)
            yield {"__key__": f"{path.parent.name}_{path.stem}", path.suffix[1:].lower(): path.read_bytes(), "cls": label}

    write_shards(records(), out, prefix="train", max_count=10, metadata={"classes": classes})
    return out


@pytest.fixture(scope="session")
def atari_shards(tmp_path_factory) -> Path:
    from ssl_toolkit.data import collect_frames

    out = tmp_path_factory.mktemp("atari_pong")
    collect_frames("pong", ATARI_FRAMES, out, seed=0, grayscale=True, frames_per_shard=128, progress=False)
    return out


@pytest.fixture(scope="session")
def vicreg_checkpoint(atari_shards, tmp_path_factory):
    """A real VICReg run: nature_cnn on 84×84 grayscale Pong frames, 2 optimiser steps, checkpointed."""
    import pytorch_lightning as pl

    from ssl_toolkit.data.datamodule import SSLDataModule
    from ssl_toolkit.methods import VICReg

    pl.seed_everything(0)
    data = SSLDataModule(train_path=str(atari_shards), batch_size=8, num_workers=0, preset="atari",
                         crop_size=[84, 84], image_mode="L", shuffle_buffer=0)
    model = VICReg(backbone="nature_cnn", backbone_kwargs={"img_size": [84, 84]}, in_chans=data.in_chans,
                   projector="64-64", monitor_every_n_steps=0)
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, data)
    ckpt = tmp_path_factory.mktemp("pretrained") / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    return model, ckpt


@pytest.fixture
def crash_at():
    """A Lightning callback class that raises at the start of training step ``step`` (a simulated crash)."""
    import pytorch_lightning as pl

    class CrashAt(pl.Callback):
        def __init__(self, step: int):
            self.step = step

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == self.step:
                raise RuntimeError("simulated crash")

    return CrashAt
