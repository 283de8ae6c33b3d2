"""The shared LightningModule under every method, and the one MLP builder their heads use.

What lives here is what all four methods do the same way: build the backbone from the registry,
hold the optimiser recipe (parameter groups without weight decay for biases and norms, learning rate
scaled by global batch / 256, linear warm-up then cosine), the online linear probe on detached
features, and the collapse monitor (per-dimension std and effective rank of the embeddings, as in
VICReg's and RankMe's analyses). Each method file adds its loss, its heads and a ``training_step``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import pytorch_lightning as pl
import timm.optim
import torch
import torch.nn.functional as F
from torch import nn

from ssl_toolkit.backbones import create_backbone
from ssl_toolkit.distributed import gather_no_grad


def mlp(
    dims: Sequence[int],
    last_bn: bool = False,
    last_bn_affine: bool = True,
    hidden_bn: bool = True,
) -> nn.Sequential:
    """Linear → BN → ReLU blocks through ``dims``, the last block a bare Linear.

    Args:
        dims: widths ``[in, hidden..., out]``, e.g. ``[2048, 8192, 8192, 8192]`` for VICReg.
        last_bn: add BatchNorm after the last Linear (SimSiam's projector).
        last_bn_affine: whether that last BatchNorm has learnable affine parameters.
        hidden_bn: BatchNorm after each hidden Linear.
    Shapes: ``(B, dims[0]) -> (B, dims[-1])``.
    """
    if len(dims) < 2:
        raise ValueError(f"an MLP needs at least input and output widths, got {list(dims)}")
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == len(dims) - 2
        with_bn = last_bn if last else hidden_bn
        # a Linear followed by BatchNorm does not need a bias: BN's shift replaces it
        layers.append(nn.Linear(d_in, d_out, bias=not with_bn))
        if with_bn:
            layers.append(nn.BatchNorm1d(d_out, affine=last_bn_affine if last else True))
        if not last:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def parse_dims(spec: str | Sequence[int]) -> list[int]:
    """``"8192-8192-8192"`` → ``[8192, 8192, 8192]`` (VICReg's projector spec)."""
    if isinstance(spec, str):
        return [int(d) for d in spec.split("-")]
    return [int(d) for d in spec]


def effective_rank(z: torch.Tensor) -> torch.Tensor:
    """RankMe effective rank (Garrido et al. 2023): exp of the entropy of normalised singular values.

    Args: z: ``(N, D)`` embeddings. Returns a scalar in ``[1, min(N, D)]``.
    """
    s = torch.linalg.svdvals(z.float())
    p = s / s.sum().clamp_min(1e-12) + 1e-12
    return torch.exp(-(p * p.log()).sum())


class SSLMethod(pl.LightningModule):
    """Shared base for VICReg, SimSiam, SimCLR and MAE.

    Args:
        backbone: a name from the backbone registry (any timm model or ours).
        backbone_kwargs: extra keyword arguments for the backbone (``small_images``, ``img_size``…).
        in_chans: input channels; LightningCLI links it from the data module (1 for Atari frames).
        optimizer: ``lars``, ``sgd`` or ``adamw``.
        base_lr: learning rate for a global batch of 256; the used rate is scaled by global batch / 256.
        weight_decay: weight decay for weights; biases and norm parameters get none (and no LARS
            adaptation, since timm's Lars only adapts groups with weight decay).
        momentum: SGD/LARS momentum.
        betas: AdamW betas.
        warmup_fraction: fraction of the total optimiser steps spent in linear warm-up.
        num_classes: classes for the online linear probe; 0 or None disables it (linked from data).
        probe_lr: learning rate of the online probe (not scaled, not adapted).
        monitor_every_n_steps: how often to log the collapse metrics.
        channels_last: run the backbone in channels-last memory format.
        compile: wrap the backbone with ``torch.compile``.
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        backbone_kwargs: dict | None = None,
        in_chans: int = 3,
        optimizer: str = "lars",
        base_lr: float = 0.2,
        weight_decay: float = 1e-6,
        momentum: float = 0.9,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_fraction: float = 0.01,
        num_classes: int | None = None,
        probe_lr: float = 0.1,
        monitor_every_n_steps: int = 50,
        channels_last: bool = False,
        compile: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.backbone = create_backbone(backbone, in_chans=in_chans, **(backbone_kwargs or {}))
        if channels_last:
            self.backbone = self.backbone.to(memory_format=torch.channels_last)
        if compile:
            # in place: the state dict keeps the plain backbone's keys (no `_orig_mod.` prefix)
            self.backbone.compile()
        self.online_probe = nn.Linear(self.backbone.num_features, num_classes) if num_classes else None

    # ---- what methods call ----------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features: ``(B, C, H, W) -> (B, num_features)``."""
        if self.hparams.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)

    def log_terms(self, loss: torch.Tensor, terms: dict[str, torch.Tensor] | None = None) -> None:
        self.log("train/loss", loss, prog_bar=True)
        for name, value in (terms or {}).items():
            self.log(f"train/{name}", value)

    def online_probe_loss(self, h: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the online probe on *detached* features; 0 without labels.

        The probe must not shape the representation, so ``h`` is detached here whoever calls it.
        """
        if self.online_probe is None or labels is None:
            return h.new_zeros(())
        keep = labels >= 0
        if not bool(keep.any()):
            return h.new_zeros(())
        logits = self.online_probe(h.detach().float()[keep])
        y = labels[keep]
        loss = F.cross_entropy(logits, y)
        top1 = (logits.argmax(1) == y).float().mean()
        self.log("online_probe/loss", loss)
        self.log("online_probe/top1", top1, prog_bar=True)
        return loss

    def monitor_collapse(self, z: torch.Tensor) -> None:
        """Log per-dimension std (mean and min over dims) and effective rank of ``z: (B, D)``."""
        n = self.hparams.monitor_every_n_steps
        if not n or self.global_step % n:
            return
        with torch.no_grad():
            z = gather_no_grad(z.detach().float())
            z = F.normalize(z, dim=1)
            std = z.std(dim=0)
            self.log("collapse/std_mean", std.mean())
            self.log("collapse/std_min", std.min())
            self.log("collapse/effective_rank", effective_rank(z))

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        """Log ``data/skipped``: samples this rank skipped as bad data so far (the data module counts
        them; see :attr:`SSLDataModule.skipped`). Not summed over ranks: that would be a collective on
        every step; each rank also warns once per skipped sample, naming shard and key."""
        skipped = getattr(self.trainer.datamodule, "skipped", None)
        if skipped is not None:
            self.log("data/skipped", float(skipped), rank_zero_only=True)

    # ---- optimisation ---------------------------------------------------------------------------
    def param_groups(self) -> list[dict]:
        """Groups for the optimiser; methods extend this (SimSiam's fixed-lr predictor).

        Each group may carry ``fixed_lr=True`` (no schedule) and ``lr_scale`` (times the scaled lr).
        """
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad or name.startswith("online_probe."):
                continue
            # biases and norm scales/shifts are 1-D: exclude them from decay and LARS adaptation
            (no_decay if p.ndim <= 1 else decay).append(p)
        groups = [
            {"params": decay, "weight_decay": self.hparams.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        if self.online_probe is not None:
            groups.append({
                "params": list(self.online_probe.parameters()), "weight_decay": 0.0,
                "fixed_lr": True, "absolute_lr": self.hparams.probe_lr,
            })
        return groups

    def global_batch_size(self) -> int:
        dm = getattr(self.trainer, "datamodule", None)
        per_device = getattr(dm, "batch_size", None)
        if per_device is None:
            raise ValueError("cannot scale the learning rate: the data module has no batch_size")
        return per_device * self.trainer.world_size * self.trainer.accumulate_grad_batches

    def configure_optimizers(self):
        hp = self.hparams
        lr = hp.base_lr * self.global_batch_size() / 256
        groups = [g for g in self.param_groups() if g["params"]]
        for g in groups:
            g["lr"] = g.pop("absolute_lr", lr * g.pop("lr_scale", 1.0))
        fixed = [g.pop("fixed_lr", False) for g in groups]
        if hp.optimizer == "lars":
            opt = timm.optim.Lars(groups, lr=lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        elif hp.optimizer == "sgd":
            opt = torch.optim.SGD(groups, lr=lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        elif hp.optimizer == "adamw":
            opt = torch.optim.AdamW(groups, lr=lr, betas=tuple(hp.betas), weight_decay=hp.weight_decay)
        else:
            raise ValueError(f"unknown optimizer {hp.optimizer!r}; choose lars, sgd or adamw")
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(hp.warmup_fraction * total)

        def warmup_cosine(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

        lambdas = [(lambda step: 1.0) if f else warmup_cosine for f in fixed]
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambdas)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
