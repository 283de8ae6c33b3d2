"""Two-stage augmentation: geometric views cut per sample on the CPU (:class:`ViewSampler`), colour
work batched on the model's device (:class:`GPUAugment`), both driven by one :class:`AugmentPreset`."""

from ssl_toolkit.augment.gpu import GPUAugment
from ssl_toolkit.augment.presets import PRESETS, AugmentPreset, ViewSpec, get_preset
from ssl_toolkit.augment.views import ViewSampler, center_view

__all__ = ["ViewSpec", "AugmentPreset", "PRESETS", "get_preset", "ViewSampler", "GPUAugment", "center_view"]
