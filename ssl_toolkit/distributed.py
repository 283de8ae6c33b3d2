"""Rank helpers and the all-gather that lets batch statistics span every process.

VICReg's variance/covariance terms and SimCLR's negatives are statistics of the *global* batch
(VICReg, Bardes et al. 2022, official code gathers with a ``FullGatherLayer``; SimCLR, Chen et al.
2020, gathers negatives across TPU cores). Each rank therefore gathers every rank's embeddings
with :func:`gather_with_grad` before computing them. In a single process every helper here is a
no-op, so the pure loss functions run unchanged on a laptop CPU.

Why the result is exact under DDP. Rank ``r`` computes a loss ``L_r`` from its own rows ``z_r``
and the gathered rows of every rank; the objective is ``L = (1/W) Σ_r L_r`` (for VICReg every
``L_r`` shares the same global variance/covariance and differs only in the local invariance; for
NT-Xent ``L_r`` averages over rank ``r``'s anchors). The backward of
``torch.distributed.nn.functional.all_gather`` *sums* over ranks the gradients held for the
gathered tensor and hands rank ``r`` its own slice, ``Σ_r' ∂L_r'/∂z_r = W · ∂L/∂z_r``;
DistributedDataParallel then *averages* parameter gradients over the ``W`` ranks:
``(1/W) Σ_r W · ∂L/∂z_r · ∂z_r/∂θ = ∂L/∂θ`` — the single-process gradient on the concatenated
batch. This needs every rank to contribute the same number of rows (``L`` is then the mean over
the global batch), hence the shape check below.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """True when torch.distributed is available, initialised, and spans more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of processes in the default group; 1 when not distributed."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank in the default group; 0 when not distributed."""
    return dist.get_rank() if is_distributed() else 0


def _check_equal_shapes(x: Tensor) -> None:
    # all_gather needs one shape on every rank; unequal batches (e.g. a ragged last batch without
    # drop_last) would otherwise hang or fail deep inside the backend with no hint of the cause.
    # The price is one tiny extra collective and a host sync per gather.
    shape = torch.tensor(x.shape, dtype=torch.long, device=x.device)
    shapes = [torch.empty_like(shape) for _ in range(dist.get_world_size())]
    dist.all_gather(shapes, shape)
    shapes = [tuple(s.tolist()) for s in shapes]
    assert all(s == shapes[0] for s in shapes), (
        f"gather across ranks needs the same tensor shape on every rank, got {shapes} "
        "(rank order); use equal per-rank batch sizes, e.g. drop_last=True in the DataLoader"
    )


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from every rank along dim 0, keeping gradients to every rank's slice.

    Args:
        x: ``(N, …)`` local tensor; the same shape on every rank.

    Returns:
        ``(world_size · N, …)``, rank 0's rows first; ``x`` itself in one process.
    """
    if not is_distributed():
        return x
    _check_equal_shapes(x)
    with warnings.catch_warnings():
        # Deprecated in favour of a private module (torch.distributed._functional_collectives);
        # this public function keeps the summing backward we rely on, so we keep it and stay quiet.
        # Imported here because torch builds without distributed support lack the module.
        warnings.filterwarnings("ignore", message=r".*all_gather is deprecated", category=FutureWarning)
        from torch.distributed.nn.functional import all_gather

        parts = all_gather(x)
    return torch.cat(parts, dim=0)


@torch.no_grad()
def gather_no_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from every rank along dim 0 without autograd, for metrics and logging.

    Args:
        x: ``(N, …)`` local tensor; the same shape on every rank.

    Returns:
        ``(world_size · N, …)`` detached, rank 0's rows first; ``x.detach()`` in one process.
    """
    if not is_distributed():
        return x.detach()
    _check_equal_shapes(x)
    x = x.detach().contiguous()
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x)
    return torch.cat(parts, dim=0)


def at_least_float32(*tensors: Tensor) -> tuple[Tensor, ...]:
    """Upcast half/bfloat16 tensors to float32 for loss arithmetic; float64 stays float64."""
    return tuple(t.to(torch.promote_types(t.dtype, torch.float32)) for t in tensors)
