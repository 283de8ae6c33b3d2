"""Device stage of the augmentation pipeline: batched photometric augmentation with kornia.

Takes the uint8 views cut by :class:`~ssl_toolkit.augment.views.ViewSampler` once they are on the
model's device, and per view applies, each per sample with its own probability: colour jitter,
random grayscale, Gaussian blur and solarization — the SimCLR / BYOL recipe (Chen et al. 2020,
appendix A; Grill et al. 2020, table 6) that VICReg and SimSiam reuse — then the intensity jitter of
SPR (Schwarzer et al. 2021) for Atari frames, then normalisation. Every view has its own
:class:`ViewSpec`, so asymmetric pairs (VICReg's blur 1.0/0.1, solarize 0.0/0.2) and multi-crop views
of different sizes need nothing special.

Random parameters come from torch's global generator (kornia draws them on the CPU), so a run seeded
with ``torch.manual_seed`` augments identically on CPU and CUDA. As in kornia, colour jitter applies
its four adjustments in one random order per batch (torchvision draws one per image).
"""
from __future__ import annotations

import torch
from kornia import augmentation as K
from torch import nn

from ssl_toolkit.augment.presets import AugmentPreset, ViewSpec


def blur_kernel_size(size: int) -> int:
    """Odd Gaussian-blur kernel of about 10% of the image side (23 for 224, as in BYOL), at least 3."""
    return max(3, int(0.1 * size) | 1)


class ViewAugment(nn.Module):
    """The photometric ops of one :class:`ViewSpec` on a float batch in ``[0, 1]``; ops whose
    probability (or strength) is zero are not built at all.

    Attributes (``None`` when off): ``jitter`` (RGB: brightness, contrast, saturation, hue),
    ``jitter_mono`` (other channel counts: brightness and contrast only, one factor per sample over
    all its channels), ``grayscale`` (RGB only), ``blur``, ``solarize``; ``intensity`` (float).
    """

    def __init__(self, spec: ViewSpec):
        super().__init__()
        self.spec = spec
        strengths = (spec.brightness, spec.contrast, spec.saturation, spec.hue)
        jitter_on = spec.jitter_p > 0 and any(s > 0 for s in strengths)
        mono_on = spec.jitter_p > 0 and (spec.brightness > 0 or spec.contrast > 0)
        self.jitter = K.ColorJitter(*strengths, p=spec.jitter_p) if jitter_on else None
        self.jitter_mono = K.ColorJitter(spec.brightness, spec.contrast, 0.0, 0.0, p=spec.jitter_p) if mono_on else None
        self.grayscale = K.RandomGrayscale(p=spec.gray_p) if spec.gray_p > 0 else None
        height, width = spec.size_hw
        self.blur = (
            K.RandomGaussianBlur(
                (blur_kernel_size(height), blur_kernel_size(width)), tuple(spec.blur_sigma), p=spec.blur_p
            )
            if spec.blur_p > 0
            else None
        )
        # thresholds=0 → exactly 0.5 (kornia draws from 0.5 ± thresholds); additions=0 → none
        self.solarize = (
            K.RandomSolarize(thresholds=0.0, additions=0.0, p=spec.solarize_p) if spec.solarize_p > 0 else None
        )
        self.intensity = float(spec.intensity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rgb = x.shape[1] == 3
        jitter = self.jitter if rgb else self.jitter_mono
        if jitter is not None:
            x = jitter(x)
        if rgb and self.grayscale is not None:
            x = self.grayscale(x)
        if self.blur is not None:
            x = self.blur(x)
        if self.solarize is not None:
            x = self.solarize(x)
        if self.intensity > 0:
            # SPR: one multiplicative factor per sample, noise clipped at ±2σ; drawn on the CPU so
            # CPU and CUDA runs agree under one seed
            noise = torch.randn(x.shape[0], 1, 1, 1).clamp_(-2.0, 2.0).to(x.device)
            x = x * (1.0 + self.intensity * noise)
        return x


class GPUAugment(nn.Module):
    """Photometric augmentation and normalisation of a list of uint8 view batches.

    Args:
        preset: one :class:`ViewSpec` per view (read for the photometric fields) plus ``mean``/``std``
            (one entry per channel, or one entry broadcast over all channels).

    ``forward(views)`` takes ``views[i]`` as uint8 ``(B, C, H, W)`` on any device (floating input is
    taken to be in ``[0, 1]`` already) and returns float32 ``(B, C, H, W)`` on the same device,
    augmented with ``preset.views[i]`` and normalised. It runs without autograd and outside autocast.
    """

    def __init__(self, preset: AugmentPreset):
        super().__init__()
        if len(preset.mean) != len(preset.std):
            raise ValueError(f"preset {preset.name!r}: mean has {len(preset.mean)} entries, std {len(preset.std)}")
        self.preset = preset
        self.per_view = nn.ModuleList(ViewAugment(spec) for spec in preset.views)
        self.register_buffer("mean", torch.tensor(preset.mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(preset.std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, views: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        if isinstance(views, torch.Tensor):
            raise TypeError("GPUAugment takes a list of view batches, one per view of the preset")
        if len(views) != len(self.per_view):
            raise ValueError(f"preset {self.preset.name!r} has {len(self.per_view)} views, got {len(views)} batches")
        out = []
        for x, augment in zip(views, self.per_view):
            with torch.autocast(device_type=x.device.type, enabled=False):
                out.append(self._normalize(augment(_to_unit_float(x))))
        return out

    @torch.no_grad()
    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Scale uint8 ``(B, C, H, W)`` to ``[0, 1]`` and normalise, nothing else (evaluation)."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self._normalize(_to_unit_float(x))

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        if self.mean.shape[1] not in (1, channels):
            raise ValueError(
                f"preset {self.preset.name!r} normalises {self.mean.shape[1]} channels but the views have "
                f"{channels}; pass mean/std with {channels} entries or one (get_preset(..., mean=, std=))"
            )
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        return (x - mean) / std

    def extra_repr(self) -> str:
        return f"preset={self.preset.name!r}, views={len(self.per_view)}"


def _to_unit_float(x: torch.Tensor) -> torch.Tensor:
    if x.ndim != 4:
        raise ValueError(f"expected a (B, C, H, W) batch, got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255.0)
    if x.is_floating_point():
        return x.to(torch.float32)
    raise TypeError(f"expected uint8 or floating images, got {x.dtype}")
