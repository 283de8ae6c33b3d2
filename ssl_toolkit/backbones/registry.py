"""One way to build every backbone: any timm model name, or one of our Atari CNNs (``atari.py``,
registered into timm's registry). Backbones are headless (``num_classes=0``) and randomly
initialised; they are named by string and record how they were built, so checkpoints and exported
encoders can rebuild them with ``create_backbone(m.backbone_name, **m.backbone_kwargs)``.

The ``small_images`` ResNet stem is the CIFAR variant of Chen et al., "A Simple Framework for
Contrastive Learning of Visual Representations" (SimCLR), ICML 2020, appendix B.9, which solo-learn
uses for 32–64 px inputs.
"""

import difflib
import fnmatch
from typing import List, Optional

import timm
from torch import nn

from .atari import ATARI_BACKBONES


def list_backbones(pattern: Optional[str] = None) -> List[str]:
    """Names ``create_backbone`` accepts: ours first, then timm's architectures.

    Args:
        pattern: fnmatch wildcard such as ``"resnet*"``; ``None`` lists everything.
    """
    ours = [n for n in ATARI_BACKBONES if pattern is None or fnmatch.fnmatch(n, pattern)]
    return ours + [n for n in timm.list_models(pattern or "") if n not in ATARI_BACKBONES]


def create_backbone(name: str, in_chans: int = 3, small_images: bool = False, **kwargs) -> nn.Module:
    """Build backbone ``name`` without a classifier and without pretrained weights.

    Args:
        name: a name from ``list_backbones()`` (timm's ``arch.tag`` and ``hf-hub:`` forms pass through).
        in_chans: input channels (1 grayscale, 3 RGB, 4 stacked frames, ...).
        small_images: ResNets only: 3×3 stride-1 stem conv and no max-pool, for 32–64 px inputs.
        **kwargs: passed to ``timm.create_model``, e.g. ``img_size=(84, 84), patch_size=12`` for a ViT
            or ``img_size=(64, 64)`` for ``nature_cnn``.

    Returns:
        A module with ``num_features``; ``forward``: ``(B, in_chans, H, W) -> (B, num_features)``;
        ``forward_features``: unpooled ``(B, C, h, w)`` map or ``(B, tokens, C)`` for ViTs; and
        ``backbone_name`` / ``backbone_kwargs`` (including ``in_chans`` and ``small_images``).
    """
    if kwargs.pop("pretrained", False):
        raise ValueError("create_backbone never loads pretrained weights; drop pretrained=True")
    if kwargs.pop("num_classes", 0):
        raise ValueError("create_backbone builds headless backbones (num_classes=0); add heads separately")
    if ":" not in name and not timm.is_model(name):
        raise ValueError(_unknown_name_message(name))

    model = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_chans, **kwargs)
    if small_images:
        _use_small_image_stem(model, name)
    model.backbone_name = name
    model.backbone_kwargs = dict(in_chans=in_chans, small_images=small_images, **kwargs)
    return model


def _unknown_name_message(name: str) -> str:
    close = difflib.get_close_matches(name, list_backbones(), n=5)
    hint = f"; did you mean: {', '.join(close)}?" if close else ""
    return f"unknown backbone {name!r}{hint} (see ssl_toolkit.backbones.list_backbones())"


def _use_small_image_stem(model: nn.Module, name: str) -> None:
    """Swap the ImageNet stem (stride-2 conv + stride-2 max-pool) for one 3×3 stride-1 conv, so a
    32 px input leaves layer4 at 4×4 instead of 1×1."""
    stem, pool = getattr(model, "conv1", None), getattr(model, "maxpool", None)
    convs = [m for m in stem.modules() if isinstance(m, nn.Conv2d)] if isinstance(stem, nn.Module) else []
    if not convs or not isinstance(pool, nn.Module):
        raise ValueError(
            f"small_images=True needs a ResNet-style model with `conv1` and `maxpool`; {name!r} lacks them")
    conv = nn.Conv2d(convs[0].in_channels, convs[-1].out_channels, 3, stride=1, padding=1, bias=False)
    # timm initialises ResNet convs this way; PyTorch's default would make the stem the odd one out
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    model.conv1, model.maxpool = conv, nn.Identity()
    # feature_info describes each stage's stride; the stem no longer downsamples by 4
    for info in getattr(model, "feature_info", None) or []:
        info["reduction"] = max(1, info["reduction"] // 4)
