"""The published linear-evaluation protocol: a linear layer trained on-line on a frozen backbone.

As in SimCLR (Chen et al. 2020, appendix B.6), MoCo, VICReg and solo-learn: every epoch re-reads the
training images through random resized crops (scale 0.08–1) and horizontal flips (``crop="resized"``;
``crop="padded"`` is the small-image convention instead — the evaluation view zero-padded by 1/8 of
its size on each side and randomly cropped back, as for CIFAR since He et al. 2016 — for labels a
resized crop would destroy, such as object counts in Atari frames; ``crop="center"`` with
``flip_p=0`` trains on exactly the cached probe's view, which separates what the optimiser gives
from what the augmentation costs), the frozen backbone
(eval mode: BatchNorm statistics fixed) makes features, and only the linear layer learns, with SGD
(momentum 0.9), no weight decay by default, learning rate ``lr × batch / 256`` and a cosine (or
step: ×0.1 at 60 % and 80 %) schedule over 100 epochs. The validation split is scored once at the
end on center crops, exactly the view :mod:`ssl_toolkit.eval.features` caches.

It is here for comparability with published tables; the cached probe
(:mod:`ssl_toolkit.eval.linear_probe`) answers the same question about two orders of magnitude faster.
"""
from __future__ import annotations

import math
import os
import time
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ssl_toolkit.augment.presets import AugmentPreset, ViewSpec
from ssl_toolkit.augment.views import ViewSampler
from ssl_toolkit.eval.features import (
    CenterView, Normalize, encode, batches, channels_last_encoder, encoder_in_chans, input_size,
    normalisation, open_source, pick_precision,
)
from ssl_toolkit.eval.linear_probe import topk_accuracy

SCHEDULES = ("cosine", "step")
STEP_MILESTONES = (0.6, 0.8)  # fractions of training at which a step schedule divides the lr by 10


CROPS = ("resized", "padded", "center")
PAD_FRACTION = 1 / 8  # "padded": 4 px on each side of a 32-px image


class RandomCropFlip:
    """Picklable DataLoader transform: encoded bytes → ``[uint8 (C, H, W)]``, one random crop with a
    horizontal flip with probability ``flip_p``.

    ``kind="resized"``: torchvision's random resized crop sampling (area ``crop_scale``, ratio 3/4–4/3).
    ``kind="padded"``: the evaluation center view, zero-padded by ``PAD_FRACTION`` of its size and
    randomly cropped back to it (a shift of up to 1/8 of the image).
    ``kind="center"``: the evaluation center view itself (only the flip is random).
    """

    def __init__(self, size: tuple[int, int], mode: str, crop_scale: tuple[float, float] = (0.08, 1.0),
                 flip_p: float = 0.5, kind: str = "resized"):
        if kind not in CROPS:
            raise ValueError(f"--crop must be one of {CROPS}, got {kind!r}")
        self.size, self.mode, self.flip_p, self.kind = size, mode, flip_p, kind
        preset = AugmentPreset("linear_eval", (ViewSpec(crop_size=size, crop_scale=crop_scale, flip_p=flip_p),))
        self.sampler = ViewSampler(preset, mode=mode) if kind == "resized" else None

    def __call__(self, data: bytes) -> list[torch.Tensor]:
        if self.sampler is not None:
            return self.sampler(data)
        view = CenterView(self.size, self.mode)(data)[0]  # (C, H, W)
        if self.kind == "padded":
            h, w = view.shape[1:]
            pad_h, pad_w = round(h * PAD_FRACTION), round(w * PAD_FRACTION)
            padded = F.pad(view, (pad_w, pad_w, pad_h, pad_h))
            top = int(torch.randint(0, 2 * pad_h + 1, ()))
            left = int(torch.randint(0, 2 * pad_w + 1, ()))
            view = padded[:, top : top + h, left : left + w]
        if float(torch.rand(())) < self.flip_p:
            view = view.flip(-1)
        return [view.contiguous()]


def lr_at(step: int, total: int, base_lr: float, schedule: str) -> float:
    """Learning rate of optimiser step ``step`` of ``total`` (per-step cosine, or ×0.1 steps)."""
    if schedule == "cosine":
        return 0.5 * base_lr * (1 + math.cos(math.pi * step / total))
    return base_lr * 0.1 ** sum(step >= m * total for m in STEP_MILESTONES)


