"""The Lightning data module every pretraining run uses.

Two stages, split where the work is cheapest: DataLoader workers decode each image once and cut its
views (random resized crop, flip, shift — :class:`~ssl_toolkit.augment.ViewSampler`, uint8); after the
batch reaches the device, :meth:`SSLDataModule.on_after_batch_transfer` runs the photometric
augmentations and normalisation batched (:class:`~ssl_toolkit.augment.GPUAugment`). The model then
receives ``{"views": [float (B, C, H, W), …], "label": long (B,), "key": [str, …]}`` (label -1 = none).

The training data is found by looking at ``train_path``: an ImageFolder tree, a flat folder of images,
a folder of ``.tar`` shards, one ``.tar``, or a brace/glob pattern of shards.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from ssl_toolkit.augment import GPUAugment, ViewSampler, center_view, get_preset
from ssl_toolkit.augment.presets import AugmentPreset
from ssl_toolkit.data.folder import ImageFolderDataset
from ssl_toolkit.data.shards import ShardDataset, count_samples, expand_shards, looks_like_shards, read_index

IMAGE_MODES = {"RGB": 3, "L": 1}
# photometric ViewSpec fields switched off for the evaluation view: it is only resized and normalised
_NO_PHOTOMETRIC = {"jitter_p": 0.0, "gray_p": 0.0, "blur_p": 0.0, "solarize_p": 0.0, "intensity": 0.0}


def collate_views(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack per view: ``[{"views": [v0, v1], "label", "key"}, …]`` →
    ``{"views": [stack(v0s), stack(v1s)], "label": LongTensor (B,), "key": [str, …]}``."""
    num_views = len(items[0]["views"])
    return {
        "views": [torch.stack([item["views"][v] for item in items]) for v in range(num_views)],
        "label": torch.tensor([item["label"] for item in items], dtype=torch.long),
        "key": [item["key"] for item in items],
    }


class EvalView:
    """The single evaluation view, as a picklable transform: the centre crop of :func:`center_view`,
    or the whole image resized when the training views never zoom (``crop_scale == (1, 1)``, e.g. Atari
    frames, where a centre crop would cut the playfield)."""

    def __init__(self, preset: AugmentPreset, mode: str):
        view = preset.views[0]
        self.size = view.size_hw
        self.mode = mode
        self.whole = tuple(view.crop_scale) == (1.0, 1.0)
        whole_image = dataclasses.replace(view, flip_p=0.0, shift_pad=0, crop_scale=(1.0, 1.0))
        self._sampler = ViewSampler(dataclasses.replace(preset, views=(whole_image,)), mode=mode)

    def __call__(self, image: bytes) -> list[torch.Tensor]:
        if self.whole:
            return self._sampler(image)
        return [center_view(image, self.size, mode=self.mode)]


