"""VICReg: Variance-Invariance-Covariance Regularization (Bardes, Ponce, LeCun, ICLR 2022).

Two views pass through one backbone and one expander (projector); the loss pulls the two
embeddings together (invariance), keeps every dimension's std above 1 (variance) and decorrelates
dimensions (covariance). No negatives, no stop-gradient, no momentum encoder. The variance and
covariance terms are batch statistics, so under DDP they are taken over the global batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_toolkit.distributed import at_least_float32, gather_with_grad
from ssl_toolkit.methods.base import SSLMethod, mlp, parse_dims


def _off_diagonal(m: torch.Tensor) -> torch.Tensor:
    n = m.shape[0]
    return m.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def vicreg_loss(
    z_a: torch.Tensor,
    z_b: torch.Tensor,
    sim_coeff: float = 25.0,
    std_coeff: float = 25.0,
    cov_coeff: float = 1.0,
    gather: bool = True,
    return_terms: bool = False,
):
    """VICReg loss as in the official implementation.

    Args:
        z_a, z_b: ``(N, D)`` embeddings of the two views (local batch).
        sim_coeff, std_coeff, cov_coeff: λ, μ, ν of the paper.
        gather: take variance/covariance over the batch gathered from all ranks (no-op in one process).
        return_terms: also return ``{"invariance", "variance", "covariance"}``.
    Returns: scalar loss (and the terms dict).
    """
    z_a, z_b = at_least_float32(z_a, z_b)
    # invariance on the local pairs; the global mean of local means is the global mean
    inv = F.mse_loss(z_a, z_b)
    if gather:
        z_a, z_b = gather_with_grad(z_a), gather_with_grad(z_b)
    n, d = z_a.shape
    z_a = z_a - z_a.mean(dim=0)
    z_b = z_b - z_b.mean(dim=0)
    std_a = torch.sqrt(z_a.var(dim=0) + 1e-4)
    std_b = torch.sqrt(z_b.var(dim=0) + 1e-4)
    var = F.relu(1 - std_a).mean() / 2 + F.relu(1 - std_b).mean() / 2
    cov_a = (z_a.T @ z_a) / (n - 1)
    cov_b = (z_b.T @ z_b) / (n - 1)
    cov = _off_diagonal(cov_a).pow(2).sum() / d + _off_diagonal(cov_b).pow(2).sum() / d
    loss = sim_coeff * inv + std_coeff * var + cov_coeff * cov
    if return_terms:
        return loss, {"invariance": inv, "variance": var, "covariance": cov}
    return loss


class VICReg(SSLMethod):
    """VICReg on any registry backbone.

    Args:
        projector: expander widths after the backbone, ``"8192-8192-8192"`` for ResNet-50 in the paper.
        sim_coeff, std_coeff, cov_coeff: loss coefficients (25, 25, 1 in the paper).
        **kwargs: see :class:`~ssl_toolkit.methods.base.SSLMethod` (LARS, base lr 0.2, wd 1e-6,
            10 warm-up epochs of 1000 by default here as a fraction).
    """

    def __init__(
        self,
        projector: str = "8192-8192-8192",
        sim_coeff: float = 25.0,
        std_coeff: float = 25.0,
        cov_coeff: float = 1.0,
        **kwargs,
    ):
        kwargs.setdefault("optimizer", "lars")
        kwargs.setdefault("base_lr", 0.2)
        kwargs.setdefault("weight_decay", 1e-6)
        kwargs.setdefault("warmup_fraction", 0.01)
        super().__init__(**kwargs)
        self.save_hyperparameters()
        self.projector = mlp([self.backbone.num_features, *parse_dims(projector)])

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x_a, x_b = batch["views"][:2]
        h_a, h_b = self.encode(x_a), self.encode(x_b)
        z_a, z_b = self.projector(h_a), self.projector(h_b)
        hp = self.hparams
        loss, terms = vicreg_loss(
            z_a, z_b, hp.sim_coeff, hp.std_coeff, hp.cov_coeff, return_terms=True
        )
        self.log_terms(loss, terms)
        self.monitor_collapse(z_a)
        return loss + self.online_probe_loss(h_a, batch.get("label"))
