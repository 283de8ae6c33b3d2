"""Augmentation presets as data.

One :class:`AugmentPreset` describes every view a method sees: a tuple of :class:`ViewSpec`, one per
view, each with its own probabilities. The CPU stage (:mod:`ssl_toolkit.augment.views`) reads the
geometric fields (crop, flip, shift); the device stage (:mod:`ssl_toolkit.augment.gpu`) reads the
photometric ones (jitter, grayscale, blur, solarize, intensity, normalize). Defaults live here and
nowhere else.

Sources: SimCLR (Chen et al. 2020, appendix A), SimSiam (Chen & He 2021, sec. 4), VICReg (Bardes et
al. 2022, appendix C.1 — asymmetric blur 1.0/0.1 and solarize 0.0/0.2, as in BYOL), MAE (He et al.
2022: crop + flip only), and the Atari augmentations of DrQ / SPR (random shift by 4 px padding,
intensity jitter) for grayscale frames.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, replace

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ViewSpec:
    """How one view is made. Probabilities are per sample.

    Geometric (CPU stage): ``crop_size`` (int or (H, W)), ``crop_scale``/``crop_ratio`` of the random
    resized crop (scale ``(1, 1)`` and ratio of the image = no crop), ``flip_p``, ``shift_pad`` (DrQ-style
    random shift: replicate-pad by this many pixels, then crop back; 0 = off).
    Photometric (device stage): colour jitter with ``jitter_p`` and strengths ``brightness``,
    ``contrast``, ``saturation``, ``hue``; ``gray_p``; Gaussian blur with ``blur_p`` and
    ``blur_sigma`` range (kernel ≈ 10% of the crop, odd); ``solarize_p`` (threshold 0.5);
    ``intensity`` (SPR-style: x · (1 + intensity · clip(N(0,1), -2, 2)); 0 = off).
    """

    crop_size: int | tuple[int, int] = 224
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    shift_pad: int = 0
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    gray_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0
    intensity: float = 0.0

    @property
    def size_hw(self) -> tuple[int, int]:
        s = self.crop_size
        return (s, s) if isinstance(s, int) else (int(s[0]), int(s[1]))


@dataclass(frozen=True)
class AugmentPreset:
    """A named list of views plus the normalisation applied after them.

    ``mean``/``std`` have one entry per channel of the *augmented* image; a single entry is broadcast
    over all channels (grayscale or stacked frames).
    """

    name: str
    views: tuple[ViewSpec, ...]
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    @property
    def num_views(self) -> int:
        return len(self.views)


def _two(view_a: ViewSpec, view_b: ViewSpec | None = None) -> tuple[ViewSpec, ...]:
    return (view_a, view_b or view_a)


# SimCLR: blur p=0.5, jitter strength 1.0 (0.8, 0.8, 0.8, 0.2), no solarize.
_SIMCLR = ViewSpec(brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2, blur_p=0.5)
# SimSiam: as MoCo v2 (jitter 0.4, 0.4, 0.4, 0.1), crop scale from 0.2.
_SIMSIAM = ViewSpec(crop_scale=(0.2, 1.0), saturation=0.4, blur_p=0.5)
# VICReg: BYOL's asymmetric pair.
_VICREG_A = ViewSpec(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, blur_p=1.0, solarize_p=0.0)
_VICREG_B = replace(_VICREG_A, blur_p=0.1, solarize_p=0.2)
# MAE: random resized crop (0.2, 1) and flip only.
_MAE = ViewSpec(crop_scale=(0.2, 1.0), jitter_p=0.0, gray_p=0.0, blur_p=0.0)
# Atari: full frame (no zoom), random 4-px shift, mild intensity jitter, no colour, no flip (game
# geometry is not mirror-symmetric).
_ATARI = ViewSpec(
    crop_size=(84, 84), crop_scale=(1.0, 1.0), flip_p=0.0, shift_pad=4,
    jitter_p=0.0, gray_p=0.0, blur_p=0.0, intensity=0.05,
)

PRESETS: dict[str, AugmentPreset] = {
    "simclr": AugmentPreset("simclr", _two(_SIMCLR)),
    "simsiam": AugmentPreset("simsiam", _two(_SIMSIAM)),
    "vicreg": AugmentPreset("vicreg", _two(_VICREG_A, _VICREG_B)),
    "mae": AugmentPreset("mae", (_MAE,)),
    # frames are scaled to [0, 1] and nothing else, exactly as an RL agent's trunk sees them
    "atari": AugmentPreset("atari", _two(_ATARI), mean=(0.0,), std=(1.0,)),
}

_VIEW_FIELDS = {f.name for f in dataclasses.fields(ViewSpec)}


def get_preset(
    name: str,
    crop_size: int | tuple[int, int] | None = None,
    num_views: int | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    **view_overrides,
) -> AugmentPreset:
    """Return preset ``name`` with overrides applied to every view.

    Args:
        name: one of :data:`PRESETS`.
        crop_size: output size of every view (int or (H, W)).
        num_views: repeat the preset's views cyclically to this many views.
        mean, std: replace the normalisation.
        **view_overrides: any :class:`ViewSpec` field, applied to all views
            (e.g. ``blur_p=0.0`` for CIFAR).
    """
    if name not in PRESETS:
        raise ValueError(f"unknown augmentation preset {name!r}; choose one of {sorted(PRESETS)}")
    bad = set(view_overrides) - _VIEW_FIELDS
    if bad:
        raise ValueError(f"unknown view field(s) {sorted(bad)}; ViewSpec has {sorted(_VIEW_FIELDS)}")
    preset = PRESETS[name]
    views = list(preset.views)
    if num_views is not None:
        views = [views[i % len(views)] for i in range(num_views)]
    if crop_size is not None:
        view_overrides["crop_size"] = crop_size
    views = [replace(v, **view_overrides) for v in views]
    return AugmentPreset(
        name=name,
        views=tuple(views),
        mean=tuple(mean) if mean is not None else preset.mean,
        std=tuple(std) if std is not None else preset.std,
    )
