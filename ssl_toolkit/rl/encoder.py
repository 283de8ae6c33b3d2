"""``AtariEncoder``: a pretrained encoder as the trunk of an Atari agent.

Atari agents (the DQN line of Mnih et al., Nature 2015, and CleanRL's single-file agents) feed their
trunk uint8 frame stacks ``(B, 4, 84, 84)`` and expect it to scale pixels itself and return a
feature vector. This module gives any exported encoder that contract:

- pixels are divided by 255 inside, then normalised with the encoder's training mean/std if it has
  them (our Atari preset's are 0 and 1, a no-op);
- frames whose size differs from the encoder's training size are resized (bilinear, antialiased),
  and a warning says so once;
- an encoder trained on single frames (``in_chans`` 1 for grayscale) sees each frame of the stack
  separately, with shared weights, and the per-frame features are concatenated (``fuse="concat"``)
  or mapped by a small learned Linear + ReLU (``fuse="linear"``); an encoder trained on stacks whose
  ``in_chans`` is a multiple of ``frame_stack`` takes the whole stack at once;
- frozen means frozen: no gradients reach the encoder, and its BatchNorm/Dropout stay in eval mode
  even when the agent calls ``.train()``; in fine-tune mode ``param_groups`` gives the encoder its
  own learning rate (``lr × lr_mult``).

A CleanRL agent swaps its trunk in one line::

    self.network = AtariEncoder("encoder.safetensors")              # uint8 (B, 4, 84, 84) -> (B, 2048)
    self.q = nn.Linear(self.network.num_features, n_actions)
"""
from __future__ import annotations

import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ssl_toolkit.export import backbone_input_size, load_encoder

FUSE_MODES = ("concat", "linear")


def encoder_in_chans(encoder: nn.Module) -> int:
    """Input channels ``encoder`` was built for: from ``encoder_meta``, ``backbone_kwargs`` or ``in_chans``."""
    for source in (getattr(encoder, "encoder_meta", None), getattr(encoder, "backbone_kwargs", None)):
        if isinstance(source, dict) and source.get("in_chans"):
            return int(source["in_chans"])
    if isinstance(getattr(encoder, "in_chans", None), int):
        return encoder.in_chans
    raise ValueError(f"cannot tell the input channels of a {type(encoder).__name__}: load it with "
                     "ssl_toolkit.load_encoder or build it with ssl_toolkit.create_backbone")


