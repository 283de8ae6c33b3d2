"""The published linear-evaluation protocol: a linear layer trained on-line on a frozen backbone.

As in SimCLR (Chen et al. 2020, appendix B.6), MoCo, VICReg and solo-learn: every epoch re-reads the
training images through random resized crops (scale 0.08–1) and horizontal flips, the frozen backbone
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
from typing import Any

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


class RandomCropFlip:
    """Picklable DataLoader transform: encoded bytes → ``[uint8 (C, H, W)]``, one random resized crop
    (torchvision's sampling, scale 0.08–1, ratio 3/4–4/3) with a horizontal flip half the time."""

    def __init__(self, size: tuple[int, int], mode: str, crop_scale: tuple[float, float] = (0.08, 1.0),
                 flip_p: float = 0.5):
        preset = AugmentPreset("linear_eval", (ViewSpec(crop_size=size, crop_scale=crop_scale, flip_p=flip_p),))
        self.sampler = ViewSampler(preset, mode=mode)

    def __call__(self, data: bytes) -> list[torch.Tensor]:
        return self.sampler(data)


def lr_at(step: int, total: int, base_lr: float, schedule: str) -> float:
    """Learning rate of optimiser step ``step`` of ``total`` (per-step cosine, or ×0.1 steps)."""
    if schedule == "cosine":
        return 0.5 * base_lr * (1 + math.cos(math.pi * step / total))
    return base_lr * 0.1 ** sum(step >= m * total for m in STEP_MILESTONES)


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
    torch.manual_seed(seed)

    head: nn.Module | None = None
    optimizer = None
    bf16: bool | None = None
    base_lr = lr * batch_size / 256
    steps_per_epoch = math.ceil(train.num_samples / batch_size)
    total_steps = epochs * steps_per_epoch
    step = 0
    if not 0.0 < crop_scale[0] <= crop_scale[1] <= 1.0:
        raise ValueError(f"--crop-scale must be 0 < LO <= HI <= 1, got {crop_scale}")
    crop = RandomCropFlip(size, mode, crop_scale=tuple(crop_scale), flip_p=flip_p)
    epoch_loss = float("nan")
    for epoch in range(epochs):
        loss_sum, seen = 0.0, 0
        for images, labels in batches(train, crop, batch_size, num_workers, shuffle=True, seed=seed, epoch=epoch):
            if batchnorm and len(labels) < 2:  # a last batch of one has no batch statistics
                continue
            x = normalize(images.to(device))
            if bf16 is None:
                bf16 = pick_precision(encoder, x, precision)
                if bf16:
                    channels_last_encoder(encoder)
            with torch.no_grad():
                features = encode(encoder, x, bf16)
            if head is None:  # sized from the first batch: the encoder's width, the data's classes
                num_classes = max(len(train.classes), len(val.classes), int(labels.max()) + 1)
                linear = nn.Linear(features.shape[1], num_classes)
                nn.init.normal_(linear.weight, std=0.01)
                nn.init.zeros_(linear.bias)
                norm = nn.BatchNorm1d(features.shape[1], affine=False) if batchnorm else nn.Identity()
                head = nn.Sequential(norm, linear).to(device)
                optimizer = torch.optim.SGD(head.parameters(), lr=base_lr, momentum=momentum, weight_decay=weight_decay)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(min(step, total_steps - 1), total_steps, base_lr, schedule)
            loss = F.cross_entropy(head(features), labels.to(device))
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
        "lr": base_lr,
        "momentum": momentum,
        "weight_decay": weight_decay,
        "schedule": schedule,
        "batchnorm": batchnorm,
        "crop_scale": list(crop_scale),
        "flip_p": flip_p,
        "crop_size": list(size),
        "bf16": bool(bf16),
        "num_classes": num_classes,
        "num_train": train.num_samples,
        "num_val": len(torch.cat(targets)),
        "seconds": time.perf_counter() - start,
    }
