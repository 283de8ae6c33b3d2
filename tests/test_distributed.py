"""The losses are exact under DDP: two real CPU processes (gloo) against one process on the whole batch.

One `torch.multiprocessing.spawn` of two ranks runs every scenario once (module-scoped fixture);
each rank gets half of a fixed seeded global batch, maps it through the same seed-initialised
`nn.Linear` wrapped in DistributedDataParallel, computes the loss with the global-batch gather,
and back-propagates. The tests then compare with a single process on the concatenated batch:

- the mean over ranks of the per-rank loss equals the single-process loss;
- the DDP-averaged parameter gradients equal the single-process gradients;
- with ``gather=False`` VICReg's loss and gradients do *not* match — so the comparison can fail.

Everything is float64 so the only differences are summation order: rtol 1e-9, atol 1e-12.
"""

from __future__ import annotations

import datetime
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from ssl_toolkit.distributed import gather_no_grad, gather_with_grad, is_distributed, rank, world_size
from ssl_toolkit.losses import nt_xent_loss, vicreg_loss

WORLD = 2
GLOBAL_BATCH, IN_DIM, EMBED_DIM = 16, 12, 16
TOL = dict(rtol=1e-9, atol=1e-12)

LOSSES = {
    "vicreg": lambda z_a, z_b: vicreg_loss(z_a, z_b),
    "vicreg_no_gather": lambda z_a, z_b: vicreg_loss(z_a, z_b, gather=False),
    "simclr": lambda z_a, z_b: nt_xent_loss(z_a, z_b, temperature=0.1),
}


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(IN_DIM, EMBED_DIM).double()


def global_views() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    x_a = torch.randn(GLOBAL_BATCH, IN_DIM, generator=g, dtype=torch.float64)
    x_b = x_a + 0.3 * torch.randn(GLOBAL_BATCH, IN_DIM, generator=g, dtype=torch.float64)
    return x_a, x_b


def loss_and_grads(model: nn.Module, x_a, x_b, loss_fn):
    # Both views in one forward call, as a LightningModule's training_step does through DDP.
    z_a, z_b = model(torch.cat([x_a, x_b])).chunk(2)
    loss = loss_fn(z_a, z_b)
    loss.backward()
    params = getattr(model, "module", model).named_parameters()  # unwrap DDP for the names
    return loss.detach(), {name: p.grad.detach().clone() for name, p in params}


def gather_weights(r: int) -> torch.Tensor:
    """A different upstream gradient on every rank, for checking gather_with_grad's backward."""
    return torch.randn(WORLD * 3, 2, generator=torch.Generator().manual_seed(100 + r), dtype=torch.float64)


def _worker(r: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=r, world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    try:
        results = {"rank": rank(), "world_size": world_size(), "is_distributed": is_distributed()}

        # gather_with_grad: rank order forward, summed gradients backward.
        x = torch.full((3, 2), float(r + 1), dtype=torch.float64, requires_grad=True)
        y = gather_with_grad(x)
        (y * gather_weights(r)).sum().backward()
        results["gathered"] = y.detach()
        results["gather_grad"] = x.grad.clone()
        g = gather_no_grad(x * 2)
        results["gathered_no_grad"], results["no_grad_requires_grad"] = g, g.requires_grad

        # Unequal shapes fail with a clear message on every rank instead of hanging.
        try:
            gather_with_grad(torch.zeros(3 + r, 2))
            results["unequal_error"] = None
        except AssertionError as err:
            results["unequal_error"] = str(err)

        x_a, x_b = global_views()
        local = slice(r * GLOBAL_BATCH // WORLD, (r + 1) * GLOBAL_BATCH // WORLD)
        for name, loss_fn in LOSSES.items():
            model = nn.parallel.DistributedDataParallel(make_model())
            # backward inside loss_and_grads is where DDP all-reduces (averages) the gradients
            results[name] = loss_and_grads(model, x_a[local], x_b[local], loss_fn)
        torch.save(results, os.path.join(out_dir, f"rank{r}.pt"))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(free_port(), str(out_dir)), nprocs=WORLD, join=True)
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(WORLD)]


@pytest.fixture(scope="module")
def single():
    """Single process, whole global batch: the numbers DDP must reproduce."""
    x_a, x_b = global_views()
    return {name: loss_and_grads(make_model(), x_a, x_b, fn) for name, fn in LOSSES.items()}


def test_rank_helpers(ranks):
    assert [res["rank"] for res in ranks] == [0, 1]
    assert all(res["world_size"] == WORLD and res["is_distributed"] for res in ranks)
    assert not is_distributed() and world_size() == 1 and rank() == 0  # this (pytest) process


def test_gather_with_grad_forward_and_backward(ranks):
    expected = torch.cat([torch.full((3, 2), float(r + 1), dtype=torch.float64) for r in range(WORLD)])
    summed = sum(gather_weights(r) for r in range(WORLD))  # d/dx of Σ_ranks (y * w_rank).sum()
    for r, res in enumerate(ranks):
        assert torch.equal(res["gathered"], expected)
        assert torch.allclose(res["gather_grad"], summed[r * 3 : (r + 1) * 3], **TOL)
        assert torch.equal(res["gathered_no_grad"], 2 * expected) and not res["no_grad_requires_grad"]


def test_gather_rejects_unequal_batches(ranks):
    for res in ranks:
        assert res["unequal_error"] is not None and "same tensor shape" in res["unequal_error"]


def test_gather_is_identity_in_one_process():
    x = torch.randn(4, 3, requires_grad=True)
    assert gather_with_grad(x) is x
    assert torch.equal(gather_no_grad(x), x) and not gather_no_grad(x).requires_grad


@pytest.mark.parametrize("name", ["vicreg", "simclr"])
def test_mean_rank_loss_equals_single_process_loss(ranks, single, name):
    mean_loss = sum(res[name][0] for res in ranks) / WORLD
    assert torch.allclose(mean_loss, single[name][0], **TOL), (mean_loss.item(), single[name][0].item())


@pytest.mark.parametrize("name", ["vicreg", "simclr"])
def test_ddp_gradients_equal_single_process_gradients(ranks, single, name):
    for res in ranks:
        for param, grad in single[name][1].items():
            assert torch.allclose(res[name][1][param], grad, **TOL), (name, param)


def test_without_gather_vicreg_is_not_the_global_loss(ranks, single):
    # Same local invariance, but variance/covariance from 8 samples instead of 16: a different loss.
    mean_loss = sum(res["vicreg_no_gather"][0] for res in ranks) / WORLD
    assert not torch.allclose(mean_loss, single["vicreg"][0], rtol=1e-3)
    local_grad, global_grad = ranks[0]["vicreg_no_gather"][1]["weight"], single["vicreg"][1]["weight"]
    assert not torch.allclose(local_grad, global_grad, rtol=1e-3)