def train_linear_head(
    epoch_batches: Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]],
    epochs: int,
    steps_per_epoch: int,
    num_classes: int,
    base_lr: float,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    schedule: str = "cosine",
    batchnorm: bool = False,
    seed: int = 0,
    progress: bool = False,
    start: float | None = None,
) -> tuple[nn.Module | None, float, int]:
    """SGD on a linear layer (after an optional non-affine BatchNorm) over ``epochs`` passes.

    Args:
        epoch_batches: ``epoch -> iterable of (features float (B, D), labels long (B,))``; the
            published protocol feeds freshly augmented images through the frozen backbone here,
            :func:`sgd_on_features` feeds fixed features.
        steps_per_epoch: for the schedule's length.
        num_classes: at least this many outputs (more if a label is larger).

    Returns:
        ``(head or None when no batch came, last epoch's mean loss, optimiser steps)``.
    """
    torch.manual_seed(seed)
    head: nn.Module | None = None
    optimizer = None
    total_steps = max(1, epochs * steps_per_epoch)
    step = 0
    epoch_loss = float("nan")
    start = time.perf_counter() if start is None else start
    for epoch in range(epochs):
        loss_sum, seen = 0.0, 0
        for features, labels in epoch_batches(epoch):
            if batchnorm and len(labels) < 2:  # a last batch of one has no batch statistics
                continue
            if head is None:  # sized from the first batch: the encoder's width, the data's classes
                linear = nn.Linear(features.shape[1], max(num_classes, int(labels.max()) + 1))
                nn.init.normal_(linear.weight, std=0.01)
                nn.init.zeros_(linear.bias)
                norm = nn.BatchNorm1d(features.shape[1], affine=False) if batchnorm else nn.Identity()
                head = nn.Sequential(norm, linear).to(features.device)
                optimizer = torch.optim.SGD(head.parameters(), lr=base_lr, momentum=momentum, weight_decay=weight_decay)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(min(step, total_steps - 1), total_steps, base_lr, schedule)
            with torch.enable_grad():
                loss = F.cross_entropy(head(features.float()), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            optimizer.step()
            step += 1
            loss_sum += float(loss.detach()) * len(labels)
            seen += len(labels)
        epoch_loss = loss_sum / max(seen, 1)
        if progress:
            print(f"[probe standard] epoch {epoch + 1}/{epochs} loss {epoch_loss:.4f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    return head, epoch_loss, step


def sgd_on_features(
    train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
    epochs: int = 100, batch_size: int = 256, lr: float = 0.1, num_classes: int | None = None, seed: int = 0,
    **head_kwargs: Any,
) -> dict[str, Any]:
    """The published protocol's SGD head trained on fixed features (no augmentation): what the
    optimiser alone gives, beside which the protocol's augmentation effect can be read off.

    Args:
        train_x, val_x: float ``(N, D)``; train_y, val_y: long ``(N,)``.
        head_kwargs: ``momentum``, ``weight_decay``, ``schedule``, ``batchnorm`` as :func:`train_linear_head`.
    """
    start = time.perf_counter()
    num_classes = num_classes or int(max(train_y.max(), val_y.max())) + 1

    def epoch_batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        for i in range(0, len(order), batch_size):
            yield train_x[order[i : i + batch_size]], train_y[order[i : i + batch_size]]

    head, loss, steps = train_linear_head(epoch_batches, epochs, math.ceil(len(train_x) / batch_size), num_classes,
                                          lr * batch_size / 256, seed=seed, **head_kwargs)
    head.eval()
    with torch.no_grad():
        scores = head(val_x.float())
    return {**topk_accuracy(scores, val_y, scores.shape[1]), "train_loss": loss, "epochs": epochs, "steps": steps,
            "batch_size": batch_size, "lr": lr * batch_size / 256, "seconds": time.perf_counter() - start}


def standard_linear_eval(
    encoder: nn.Module,
    train_path: str | os.PathLike,
    val_path: str | os.PathLike,
    epochs: int = 100,
    batch_size: int = 256,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    schedule: str = "cosine",
    batchnorm: bool = False,
    crop_size: int | None = None,
    crop_scale: tuple[float, float] = (0.08, 1.0),
    flip_p: float = 0.5,
    crop: str = "resized",
    num_workers: int = 1,
    precision: str = "auto",
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Train a linear layer on the frozen ``encoder`` with the published protocol; score it on val.

    Args:
        encoder: frozen, ``(B, C, H, W) -> (B, D)``.
        train_path, val_path: ImageFolder trees or shards.
        epochs: passes over train.
        batch_size: images per SGD step; the learning rate is ``lr × batch_size / 256``.
        schedule: ``"cosine"`` or ``"step"``.
        batchnorm: a BatchNorm without affine parameters before the linear layer, as in MAE's protocol
            (He et al. 2022, A.2); batch statistics while training, running statistics on val.
        crop_size: training crop and evaluation center crop; default the encoder's input size, else 224.
        crop_scale, flip_p: the training augmentation; the published (0.08, 1) and 0.5 by default.
            Labels that crops or mirroring change (positions, counts in Atari frames) want milder ones.
        crop: ``"resized"`` (random resized crops, ``crop_scale``), ``"padded"`` (pad by 1/8 and
            random-crop the evaluation view) or ``"center"`` (the evaluation view); ``crop_scale`` is
            used by ``"resized"`` only.

    Returns:
        ``{"top1", "top5", "train_loss" (last epoch's mean), "epochs", "steps", "seconds", …}``.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"--schedule must be one of {SCHEDULES}, got {schedule!r}")
    if epochs < 1:
        raise ValueError(f"--epochs must be ≥ 1, got {epochs}")
    start = time.perf_counter()
    train, val = open_source(train_path), open_source(val_path)
    size = input_size(encoder, crop_size)
    mode = "L" if encoder_in_chans(encoder) == 1 else "RGB"
    device = next((p.device for p in encoder.parameters()), torch.device("cpu"))
    normalize = Normalize(*normalisation(encoder)).to(device)
    encoder.eval()
    if not 0.0 < crop_scale[0] <= crop_scale[1] <= 1.0:
        raise ValueError(f"--crop-scale must be 0 < LO <= HI <= 1, got {crop_scale}")
    augment = RandomCropFlip(size, mode, crop_scale=tuple(crop_scale), flip_p=flip_p, kind=crop)
    bf16: bool | None = None

    def epoch_features(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        nonlocal bf16
        for images, labels in batches(train, augment, batch_size, num_workers, shuffle=True, seed=seed, epoch=epoch):
            x = normalize(images.to(device))
            if bf16 is None:
                bf16 = pick_precision(encoder, x, precision)
                if bf16:
                    channels_last_encoder(encoder)
            with torch.no_grad():
                features = encode(encoder, x, bf16)
            yield features, labels.to(device)

    num_classes = max(len(train.classes), len(val.classes))
    head, epoch_loss, step = train_linear_head(
        epoch_features, epochs, math.ceil(train.num_samples / batch_size), num_classes, lr * batch_size / 256,
        momentum=momentum, weight_decay=weight_decay, schedule=schedule, batchnorm=batchnorm, seed=seed,
        progress=progress, start=start)
    if head is None:
        raise ValueError(f"no labelled image under {str(train_path)!r}; the probe needs class labels")

    head.eval()
    scores, targets = [], []
    with torch.inference_mode():
        for images, labels in batches(val, CenterView(size, mode), batch_size, num_workers):
            scores.append(head(encode(encoder, normalize(images.to(device)), bf16)).float().cpu())
            targets.append(labels)
    if not scores:
        raise ValueError(f"no labelled image under {str(val_path)!r}; the probe needs class labels")
    num_classes = head[1].out_features
    return {
        **topk_accuracy(torch.cat(scores), torch.cat(targets), num_classes),
        "train_loss": epoch_loss,
        "epochs": epochs,
        "steps": step,
        "batch_size": batch_size,
        "lr": lr * batch_size / 256,
        "momentum": momentum,
        "weight_decay": weight_decay,
        "schedule": schedule,
        "batchnorm": batchnorm,
        "crop": crop,
        "crop_scale": list(crop_scale) if crop == "resized" else None,
        "flip_p": flip_p,
        "crop_size": list(size),
        "bf16": bool(bf16),
        "num_classes": num_classes,
        "num_train": train.num_samples,
        "num_val": len(torch.cat(targets)),
        "seconds": time.perf_counter() - start,
    }
