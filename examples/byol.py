"""BYOL: Bootstrap Your Own Latent (Grill et al., NeurIPS 2020), as a method written outside the package.

The worked example of ``docs/adding_a_method.md``. An online network (backbone → projector →
predictor) predicts the projection that a *target* network (backbone → projector) gives of the other
view. The target gets no gradient: its weights are an exponential moving average (EMA) of the online
ones, with a momentum τ that rises from 0.996 to 1 along a cosine. The loss is the squared distance
between the L2-normalised prediction and target, 2 − 2·cos, summed over the two directions.

The file follows the shape of ``ssl_toolkit/methods/*.py``: pure loss → heads → LightningModule.
Train it with ``PYTHONPATH=examples ssl-toolkit pretrain --config examples/byol_cifar.yaml``.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from ssl_toolkit.distributed import at_least_float32
from ssl_toolkit.methods.base import SSLMethod, mlp


# ---- the loss ---------------------------------------------------------------------------------------
def byol_loss(p_a: torch.Tensor, p_b: torch.Tensor, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
    """Symmetric BYOL loss: ``‖p̄_a − z̄_b‖² + ‖p̄_b − z̄_a‖²``, each averaged over the batch.

    Args: p_a, p_b: ``(N, D)`` online predictions of views a and b; z_a, z_b: ``(N, D)`` target
        projections (detached here: the target is a constant for the loss).
    Returns: scalar in ``[0, 8]``; 0 when each prediction points along the other view's target.
    """
    p_a, p_b, z_a, z_b = at_least_float32(p_a, p_b, z_a, z_b)

    def regress(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        # ‖p/‖p‖ − z/‖z‖‖² = 2 − 2·cos(p, z)
        return (2 - 2 * F.cosine_similarity(p, z.detach(), dim=-1)).mean()

    return regress(p_a, z_b) + regress(p_b, z_a)


def ema_momentum(step: int, total_steps: int, base: float = 0.996) -> float:
    """τ at ``step``: ``1 − (1 − base)·(cos(π·step/total) + 1)/2``, from ``base`` to 1."""
    progress = min(1.0, step / max(1, total_steps))
    return 1 - (1 - base) * (math.cos(math.pi * progress) + 1) / 2


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """``ξ ← τ·ξ + (1 − τ)·θ`` for every parameter; buffers (BatchNorm statistics) are copied."""
    for t, o in zip(target.parameters(), online.parameters()):
        t.lerp_(o.detach(), 1 - momentum)
    for t, o in zip(target.buffers(), online.buffers()):
        t.copy_(o)


# ---- the method -------------------------------------------------------------------------------------
class BYOL(SSLMethod):
    """BYOL on any registry backbone.

    Args:
        proj_hidden: hidden width of projector and predictor (4096 in the paper).
        proj_dim: output width of projector and predictor (256 in the paper).
        base_momentum: τ at the start of training (0.996 in the paper), raised to 1 by a cosine.
        **kwargs: see :class:`~ssl_toolkit.methods.base.SSLMethod` (LARS, base lr 0.2, wd 1.5e-6 as
            in the paper; biases and norm parameters excluded).
    """

    def __init__(self, proj_hidden: int = 4096, proj_dim: int = 256, base_momentum: float = 0.996, **kwargs):
        kwargs.setdefault("optimizer", "lars")
        kwargs.setdefault("base_lr", 0.2)
        kwargs.setdefault("weight_decay", 1.5e-6)
        kwargs.setdefault("warmup_fraction", 0.01)
        super().__init__(**kwargs)
        self.save_hyperparameters()
        d = self.backbone.num_features
        self.projector = mlp([d, proj_hidden, proj_dim])
        self.predictor = mlp([proj_dim, proj_hidden, proj_dim])
        # the target network: same architecture, no gradients, moved only by ema_update. Parameters
        # without requires_grad stay out of the optimiser (SSLMethod.param_groups skips them)
        self.target_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.momentum = base_momentum

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x_a, x_b = batch["views"][:2]
        h_a, h_b = self.encode(x_a), self.encode(x_b)
        z_online_a = self.projector(h_a)
        p_a, p_b = self.predictor(z_online_a), self.predictor(self.projector(h_b))
        # stop-gradient: the target network is a constant for this step
        with torch.no_grad():
            z_a = self.target_projector(self.target_backbone(x_a))
            z_b = self.target_projector(self.target_backbone(x_b))
        loss = byol_loss(p_a, p_b, z_a, z_b)
        self.log_terms(loss)
        self.log("ema/momentum", self.momentum)
        self.monitor_collapse(z_online_a)
        return loss + self.online_probe_loss(h_a, batch.get("label"))

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        # once per optimiser step, after it: with gradient accumulation not after every micro-batch
        if (batch_idx + 1) % self.trainer.accumulate_grad_batches:
            return
        self.momentum = ema_momentum(self.global_step, int(self.trainer.estimated_stepping_batches),
                                     self.hparams.base_momentum)
        ema_update(self.target_backbone, self.backbone, self.momentum)
        ema_update(self.target_projector, self.projector, self.momentum)
