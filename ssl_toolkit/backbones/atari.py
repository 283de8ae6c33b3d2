"""Atari CNN encoders from the RL literature, registered into timm's model registry.

- ``nature_cnn``: the DQN encoder of Mnih et al., "Human-level control through deep reinforcement
  learning", Nature 2015.
- ``impala_cnn``: the 15-layer residual encoder of Espeholt et al., "IMPALA: Scalable Distributed
  Deep-RL with Importance Weighted Actor-Learner Architectures", ICML 2018.
- ``atariari_cnn``: the encoder of Anand et al., "Unsupervised State Representation Learning in
  Atari", NeurIPS 2019, on full 210×160 frames.

Each follows timm's model contract, so ``timm.create_model("nature_cnn")`` works once
``ssl_toolkit.backbones`` is imported. In all three papers the feature vector is a linear layer on
the flattened conv map, so:

- ``forward_features(x)``: ``(B, in_chans, H, W) -> (B, C, h, w)``, the last conv map (after its ReLU);
- ``forward_head(f, pre_logits=True)``: flatten → linear (→ ReLU where the paper has one) →
  ``(B, num_features)``, the paper's feature vector; with ``pre_logits=False`` the classifier follows
  (identity when ``num_classes=0``, the default).

Because that linear layer sees every position of the map, its size is computed from ``img_size``
and the input size is fixed. Inputs are frames scaled to [0, 1] (mean 0, std 1). No pretrained
weights exist.
"""

import math
from collections import OrderedDict
from typing import Optional, Sequence, Tuple, Union

import torch
from timm.layers import to_2tuple
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

ImgSize = Union[int, Tuple[int, int]]