class AtariEncoder(nn.Module):
    """uint8 frame stacks in, feature vectors out.

    Args:
        encoder: a module from ``load_encoder`` / ``create_backbone`` (used as is, not copied), or a
            spec for ``load_encoder``: a ``.safetensors`` / ``.ckpt`` path or ``"random:<backbone>"``
            (built with ``in_chans=frame_stack``: the usual stacked-frames random trunk).
        frame_stack: frames per observation; the input has ``frame_stack × channels per frame``
            channels. If the encoder's ``in_chans`` is a multiple of ``frame_stack`` it takes the
            stack whole (``C = in_chans``); otherwise it encodes each frame (``C = frame_stack × in_chans``).
        fuse: ``"concat"`` (per-frame features side by side) or ``"linear"`` (a learned Linear + ReLU
            from them to ``out_features``).
        freeze: no gradients to the encoder and eval mode for it whatever ``.train()`` says.
        lr_mult: fine-tuning only: the encoder's learning rate is ``base_lr × lr_mult`` in
            :meth:`param_groups`.
        out_features: width of the ``"linear"`` fusion (default: the encoder's ``num_features``).

    Shapes: ``forward``: uint8 (or float with values 0..255) ``(B, C, H, W) -> (B, num_features)``.
    """

    def __init__(self, encoder: nn.Module | str | os.PathLike, frame_stack: int = 4, fuse: str = "concat",
                 freeze: bool = True, lr_mult: float = 1.0, out_features: int | None = None):
        super().__init__()
        if fuse not in FUSE_MODES:
            raise ValueError(f"fuse must be one of {FUSE_MODES}, got {fuse!r}")
        if frame_stack < 1:
            raise ValueError(f"frame_stack must be >= 1, got {frame_stack}")
        if out_features is not None and fuse != "linear":
            raise ValueError("out_features sets the width of fuse='linear'; drop it or use fuse='linear'")
        if lr_mult < 0:
            raise ValueError(f"lr_mult must be >= 0, got {lr_mult}")
        if not isinstance(encoder, nn.Module):
            spec = str(encoder)
            encoder = load_encoder(spec, freeze=freeze, **({"in_chans": frame_stack} if spec.startswith("random:") else {}))
        if not hasattr(encoder, "num_features"):
            raise ValueError(f"the encoder ({type(encoder).__name__}) has no num_features; "
                             "load it with ssl_toolkit.load_encoder or build it with create_backbone")
        self.encoder = encoder
        self.freeze, self.lr_mult, self.fuse_mode = freeze, float(lr_mult), fuse

        enc_chans = encoder_in_chans(encoder)
        self.per_frame = enc_chans % frame_stack != 0
        self.frame_stack = frame_stack if self.per_frame else 1
        self.in_chans = frame_stack * enc_chans if self.per_frame else enc_chans
        meta = getattr(encoder, "encoder_meta", None) or {}
        size = meta.get("input_size") or backbone_input_size(encoder)
        self.input_size = tuple(int(s) for s in size) if size else None
        self._register_normalisation(meta.get("mean"), meta.get("std"), enc_chans)

        features = self.frame_stack * int(encoder.num_features)
        if fuse == "linear":
            out_features = int(out_features or encoder.num_features)
            self.fuse = nn.Sequential(nn.Linear(features, out_features), nn.ReLU())
            features = out_features
        else:
            self.fuse = nn.Identity()
        self.num_features = features
        self._warned_resize = False

        self.encoder.requires_grad_(not freeze)
        if freeze:
            self.encoder.eval()

    def _register_normalisation(self, mean, std, chans: int) -> None:
        """mean/std as ``(1, chans, 1, 1)`` buffers (a single value is broadcast), or None."""
        if mean is None or std is None:
            self.register_buffer("mean", None, persistent=False)
            self.register_buffer("std", None, persistent=False)
            return
        for name, values in (("mean", mean), ("std", std)):
            if len(values) not in (1, chans):
                raise ValueError(f"encoder {name} has {len(values)} values for {chans} input channels")
        # not persistent: they come from the encoder's metadata, the state dict holds only weights
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "AtariEncoder":
        """Set train/eval mode; a frozen encoder stays in eval mode (BatchNorm statistics and Dropout
        must not change under an agent that calls ``.train()`` every update)."""
        super().train(mode)
        if self.freeze:
            self.encoder.eval()
        return self

    def param_groups(self, base_lr: float) -> list[dict]:
        """Optimiser groups: the encoder at ``base_lr × lr_mult`` (fine-tuning only), the fusion layer
        at ``base_lr``. Frozen parameters are left out."""
        groups = []
        encoder_params = [p for p in self.encoder.parameters() if p.requires_grad]
        if encoder_params:
            groups.append({"params": encoder_params, "lr": base_lr * self.lr_mult})
        fuse_params = [p for p in self.fuse.parameters() if p.requires_grad]
        if fuse_params:
            groups.append({"params": fuse_params, "lr": base_lr})
        return groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` pixels 0..255 -> ``(B, num_features)``."""
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"AtariEncoder expects (B, {self.in_chans}, H, W) frames "
                f"({self.frame_stack if self.per_frame else 'one'} stack(s) of the encoder's input), got {tuple(x.shape)}")
        b = x.shape[0]
        x = x.float() / 255.0
        if self.per_frame:
            x = x.reshape(b * self.frame_stack, self.in_chans // self.frame_stack, *x.shape[2:])
        if self.mean is not None:
            x = (x - self.mean) / self.std
        if self.input_size is not None and tuple(x.shape[-2:]) != self.input_size:
            if not self._warned_resize:
                warnings.warn(f"AtariEncoder: frames are {x.shape[-2]}x{x.shape[-1]} but the encoder was trained on "
                              f"{self.input_size[0]}x{self.input_size[1]}; resizing them (bilinear, antialiased)",
                              stacklevel=1)
                self._warned_resize = True
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False, antialias=True)
        # a frozen encoder builds no graph at all: cheaper, and nothing can reach its weights
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            h = self.encoder(x)
        return self.fuse(h.reshape(b, -1))
