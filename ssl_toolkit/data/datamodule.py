"""The Lightning data module every pretraining run uses.

Two stages, split where the work is cheapest: DataLoader workers decode each image once and cut its
views (random resized crop, flip, shift — :class:`~ssl_toolkit.augment.ViewSampler`, uint8); after the
batch reaches the device, :meth:`SSLDataModule.on_after_batch_transfer` runs the photometric
augmentations and normalisation batched (:class:`~ssl_toolkit.augment.GPUAugment`). The model then
receives ``{"views": [float (B, C, H, W), …], "label": long (B,), "key": [str, …]}`` (label -1 = none;
batches from shards also hold ``"url"``: each sample's shard).

The training data is found by looking at ``train_path``: an ImageFolder tree, a flat folder of images,
a folder of ``.tar`` shards, one ``.tar``, or a brace/glob pattern of shards.

Shards are read by :class:`~ssl_toolkit.data.shards.ShardDataset` (how an epoch is dealt to ranks and
workers, exactly once, is described there). The data module feeds it what only Lightning knows and
keeps what only the main process sees:

* the epoch: right before each epoch's workers start (:class:`~ssl_toolkit.data.shards.ShardLoader`),
  it is read from the fit loop (the number Lightning also gives samplers' ``set_epoch``), so the order
  is reshuffled every epoch and a resumed run replays the same epoch's order;
* the resume point: :meth:`SSLDataModule.on_before_batch_transfer` records the slots of every training
  batch (:class:`~ssl_toolkit.data.shards.StreamProgress`); :meth:`SSLDataModule.state_dict` merges
  them over the ranks into the checkpoint, and after :meth:`SSLDataModule.load_state_dict` the resumed
  epoch reads only the samples not yet trained on — each exactly once, in the batches the epoch has
  left (a checkpoint written after batch k holds batches 0…k);
* the skip count: every batch carries the number of samples its worker skipped as bad data since its
  previous batch; their sum is :attr:`SSLDataModule.skipped`, which the methods log as ``data/skipped``.
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
from ssl_toolkit.data.shards import (
    ShardDataset,
    ShardLoader,
    StreamProgress,
    _world,
    expand_shards,
    looks_like_shards,
    read_index,
    shard_counts,
)
from ssl_toolkit.data.temporal import TemporalViews, parse_offset
from ssl_toolkit.distributed import is_distributed

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
        drop_last: only full, equal training batches on every rank (BatchNorm and the global-batch losses
            need them); with shards the end of each epoch's order, under one global batch, is not read.
            False: every sample exactly once per epoch, the last batch of each rank partial.
        pin_memory: pin host memory for faster copies to a GPU (ignored without one).
        resample: draw training shards with replacement, ``epoch_length`` samples per epoch (for very
            uneven shards or data too large for whole epochs).
        epoch_length: training samples per epoch over all ranks: drawn with ``resample``, else the first
            ones of each epoch's shuffled order (a quick subset); null: all.
        temporal_offset: Atari frames: the two views are frames t and t+k of one episode, ``k`` fixed
            or uniform in ``[lo, hi]``; null makes both views from one image.
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
        resample: bool = False,
        epoch_length: int | None = None,
        temporal_offset: int | list[int] | None = None,
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
        self.temporal_offset = parse_offset(temporal_offset)
        if self.temporal_offset is not None and self._train["kind"] != "shards":
            raise ValueError("temporal_offset needs shards with episode/step metadata (`ssl-toolkit atari collect`)")
        if (resample or epoch_length) and self._train["kind"] != "shards":
            raise ValueError("resample and epoch_length apply to shards; an image folder is read whole every epoch")
        self._epoch = 0  # the next epoch when iterated without a Trainer
        self._progress: StreamProgress | None = None
        self._resume: dict | None = None
        self._skipped = 0

    @property
    def in_chans(self) -> int:
        """Channels of every view: 1 for ``L``, 3 for ``RGB``."""
        return IMAGE_MODES[self.image_mode]

    def _describe(self, path: str) -> dict[str, Any]:
        if looks_like_shards(path):
            urls = expand_shards(path)
            local = os.path.isfile(urls[0])
            index = (read_index(os.path.dirname(urls[0]) or ".") if local or "://" in urls[0] else None) or {}
            hp = self.hparams
            try:
                counts = shard_counts(urls)
            except ValueError:
                if not (hp.resample and hp.epoch_length):
                    raise
                counts = None  # remote and drawn with replacement: the epoch length is given
            num_samples = sum(counts) if counts is not None else hp.epoch_length
            if hp.epoch_length:
                num_samples = hp.epoch_length if hp.resample else min(hp.epoch_length, num_samples)
            return {"kind": "shards", "urls": urls, "counts": counts, "num_samples": num_samples,
                    "classes": list(index.get("classes", [])), "num_classes": index.get("num_classes")}
        folder = ImageFolderDataset(path)
        return {"kind": "folder", "path": path, "num_samples": len(folder),
                "classes": folder.classes, "num_classes": None}

    # ------------------------------------------------------------------------------------- loaders
    def _world(self) -> tuple[int, int]:
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        return _world()

    def _loader(self, source: dict[str, Any], transform, train: bool) -> DataLoader:
        hp = self.hparams
        workers = self.num_workers
        pin_memory = hp.pin_memory and torch.cuda.is_available()
        drop_last = hp.drop_last and train
        if source["kind"] == "folder":
            dataset: Dataset = ImageFolderDataset(source["path"], transform=transform)
            return DataLoader(dataset, shuffle=train, batch_size=self.batch_size, num_workers=workers,
                              collate_fn=collate_views, pin_memory=pin_memory, persistent_workers=workers > 0,
                              drop_last=drop_last)
        shards = ShardDataset(
            source["urls"], transform=transform, shuffle_buffer=hp.shuffle_buffer if train else 0, seed=hp.seed,
            num_workers=workers, batch_size=self.batch_size, drop_last=drop_last,
            resample=hp.resample and train, epoch_length=hp.epoch_length if train else None,
            temporal_offset=self.temporal_offset if train else None, counts=source["counts"],
        )
        shards.set_world(*self._world())
        len(shards)  # too few samples for the ranks: say so now
        return ShardLoader(shards, num_workers=workers, pin_memory=pin_memory,
                           on_iter=self._start_train_epoch if train else None)

    def train_dataloader(self) -> DataLoader:
        if self.temporal_offset is not None:
            transform = TemporalViews(self.preset, mode=self.image_mode)
        else:
            transform = ViewSampler(self.preset, mode=self.image_mode)
        return self._loader(self._train, transform, train=True)

    def val_dataloader(self) -> DataLoader | list:
        if self._val is None:
            return []
        return self._loader(self._val, EvalView(self.eval_preset, self.image_mode), train=False)

    # ------------------------------------------------------------------- epochs, resume, skip count
    def _start_train_epoch(self, dataset: ShardDataset) -> None:
        """Runs right before each training epoch's workers start: epoch, rank and resume point."""
        if self.trainer is not None:
            # the number Lightning gives samplers' set_epoch: right also when a run resumes mid-epoch
            # or from an end-of-epoch checkpoint
            epoch = self.trainer.fit_loop.epoch_progress.current.processed
        else:
            epoch = self._epoch
        self._epoch = epoch + 1
        rank, world_size = self._world()
        dataset.set_world(rank, world_size)
        dataset.set_epoch(epoch)
        resume = self._resume if dataset.resume_from(self._resume) else None
        self._resume = None
        self._progress = StreamProgress(epoch, dataset.plan_key(), rank, resume)

    @property
    def skipped(self) -> int:
        """Samples this rank skipped as bad data in the batches it has passed on (training and evaluation)."""
        return self._skipped

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Take the reader's bookkeeping off a shard batch, on the host (no device sync): count skips and,
        while training, record the slots delivered for the resume point."""
        if isinstance(batch, dict) and "slot" in batch:
            self._skipped += int(batch.pop("skipped"))
            slots = batch.pop("slot")
            batch.pop("pad")
            training = self.trainer is None or self.trainer.training
            if training and self._progress is not None:
                self._progress.update(slots)
        return batch

    def state_dict(self) -> dict[str, Any]:
        """The training stream's progress in the current epoch, merged over all ranks, and the skip counts.

        Lightning calls this on every rank when it writes a checkpoint (the merge is a collective)."""
        state: dict[str, Any] = {"skipped": [self._skipped]}
        local = self._progress.state_dict() if self._progress is not None else None
        if is_distributed():
            gathered: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, (self._skipped, local))
            state["skipped"] = [s for s, _ in gathered]
            states = [p for _, p in gathered if p is not None]
        else:
            states = [local] if local is not None else []
        if states:
            state["stream"] = StreamProgress.merge(states)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume: the next training epoch started, if it is the checkpoint's, skips what was trained on."""
        skipped = list(state_dict.get("skipped", [0]))
        rank, world_size = self._world()
        self._skipped = int(skipped[rank]) if len(skipped) == world_size else (sum(skipped) if rank == 0 else 0)
        self._resume = state_dict.get("stream")
        if self._resume is not None and self.trainer is None:
            self._epoch = int(self._resume["epoch"])

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
