"""Training-step throughput per method, in float32 and in bf16 autocast + channels_last.

For each configuration one full optimiser step (forward of every view, loss, backward, SGD step)
is timed after a few untimed warm-up steps. FLOPs per step are counted once with
``torch.utils.flop_counter.FlopCounterMode``; the matrix-multiply peak of this machine is measured
in the same run (square matmuls in float32 and bfloat16), so the reported utilisation compares like
with like. Inputs are random tensors already on the device: this measures the model, not the data.
"""
from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field

import torch
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class StepConfig:
    """One benchmarked configuration: ``method`` on ``backbone`` at ``size`` with ``in_chans``."""

    name: str
    method: str
    backbone: str
    size: tuple[int, int]
    in_chans: int = 3
    batch_size: int = 32
    backbone_kwargs: dict = field(default_factory=dict)
    method_kwargs: dict = field(default_factory=dict)


# ResNet-18 at 64 px uses the toolkit's small-image stem (3x3 conv, no max-pool), the setting for
# 32-64 px inputs; one row keeps the ImageNet stem for comparison: its layer4 runs on 2x2 maps, where
# oneDNN's bf16 weight-gradient kernels are slow, so bf16 gains little there.
_R18_SMALL = {"backbone_kwargs": {"small_images": True}, "batch_size": 16}
CONFIGS: tuple[StepConfig, ...] = (
    StepConfig("vicreg_resnet18_64px", "vicreg", "resnet18", (64, 64), **_R18_SMALL,
               method_kwargs={"projector": "2048-2048-2048"}),
    StepConfig("simsiam_resnet18_64px", "simsiam", "resnet18", (64, 64), **_R18_SMALL),
    StepConfig("simclr_resnet18_64px", "simclr", "resnet18", (64, 64), **_R18_SMALL),
    StepConfig("vicreg_resnet18_64px_imagenet_stem", "vicreg", "resnet18", (64, 64),
               method_kwargs={"projector": "2048-2048-2048"}),
    StepConfig("vicreg_nature_cnn_84px", "vicreg", "nature_cnn", (84, 84), in_chans=1,
               method_kwargs={"projector": "1024-1024-1024"}),
    StepConfig("simsiam_nature_cnn_84px", "simsiam", "nature_cnn", (84, 84), in_chans=1,
               method_kwargs={"proj_dim": 1024, "pred_dim": 256}),
    StepConfig("simclr_nature_cnn_84px", "simclr", "nature_cnn", (84, 84), in_chans=1),
    StepConfig("mae_vit_tiny_64px", "mae", "vit_tiny_patch16_224", (64, 64),
               backbone_kwargs={"img_size": 64, "patch_size": 8},
               method_kwargs={"decoder_dim": 256, "decoder_depth": 4, "decoder_heads": 8}),
)


def matmul_peak_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> float:
    """Best-of-``repeats`` GFLOP/s of an ``n × n`` matmul in ``dtype`` on the CPU."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def _build(cfg: StepConfig, channels_last: bool):
    from ssl_toolkit.methods import METHODS

    model = METHODS[cfg.method](
        backbone=cfg.backbone, backbone_kwargs=cfg.backbone_kwargs, in_chans=cfg.in_chans,
        monitor_every_n_steps=0, channels_last=channels_last, **cfg.method_kwargs,
    )
    model.train()
    num_views = 1 if cfg.method == "mae" else 2
    views = [torch.randn(cfg.batch_size, cfg.in_chans, *cfg.size) for _ in range(num_views)]
    if channels_last:
        views = [v.contiguous(memory_format=torch.channels_last) for v in views]
    batch = {"views": views, "label": torch.full((cfg.batch_size,), -1)}
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    return model, batch, opt


def _step(model, batch, opt, bf16: bool) -> None:
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model.training_step(batch, 0)
    loss.backward()
    opt.step()


def time_config(cfg: StepConfig, bf16: bool, channels_last: bool, steps: int, warmup: int) -> dict:
    """Images/s and FLOP utilisation for one configuration and one precision setting."""
    torch.manual_seed(0)
    model, batch, opt = _build(cfg, channels_last)
    for _ in range(warmup):
        _step(model, batch, opt, bf16)
    with FlopCounterMode(display=False) as counter:
        _step(model, batch, opt, bf16)
    flops = counter.get_total_flops()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        _step(model, batch, opt, bf16)
        times.append(time.perf_counter() - t0)
    times.sort()
    median = times[len(times) // 2]
    views = len(batch["views"])
    return {
        "step_s_median": median,
        "step_s_min": times[0],
        "samples_per_s": cfg.batch_size / median,
        "images_per_s": cfg.batch_size * views / median,
        "gflop_per_step": flops / 1e9,
        "achieved_gflops": flops / median / 1e9,
    }


def run_step_bench(steps: int = 10, warmup: int = 3, methods: list[str] | None = None) -> dict:
    """Run every configuration (or those named in ``methods``) in both precision settings."""
    import warnings

    warnings.filterwarnings("ignore", message=".*self.log.*")
    configs = [c for c in CONFIGS if not methods or c.name in methods or c.method in methods]
    if not configs:
        raise ValueError(f"no benchmark configuration matches {methods}; have {[c.name for c in CONFIGS]}")
    peak = {"float32": matmul_peak_gflops(torch.float32), "bfloat16": matmul_peak_gflops(torch.bfloat16)}
    rows = []
    for cfg in configs:
        fp32 = time_config(cfg, bf16=False, channels_last=False, steps=steps, warmup=warmup)
        bf16 = time_config(cfg, bf16=True, channels_last=True, steps=steps, warmup=warmup)
        fp32["utilisation"] = fp32["achieved_gflops"] / peak["float32"]
        bf16["utilisation"] = bf16["achieved_gflops"] / peak["bfloat16"]
        row = {
            "name": cfg.name, "method": cfg.method, "backbone": cfg.backbone,
            "input": [cfg.in_chans, *cfg.size], "batch_size": cfg.batch_size,
            "float32": fp32, "bf16_channels_last": bf16,
            "speedup_bf16_channels_last": bf16["images_per_s"] / fp32["images_per_s"],
        }
        rows.append(row)
        print(f"{cfg.name:28s} fp32 {fp32['images_per_s']:7.1f} img/s | bf16+CL {bf16['images_per_s']:7.1f} img/s"
              f" | x{row['speedup_bf16_channels_last']:.2f} | {fp32['gflop_per_step']:.1f} GFLOP/step", flush=True)
    return {
        "benchmark": "step",
        "machine": {"processor": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__},
        "matmul_peak_gflops": peak,
        "steps": steps, "warmup": warmup,
        "images_per_s_counts": "backbone images per second (batch_size x views / step time)",
        "results": rows,
    }