def atariari_init_(module: nn.Module) -> nn.Module:
    """AtariARI's initialisation (also CleanRL's ``layer_init``), in place: orthogonal weights with
    ReLU gain √2, zero biases, for every conv and linear layer in ``module``. Returns ``module``."""
    gain = nn.init.calculate_gain("relu")
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.orthogonal_(m.weight, gain=gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


def _feature_map_size(img_size: ImgSize, trunk: nn.Module) -> Tuple[int, int]:
    """Spatial size of ``trunk``'s output for an ``img_size`` input, from its convs' and pools'
    kernel/stride/padding (residual-branch convs keep the size, so walking all of them is exact)."""
    size = to_2tuple(img_size)
    for m in trunk.modules():
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d)):
            k, s, p = (to_2tuple(v) for v in (m.kernel_size, m.stride, m.padding))
            size = tuple((n + 2 * pi - ki) // si + 1 for n, ki, si, pi in zip(size, k, s, p))
    return size


class _AtariCNN(nn.Module):
    """timm's classifier contract for a conv trunk (``self.convs``) followed by flatten → linear.

    Subclasses build ``self.convs`` and then call ``_build_head``.
    """

    def _build_head(self, in_chans: int, img_size: ImgSize, num_features: int, final_relu: bool,
                    num_classes: int, drop_rate: float) -> None:
        self.in_chans, self.img_size = in_chans, tuple(to_2tuple(img_size))
        self.num_features = self.head_hidden_size = num_features
        channels = [m.out_channels for m in self.convs.modules() if isinstance(m, nn.Conv2d)][-1]
        map_size = _feature_map_size(self.img_size, self.convs)
        if min(map_size) < 1:
            raise ValueError(f"img_size={self.img_size} is too small for {type(self).__name__}")
        flat = channels * math.prod(map_size)
        self.hidden = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, num_features), *([nn.ReLU()] if final_relu else []))
        self.head_drop = nn.Dropout(drop_rate)
        self.reset_classifier(num_classes)

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """New ``num_features -> num_classes`` classifier (identity for 0). ``global_pool`` exists for
        timm compatibility only: the flatten + linear layer of the paper is the pooling."""
        if global_pool not in (None, ""):
            raise ValueError(f"{type(self).__name__} has no global pooling to set (got {global_pool!r})")
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_chans, H, W) -> (B, C, h, w)`` conv map."""
        return self.convs(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``(B, C, h, w) -> (B, num_features)`` with ``pre_logits``, else the classifier's output
        (``(B, num_classes)``, or ``(B, num_features)`` when ``num_classes=0``)."""
        x = self.head_drop(self.hidden(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class NatureCNN(_AtariCNN):
    """DQN encoder: conv 32 8×8/4, conv 64 4×4/2, conv 64 3×3/1, then 512 ReLU units.

    At 84×84 the conv map is ``(B, 64, 7, 7)``; ``forward`` gives ``(B, 512)``.

    ``init="orthogonal"`` (default) is how RL code builds this network (CleanRL's ``layer_init``,
    SB3's ``ortho_init``): orthogonal weights with gain √2, zero biases. PyTorch's own init
    (``init="default"``) shrinks the signal at every layer: on uniform [0, 0.5] frames its features
    come out ~23× smaller (mean |x| 0.007 against 0.16), too small for an untrained baseline to be probed.
    """

    def __init__(self, in_chans: int = 4, num_classes: int = 0, img_size: ImgSize = 84,
                 init: str = "orthogonal", drop_rate: float = 0.0):
        super().__init__()
        if init not in ("orthogonal", "default"):
            raise ValueError(f"init must be 'orthogonal' or 'default', got {init!r}")
        self.convs = nn.Sequential(
            nn.Conv2d(in_chans, 32, 8, stride=4), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
        )
        self._build_head(in_chans, img_size, 512, True, num_classes, drop_rate)
        if init == "orthogonal":
            atariari_init_(self.convs)  # orthogonal, ReLU gain √2, zero bias
            atariari_init_(self.hidden)


class _ImpalaResidual(nn.Module):
    """Pre-activation residual block: ``x + conv(relu(conv(relu(x))))``, shape-preserving."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # not in-place: x is still needed for the skip connection
        return x + self.conv1(torch.relu(self.conv0(torch.relu(x))))


def _impala_stack(in_chs: int, out_chs: int) -> nn.Sequential:
    """conv 3×3 → max-pool 3×3/2 (halves H and W, rounding up) → two residual blocks."""
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(in_chs, out_chs, 3, padding=1),
        pool=nn.MaxPool2d(3, stride=2, padding=1),
        res0=_ImpalaResidual(out_chs),
        res1=_ImpalaResidual(out_chs),
    ))


class ImpalaCNN(_AtariCNN):
    """IMPALA's deep encoder: one stack per entry of ``channels`` (×``width_mult``), then ReLU and
    256 ReLU units. Each stack halves H and W: at 84×84 the conv map is ``(B, 32, 11, 11)``;
    ``forward`` gives ``(B, 256)``.
    """

    def __init__(self, in_chans: int = 4, num_classes: int = 0, img_size: ImgSize = 84,
                 channels: Sequence[int] = (16, 32, 32), width_mult: float = 1.0,
                 drop_rate: float = 0.0):
        super().__init__()
        widths = [max(1, round(c * width_mult)) for c in channels]
        stacks = [_impala_stack(i, o) for i, o in zip([in_chans, *widths[:-1]], widths)]
        self.convs = nn.Sequential(*stacks, nn.ReLU())
        self._build_head(in_chans, img_size, 256, True, num_classes, drop_rate)


class AtariARICNN(_AtariCNN):
    """AtariARI's encoder on full frames: conv 32 8×8/4, conv 64 4×4/2, conv 128 4×4/2,
    conv 64 3×3/1 (ReLU after each), then a linear layer to 256 features with no ReLU after it,
    as in the paper's code. At 210×160 the conv map is ``(B, 64, 9, 6)``; ``forward`` gives ``(B, 256)``.

    ``init="paper"`` (default) applies ``atariari_init_`` to the encoder (not to a classifier);
    ``init="default"`` keeps PyTorch's.
    """

    def __init__(self, in_chans: int = 1, num_classes: int = 0, img_size: ImgSize = (210, 160),
                 init: str = "paper", drop_rate: float = 0.0):
        super().__init__()
        if init not in ("paper", "default"):
            raise ValueError(f"init must be 'paper' or 'default', got {init!r}")
        self.convs = nn.Sequential(
            nn.Conv2d(in_chans, 32, 8, stride=4), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 128, 4, stride=2), nn.ReLU(),
            nn.Conv2d(128, 64, 3, stride=1), nn.ReLU(),
        )
        self._build_head(in_chans, img_size, 256, False, num_classes, drop_rate)
        if init == "paper":
            atariari_init_(self.convs)
            atariari_init_(self.hidden)


def _cfg(input_size: Tuple[int, int, int], first_conv: str, paper_name: str, paper_ids: str) -> dict:
    # fixed_input_size makes timm pass img_size from input_size; mean 0 / std 1 because RL frames
    # are only scaled to [0, 1]; no crop, since positions on screen are what the features encode.
    chans = input_size[0]
    return dict(
        input_size=input_size, fixed_input_size=True, num_classes=0, mean=(0.0,) * chans,
        std=(1.0,) * chans, crop_pct=1.0, interpolation="bilinear", first_conv=first_conv,
        classifier="head", paper_name=paper_name, paper_ids=paper_ids,
    )


default_cfgs = generate_default_cfgs({
    "nature_cnn": _cfg((4, 84, 84), "convs.0", "Human-level control through deep reinforcement learning",
                       "doi:10.1038/nature14236"),
    "impala_cnn": _cfg((4, 84, 84), "convs.0.conv", "IMPALA: Scalable Distributed Deep-RL with "
                       "Importance Weighted Actor-Learner Architectures", "arXiv:1802.01561"),
    "atariari_cnn": _cfg((1, 210, 160), "convs.0", "Unsupervised State Representation Learning in Atari",
                         "arXiv:1906.08226"),
})


def _create(variant: str, model_cls: type, pretrained: bool, **kwargs) -> nn.Module:
    if pretrained:
        raise ValueError(f"{variant} has no pretrained weights; use pretrained=False")
    return build_model_with_cfg(model_cls, variant, pretrained=False, **kwargs)


@register_model
def nature_cnn(pretrained: bool = False, **kwargs) -> NatureCNN:
    """DQN Nature CNN (Mnih et al. 2015); default input 4×84×84, 512 features."""
    return _create("nature_cnn", NatureCNN, pretrained, **kwargs)


@register_model
def impala_cnn(pretrained: bool = False, **kwargs) -> ImpalaCNN:
    """IMPALA ResNet encoder (Espeholt et al. 2018); default input 4×84×84, 256 features."""
    return _create("impala_cnn", ImpalaCNN, pretrained, **kwargs)


@register_model
def atariari_cnn(pretrained: bool = False, **kwargs) -> AtariARICNN:
    """AtariARI encoder (Anand et al. 2019); default input 1×210×160, 256 features, paper init."""
    return _create("atariari_cnn", AtariARICNN, pretrained, **kwargs)


# Our names in registration order; list_backbones puts them before timm's.
ATARI_BACKBONES = tuple(fn.__name__ for fn in (nature_cnn, impala_cnn, atariari_cnn))
