"""SimSiam: Exploring Simple Siamese Representation Learning (Chen & He, CVPR 2021).

Two views, one backbone + projector (encoder f), a predictor h on one side, and a stop-gradient on
the other: D(p_a, stopgrad(z_b))/2 + D(p_b, stopgrad(z_a))/2 with D the negative cosine. The
stop-gradient is what prevents collapse; the predictor keeps a fixed learning rate.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_toolkit.distributed import at_least_float32
from ssl_toolkit.methods.base import SSLMethod, mlp


def simsiam_loss(
    p_a: torch.Tensor, p_b: torch.Tensor, z_a: torch.Tensor, z_b: torch.Tensor
) -> torch.Tensor:
    """Symmetric negative cosine similarity with stop-gradient on ``z``.

    Args: p_a, p_b: ``(N, D)`` predictions; z_a, z_b: ``(N, D)`` projections (targets, detached here).
    Returns: scalar in ``[-1, 1]``; −1 when each prediction points along the other view's projection.
    """
    p_a, p_b, z_a, z_b = at_least_float32(p_a, p_b, z_a, z_b)
    d_ab = F.cosine_similarity(p_a, z_b.detach(), dim=-1).mean()
    d_ba = F.cosine_similarity(p_b, z_a.detach(), dim=-1).mean()
    return -(d_ab + d_ba) / 2


class SimSiam(SSLMethod):
    """SimSiam on any registry backbone.

    Args:
        proj_dim: projector width (3 layers, BN on the output without affine), 2048 in the paper.
        pred_dim: predictor bottleneck width, 512 in the paper.
        fix_pred_lr: keep the predictor at the initial learning rate (the paper's default).
        **kwargs: see :class:`~ssl_toolkit.methods.base.SSLMethod` (SGD, base lr 0.05, wd 1e-4,
            momentum 0.9, cosine schedule without warm-up).
    """

    def __init__(self, proj_dim: int = 2048, pred_dim: int = 512, fix_pred_lr: bool = True, **kwargs):
        kwargs.setdefault("optimizer", "sgd")
        kwargs.setdefault("base_lr", 0.05)
        kwargs.setdefault("weight_decay", 1e-4)
        kwargs.setdefault("warmup_fraction", 0.0)
        super().__init__(**kwargs)
        self.save_hyperparameters()
        d = self.backbone.num_features
        self.projector = mlp([d, proj_dim, proj_dim, proj_dim], last_bn=True, last_bn_affine=False)
        self.predictor = mlp([proj_dim, pred_dim, proj_dim])

    def param_groups(self) -> list[dict]:
        groups = super().param_groups()
        if self.hparams.fix_pred_lr:
            pred = {id(p) for p in self.predictor.parameters()}
            for g in groups:
                if not g.get("fixed_lr"):
                    g["params"] = [p for p in g["params"] if id(p) not in pred]
            groups.append({
                "params": list(self.predictor.parameters()),
                "weight_decay": self.hparams.weight_decay, "fixed_lr": True,
            })
        return groups

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x_a, x_b = batch["views"][:2]
        h_a, h_b = self.encode(x_a), self.encode(x_b)
        z_a, z_b = self.projector(h_a), self.projector(h_b)
        p_a, p_b = self.predictor(z_a), self.predictor(z_b)
        # stop-gradient: the targets z are constants for the predictor's side
        loss = simsiam_loss(p_a, p_b, z_a.detach(), z_b.detach())
        self.log_terms(loss)
        self.monitor_collapse(z_a)
        return loss + self.online_probe_loss(h_a, batch.get("label"))
