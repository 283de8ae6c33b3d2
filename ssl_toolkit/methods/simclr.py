"""SimCLR: A Simple Framework for Contrastive Learning (Chen, Kornblith, Norouzi, Hinton, ICML 2020).

Two views, one backbone, a small MLP projector, and the NT-Xent loss: each of the 2N embeddings must
pick out its partner view among the other 2N−1. The negatives are the whole global batch, so under
DDP every rank compares its local anchors with the keys gathered from all ranks.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_toolkit.distributed import at_least_float32, gather_with_grad, rank
from ssl_toolkit.methods.base import SSLMethod, mlp, parse_dims


def nt_xent_loss(
    z_a: torch.Tensor, z_b: torch.Tensor, temperature: float = 0.1, gather: bool = True
) -> torch.Tensor:
    """NT-Xent over 2N samples with 2N−2 negatives per anchor.

    Args:
        z_a, z_b: ``(n, D)`` projections of the two views on this rank.
        temperature: τ.
        gather: compare with keys from every rank (no-op in one process).
    Returns: scalar, the mean over this rank's 2n anchors.
    """
    z_a, z_b = at_least_float32(z_a, z_b)
    z_a, z_b = F.normalize(z_a, dim=1), F.normalize(z_b, dim=1)
    n = z_a.shape[0]
    queries = torch.cat([z_a, z_b])  # (2n, D)
    keys_a = gather_with_grad(z_a) if gather else z_a  # (N, D)
    keys_b = gather_with_grad(z_b) if gather else z_b
    big_n = keys_a.shape[0]
    keys = torch.cat([keys_a, keys_b])  # (2N, D): all a's, then all b's
    logits = queries @ keys.T / temperature  # (2n, 2N)
    offset = (rank() if gather else 0) * n
    local = torch.arange(n, device=z_a.device) + offset
    self_idx = torch.cat([local, local + big_n])
    positive = torch.cat([local + big_n, local])
    # an anchor is never its own negative
    logits[torch.arange(2 * n, device=z_a.device), self_idx] = float("-inf")
    return F.cross_entropy(logits, positive)


class SimCLR(SSLMethod):
    """SimCLR on any registry backbone.

    Args:
        projector: widths after the backbone, ``"2048-128"`` (hidden 2048, output 128).
        temperature: NT-Xent τ (0.1 for large batches with LARS, as in the paper).
        **kwargs: see :class:`~ssl_toolkit.methods.base.SSLMethod` (LARS, base lr 0.3, wd 1e-6,
            10 warm-up epochs of 100 → 10%).
    """

    def __init__(self, projector: str = "2048-128", temperature: float = 0.1, **kwargs):
        kwargs.setdefault("optimizer", "lars")
        kwargs.setdefault("base_lr", 0.3)
        kwargs.setdefault("weight_decay", 1e-6)
        kwargs.setdefault("warmup_fraction", 0.1)
        super().__init__(**kwargs)
        self.save_hyperparameters()
        self.projector = mlp([self.backbone.num_features, *parse_dims(projector)])

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x_a, x_b = batch["views"][:2]
        h_a, h_b = self.encode(x_a), self.encode(x_b)
        z_a, z_b = self.projector(h_a), self.projector(h_b)
        loss = nt_xent_loss(z_a, z_b, self.hparams.temperature)
        self.log_terms(loss)
        self.monitor_collapse(z_a)
        return loss + self.online_probe_loss(h_a, batch.get("label"))
