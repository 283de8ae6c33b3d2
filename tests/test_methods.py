"""Every method trains for real through Lightning on real JPEGs; MAE's geometry; the optimiser recipe."""
from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch

from ssl_toolkit.data.datamodule import SSLDataModule
from ssl_toolkit.methods import MAE, SimCLR, SimSiam, VICReg
from ssl_toolkit.methods.base import mlp
from ssl_toolkit.methods.mae import patchify, random_masking, unpatchify

SMALL_CNN = {"backbone": "resnet18", "backbone_kwargs": {"small_images": True}}
TINY_VIT = {"backbone": "vit_tiny_patch16_224", "backbone_kwargs": {"img_size": 32, "patch_size": 8, "depth": 2}}

METHOD_CASES = {
    "vicreg": (VICReg, {**SMALL_CNN, "projector": "64-64"}, "vicreg"),
    "simsiam": (SimSiam, {**SMALL_CNN, "proj_dim": 64, "pred_dim": 16}, "simsiam"),
    "simclr": (SimCLR, {**SMALL_CNN, "projector": "64-32"}, "simclr"),
    "mae": (MAE, {**TINY_VIT, "decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2}, "mae"),
}


@pytest.mark.parametrize("name", list(METHOD_CASES))
def test_fast_dev_run_every_method(name, jpeg_folder, tmp_path):
    cls, kwargs, preset = METHOD_CASES[name]
    pl.seed_everything(0)
    data = SSLDataModule(train_path=str(jpeg_folder), batch_size=8, num_workers=0, preset=preset, crop_size=32)
    model = cls(in_chans=data.in_chans, num_classes=data.num_classes, monitor_every_n_steps=1, **kwargs)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    trainer = pl.Trainer(fast_dev_run=2, accelerator="cpu", default_root_dir=tmp_path, enable_progress_bar=False)
    trainer.fit(model, data)
    logged = trainer.callback_metrics
    assert math.isfinite(float(logged["train/loss"]))
    assert "online_probe/top1" in logged
    assert "collapse/effective_rank" in logged
    changed = any(not torch.equal(before[k], v) for k, v in model.backbone.state_dict().items())
    assert changed, "two optimiser steps left the backbone unchanged"


def test_vicreg_logs_its_three_terms(jpeg_folder, tmp_path):
    data = SSLDataModule(train_path=str(jpeg_folder), batch_size=8, num_workers=0, preset="vicreg", crop_size=32)
    model = VICReg(in_chans=3, projector="32-32", **SMALL_CNN)
    trainer = pl.Trainer(fast_dev_run=1, accelerator="cpu", default_root_dir=tmp_path, enable_progress_bar=False)
    trainer.fit(model, data)
    for term in ("invariance", "variance", "covariance"):
        assert f"train/{term}" in trainer.callback_metrics


@pytest.mark.parametrize("shape,p", [((2, 4, 84, 84), 12), ((2, 1, 210, 160), 10), ((2, 3, 32, 48), 8)])
def test_patchify_roundtrip_any_channels_non_square(shape, p):
    imgs = torch.randn(shape)
    patches = patchify(imgs, p)
    b, c, h, w = shape
    assert patches.shape == (b, (h // p) * (w // p), p * p * c)
    assert torch.equal(unpatchify(patches, p, c, h, w), imgs)
    # patch (row 1, col 0) holds exactly that image block, channel-last within the patch
    row_stride = w // p
    block = imgs[0, :, p:2 * p, 0:p].permute(1, 2, 0).reshape(-1)
    assert torch.equal(patches[0, row_stride], block)


def test_patchify_rejects_indivisible_sides():
    with pytest.raises(ValueError, match="does not divide"):
        patchify(torch.zeros(1, 1, 210, 160), 16)


def test_random_masking_keeps_quarter_and_restores_order():
    torch.manual_seed(0)
    x = torch.arange(2 * 16, dtype=torch.float32).reshape(2, 16, 1).repeat(1, 1, 3)
    visible, mask, ids_restore = random_masking(x, 0.75)
    assert visible.shape == (2, 4, 3)
    assert mask.sum(dim=1).tolist() == [12.0, 12.0]
    for i in range(2):
        kept = x[i, mask[i] == 0, 0].sort().values
        assert torch.equal(visible[i, :, 0].sort().values, kept)
    # ids_restore inverts the shuffle: unshuffling (visible + placeholders) puts tokens back
    placeholders = torch.full((2, 12, 3), -1.0)
    restored = torch.gather(torch.cat([visible, placeholders], 1), 1, ids_restore[..., None].expand(-1, -1, 3))
    assert torch.equal(restored[mask == 0], x[mask == 0])


def test_mae_on_single_channel_non_square_frames():
    model = MAE(
        backbone="vit_tiny_patch16_224", in_chans=1,
        backbone_kwargs={"img_size": (210, 160), "patch_size": 10, "depth": 1},
        decoder_dim=32, decoder_depth=1, decoder_heads=2,
    )
    imgs = torch.rand(2, 1, 210, 160)
    latent, mask, ids_restore = model.forward_encoder(imgs, 0.75)
    n_patches = 21 * 16
    assert latent.shape == (2, 1 + n_patches // 4, model.backbone.embed_dim)
    pred = model.forward_decoder(latent, ids_restore)
    assert pred.shape == (2, n_patches, 100)
    assert not model.backbone.pos_embed.requires_grad  # MAE's fixed sin-cos embedding


def test_mlp_builder_widths_and_bn():
    head = mlp([16, 32, 8], last_bn=True, last_bn_affine=False)
    assert head(torch.randn(4, 16)).shape == (4, 8)
    bns = [m for m in head if isinstance(m, torch.nn.BatchNorm1d)]
    assert len(bns) == 2 and bns[-1].affine is False
    assert head[0].bias is None  # followed by BN


class RecordLR(pl.Callback):
    """Records every param group's learning rate before each optimiser step."""

    def __init__(self):
        self.lrs: list[list[float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.append([g["lr"] for g in trainer.optimizers[0].param_groups])


def _fit(model, data, tmp_path, max_steps):
    rec = RecordLR()
    trainer = pl.Trainer(max_steps=max_steps, accelerator="cpu", default_root_dir=tmp_path, callbacks=[rec],
                         enable_progress_bar=False, logger=False, enable_checkpointing=False)
    trainer.fit(model, data)
    return trainer.optimizers[0], rec.lrs


def test_optimizer_groups_lr_scaling_and_decay_exclusion(jpeg_folder, tmp_path):
    data = SSLDataModule(train_path=str(jpeg_folder), batch_size=8, num_workers=0, preset="vicreg", crop_size=32)
    model = VICReg(in_chans=3, projector="32-32", base_lr=0.2, weight_decay=1e-6, warmup_fraction=0.5,
                   **SMALL_CNN)
    opt, lrs = _fit(model, data, tmp_path, max_steps=6)
    from timm.optim import Lars
    assert isinstance(opt, Lars)
    decayed = [g for g in opt.param_groups if g["weight_decay"] > 0]
    undecayed = [g for g in opt.param_groups if g["weight_decay"] == 0]
    assert decayed and undecayed
    assert all(p.ndim > 1 for g in decayed for p in g["params"])
    assert all(p.ndim <= 1 for g in undecayed for p in g["params"])
    peak = 0.2 * 8 / 256  # base lr x global batch / 256
    first_group = [step[0] for step in lrs]
    # 3 warm-up steps (50% of 6) rising linearly to the peak, then cosine decay
    assert first_group[:3] == pytest.approx([peak / 3, 2 * peak / 3, peak])
    assert first_group[3] == pytest.approx(peak)
    assert first_group[3] > first_group[4] > first_group[5] > 0


def test_simsiam_predictor_keeps_fixed_lr(jpeg_folder, tmp_path):
    data = SSLDataModule(train_path=str(jpeg_folder), batch_size=8, num_workers=0, preset="simsiam", crop_size=32)
    model = SimSiam(in_chans=3, proj_dim=32, pred_dim=8, **SMALL_CNN)
    opt, lrs = _fit(model, data, tmp_path, max_steps=5)
    assert isinstance(opt, torch.optim.SGD)
    pred_ids = {id(p) for p in model.predictor.parameters()}
    i_pred = next(i for i, g in enumerate(opt.param_groups) if id(g["params"][0]) in pred_ids)
    lr0 = 0.05 * 8 / 256
    assert all(step[i_pred] == pytest.approx(lr0) for step in lrs)
    assert lrs[-1][0] < lr0  # the rest of the model follows the cosine schedule
