"""The worked example of docs/adding_a_method.md: examples/byol.py against the BYOL paper's formulas,
a fast_dev_run, and its config through `ssl-toolkit pretrain`."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

from byol import BYOL, byol_loss, ema_momentum, ema_update  # noqa: E402

from ssl_toolkit.data.datamodule import SSLDataModule  # noqa: E402


def paper_loss(p_a, p_b, z_a, z_b):
    """Grill et al. 2020, eq. 2 and the symmetrised total: L = ‖q̄ − z̄'‖² with q̄ = q/‖q‖, z̄' = z'/‖z'‖,
    plus the same with the views swapped, each a mean over the batch."""
    def one(q, z):
        return ((q / q.norm(dim=1, keepdim=True) - z / z.norm(dim=1, keepdim=True)) ** 2).sum(dim=1).mean()
    return one(p_a, z_b) + one(p_b, z_a)


def test_loss_matches_the_paper_formula():
    g = torch.Generator().manual_seed(0)
    p_a, p_b, z_a, z_b = (torch.randn(16, 32, generator=g, dtype=torch.float64) for _ in range(4))
    torch.testing.assert_close(byol_loss(p_a, p_b, z_a, z_b), paper_loss(p_a, p_b, z_a, z_b), rtol=1e-10, atol=1e-10)
    # bounds: 0 when predictions align with the other view's target, 8 when opposite
    assert byol_loss(z_b, z_a, z_a, z_b).item() == pytest.approx(0.0, abs=1e-9)
    assert byol_loss(-z_b, -z_a, z_a, z_b).item() == pytest.approx(8.0, abs=1e-9)


def test_no_gradient_reaches_the_target():
    g = torch.Generator().manual_seed(1)
    p_a, p_b, z_a, z_b = (torch.randn(8, 16, generator=g, requires_grad=True) for _ in range(4))
    byol_loss(p_a, p_b, z_a, z_b).backward()
    assert p_a.grad is not None and p_a.grad.abs().sum() > 0
    assert z_a.grad is None and z_b.grad is None


def test_ema_schedule_and_update():
    assert ema_momentum(0, 100, 0.996) == pytest.approx(0.996)
    assert ema_momentum(100, 100, 0.996) == pytest.approx(1.0)
    assert ema_momentum(50, 100, 0.996) == pytest.approx(1 - 0.004 * 0.5)
    torch.manual_seed(0)
    online, target = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    before = target.weight.detach().clone()
    ema_update(target, online, 0.9)
    torch.testing.assert_close(target.weight, 0.9 * before + 0.1 * online.weight.detach(), rtol=1e-6, atol=1e-6)


def test_fast_dev_run_moves_the_target_by_ema_only(jpeg_folder):
    pl.seed_everything(0)
    data = SSLDataModule(train_path=str(jpeg_folder), batch_size=8, num_workers=0, preset="vicreg",
                         crop_size=32, pin_memory=False)
    model = BYOL(backbone="resnet18", backbone_kwargs={"small_images": True}, proj_hidden=64, proj_dim=32,
                 num_classes=data.num_classes, base_momentum=0.9)
    target_before = [p.detach().clone() for p in model.target_backbone.parameters()]
    online_before = [p.detach().clone() for p in model.backbone.parameters()]
    # the target is not trained by the optimiser
    optimised = {id(p) for g in model.param_groups() for p in g["params"]}
    assert not optimised & {id(p) for p in model.target_backbone.parameters()}
    trainer = pl.Trainer(fast_dev_run=2, accelerator="cpu", devices=1, enable_progress_bar=False,
                         enable_model_summary=False, logger=False)
    trainer.fit(model, data)
    assert trainer.global_step == 2
    online_after = [p.detach() for p in model.backbone.parameters()]
    target_after = [p.detach() for p in model.target_backbone.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(online_before, online_after))
    moved = [not torch.equal(a, b) for a, b in zip(target_before, target_after)]
    assert any(moved)
    # it moved towards the online weights, and not all the way
    assert all(torch.isfinite(t).all() for t in target_after)
    assert any(not torch.equal(t, o) for t, o in zip(target_after, online_after))
    assert 0.9 <= model.momentum <= 1.0 and math.isfinite(model.momentum)


def test_example_config_through_the_cli(jpeg_folder, tmp_path):
    exe = Path(sys.executable).parent / "ssl-toolkit"
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(ROOT / "examples")}
    proc = subprocess.run(
        [str(exe), "pretrain", "--config", "examples/byol_cifar.yaml", "--data.train_path", str(jpeg_folder),
         "--runs_dir", str(tmp_path), "--trainer.max_steps", "2", "--data.batch_size", "8", "--data.num_workers", "0",
         "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.precision", "32",
         "--trainer.enable_progress_bar", "false", "--model.init_args.proj_hidden", "64",
         "--model.init_args.proj_dim", "32", "--model.init_args.channels_last", "false"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = torch.load(tmp_path / "byol_cifar" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 2
    assert state["hyper_parameters"]["_class_path"] == "byol.BYOL"
    assert any(k.startswith("target_backbone.") for k in state["state_dict"])
