"""Backbones: every timm model plus our Atari CNNs, built through ``create_backbone``.

Importing this package registers ``nature_cnn``, ``impala_cnn`` and ``atariari_cnn`` into timm's
registry, so ``timm.create_model`` builds them too.
"""

from .atari import ATARI_BACKBONES, AtariARICNN, ImpalaCNN, NatureCNN, atariari_init_
from .registry import create_backbone, list_backbones

__all__ = [
    "ATARI_BACKBONES",
    "AtariARICNN",
    "ImpalaCNN",
    "NatureCNN",
    "atariari_init_",
    "create_backbone",
    "list_backbones",
]