class SSLDataModule(pl.LightningDataModule):
    """Images or Atari frames → batches of augmented views.

    Args:
        train_path: ImageFolder tree, flat image folder, shard folder, ``.tar`` file or brace pattern
            (``train-{000000..000127}.tar``) — detected from what is there.
        val_path: optional evaluation data (same kinds); one centre view per image, no colour augmentation.
        batch_size: samples per device and step.
        num_workers: DataLoader worker processes running the CPU stage (decode, crop, flip).
        preset: augmentation preset: simclr | simsiam | vicreg | mae | atari.
        crop_size: output size of every view, int or [H, W]; the preset's when null.
        view_overrides: any ViewSpec field applied to every view, e.g. ``{blur_p: 0.0}``.
        mean: per-channel normalisation mean (one value is broadcast); the preset's when null.
        std: per-channel normalisation std; the preset's when null.
        image_mode: ``RGB`` (3 channels) or ``L`` (grayscale, 1 channel; Atari frames).
        shuffle_buffer: samples in the shuffle buffer when reading shards (0 = read in order).
        seed: seeds the shard order and shuffle buffer (folders shuffle with torch's seeded RNG).
        drop_last: drop the last incomplete training batch (keeps batch statistics comparable).
        pin_memory: pin host memory for faster copies to a GPU (ignored without one).
    """

    def __init__(
        self,
        train_path: str,
        val_path: str | None = None,
        batch_size: int = 256,
        num_workers: int = 8,
        preset: str = "vicreg",
        crop_size: int | list[int] | None = None,
        view_overrides: dict | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        image_mode: str = "RGB",
        shuffle_buffer: int = 1000,
        seed: int = 0,
        drop_last: bool = True,
        pin_memory: bool = True,
    ):
        super().__init__()
        self.save_hyperparameters()
        if image_mode not in IMAGE_MODES:
            raise ValueError(f"image_mode must be one of {sorted(IMAGE_MODES)}, got {image_mode!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.image_mode = image_mode
        overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in (view_overrides or {}).items()}
        size = tuple(crop_size) if isinstance(crop_size, (list, tuple)) else crop_size
        norm = {"mean": tuple(mean) if mean is not None else None, "std": tuple(std) if std is not None else None}
        self.preset = get_preset(preset, crop_size=size, **norm, **overrides)
        self.eval_preset = get_preset(preset, crop_size=size, num_views=1, **norm, **{**overrides, **_NO_PHOTOMETRIC})
        # look at the data now, so a wrong path fails before any model is built
        self._train = self._describe(train_path)
        self._val = self._describe(val_path) if val_path is not None else None
        self.classes: list[str] = self._train["classes"]
        self.num_classes: int | None = len(self.classes) if self.classes else self._train["num_classes"]
        self.num_samples: int = self._train["num_samples"]
        self._gpu: dict[bool, torch.nn.Module] = {}

    @property
    def in_chans(self) -> int:
        """Channels of every view: 1 for ``L``, 3 for ``RGB``."""
        return IMAGE_MODES[self.image_mode]

    @staticmethod
    def _describe(path: str) -> dict[str, Any]:
        if looks_like_shards(path):
            urls = expand_shards(path)
            index = (read_index(os.path.dirname(urls[0]) or ".") if os.path.isfile(urls[0]) else None) or {}
            return {"kind": "shards", "urls": urls, "num_samples": count_samples(urls),
                    "classes": list(index.get("classes", [])), "num_classes": index.get("num_classes")}
        folder = ImageFolderDataset(path)
        return {"kind": "folder", "path": path, "num_samples": len(folder),
                "classes": folder.classes, "num_classes": None}

    # ------------------------------------------------------------------------------------- loaders
    def _loader(self, source: dict[str, Any], transform, train: bool) -> DataLoader:
        workers = self.num_workers
        common = dict(
            batch_size=self.batch_size, num_workers=workers, collate_fn=collate_views,
            pin_memory=self.hparams.pin_memory and torch.cuda.is_available(),
            persistent_workers=workers > 0, drop_last=self.hparams.drop_last and train,
        )
        if source["kind"] == "folder":
            dataset: Dataset = ImageFolderDataset(source["path"], transform=transform)
            return DataLoader(dataset, shuffle=train, **common)
        dataset = ShardDataset(
            source["urls"], transform=transform, shuffle_buffer=self.hparams.shuffle_buffer if train else 0,
            seed=self.hparams.seed, num_samples=source["num_samples"], num_workers=workers,
            batch_size=self.batch_size, drop_last=common["drop_last"],
        )
        return DataLoader(dataset, **common)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self._train, ViewSampler(self.preset, mode=self.image_mode), train=True)

    def val_dataloader(self) -> DataLoader | list:
        if self._val is None:
            return []
        return self._loader(self._val, EvalView(self.eval_preset, self.image_mode), train=False)

    # -------------------------------------------------------------------------------- device stage
    def gpu_augment(self, training: bool, device: torch.device) -> torch.nn.Module:
        """The batched device stage for training (the preset) or evaluation (normalise only), on ``device``."""
        if training not in self._gpu:
            self._gpu[training] = GPUAugment(self.preset if training else self.eval_preset)
        module = self._gpu[training]
        return module.to(device)

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        training = self.trainer is None or self.trainer.training
        views = batch["views"]
        augment = self.gpu_augment(training, views[0].device)
        with torch.no_grad():
            batch["views"] = augment(views)
        return batch
