"""``ssl-toolkit bench atariari``: pretrain a method on each game's own frames, then probe it with
AtariARI (Anand et al., "Unsupervised State Representation Learning in Atari", NeurIPS 2019).

Per game, as the paper: a seeded random agent (never NOOP) plays ``pretrain_frames`` frames, written
as shards; the method pretrains the paper's encoder (``atariari_cnn``, full 210×160 grayscale frames,
the ``atari`` augmentation preset: 4-px random shift and mild intensity jitter, consecutive frames
t, t+k as the two views) for ``steps`` steps; then the probe plays on in the *same* random-agent
stream and uses the ``frames`` frames after the pre-training ones, so it never probes a frame the
encoder trained on (test frames identical to a pre-training frame are dropped too). MAE needs a ViT:
it pretrains a ViT-Tiny with 10×10 patches on the full frame instead.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from ssl_toolkit.data.atari import collect_frames, collect_summary
from ssl_toolkit.eval.atariari import (FRAME_SHAPE, PAPER_COLUMNS, collect_probe_frames, game_variables,
                                       run_atariari_probe)

# Per method: the LightningModule and its arguments for 1×210×160 frames. Projector widths are the
# demo's (a 256-feature encoder does not need the papers' 8192-wide heads on a CPU budget).
_METHODS: dict[str, tuple[str, dict]] = {
    "vicreg": ("VICReg", {"backbone": "atariari_cnn", "projector": "1024-1024-1024", "base_lr": 0.2}),
    "simsiam": ("SimSiam", {"backbone": "atariari_cnn", "proj_dim": 1024, "pred_dim": 256, "base_lr": 0.05,
                            "optimizer": "sgd"}),
    "simclr": ("SimCLR", {"backbone": "atariari_cnn", "projector": "1024-128", "base_lr": 0.3}),
    "mae": ("MAE", {"backbone": "vit_tiny_patch16_224", "decoder_dim": 128, "decoder_depth": 2,
                    "decoder_heads": 4, "optimizer": "adamw", "base_lr": 1.5e-4, "weight_decay": 0.05}),
}


def _backbone_kwargs(method: str) -> dict:
    if method == "mae":
        return {"img_size": list(FRAME_SHAPE), "patch_size": 10}  # 21 × 16 patches
    return {"img_size": list(FRAME_SHAPE)}


def pretrain_on_frames(method: str, frames_dir: Path, out_dir: Path, steps: int, batch_size: int, seed: int):
    """Pretrain ``method`` on the shards in ``frames_dir``; returns the trained LightningModule."""
    import ssl_toolkit.methods as methods
    from ssl_toolkit.data.datamodule import SSLDataModule

    if method not in _METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(_METHODS)}")
    cls_name, kwargs = _METHODS[method]
    pl.seed_everything(seed, workers=True)
    data = SSLDataModule(
        train_path=str(frames_dir), batch_size=batch_size, num_workers=1, preset="atari",
        crop_size=list(FRAME_SHAPE), image_mode="L", seed=seed, temporal_offset=[1, 4],
    )
    model = getattr(methods, cls_name)(in_chans=1, backbone_kwargs=_backbone_kwargs(method),
                                       warmup_fraction=0.05, monitor_every_n_steps=50, **kwargs)
    trainer = pl.Trainer(
        max_steps=steps, precision="bf16-mixed", accelerator="auto", devices=1, logger=False,
        enable_checkpointing=False, default_root_dir=str(out_dir), enable_model_summary=False,
        enable_progress_bar=False,
    )
    trainer.fit(model, data)
    return model


def run_atariari_bench(
    method: str = "vicreg", games=("pong",), seed: int = 0, frames: int = 50_000,
    pretrain_frames: int = 100_000, steps: int = 1000, batch_size: int = 64, annotations: str = "paper",
    out_dir: str = "runs/bench_atariari", with_random: bool = True,
) -> dict[str, Any]:
    """Pretrain + probe per game; returns ``{"games": {game: {...}}, "mean": {...}, settings}``."""
    for game in games:  # fail on a bad name before hours of work
        game_variables(game, annotations)
    if method not in _METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(_METHODS)}")
    t_start = time.perf_counter()
    results: dict[str, Any] = {}
    for game in games:
        key, _ = game_variables(game, annotations)
        t0 = time.perf_counter()
        game_dir = Path(out_dir) / key
        frames_dir = game_dir / f"frames_seed{seed}_{pretrain_frames}"
        if (frames_dir / "index.json").exists() and collect_summary(frames_dir)["frames"] == pretrain_frames:
            print(f"[bench atariari] {key}: reusing {frames_dir}", file=sys.stderr)
        else:
            collect_frames(game, pretrain_frames, frames_dir, seed=seed, noop=False, progress=False)
        t_collect = time.perf_counter() - t0
        print(f"[bench atariari] {key}: pretraining {method} for {steps} steps", file=sys.stderr)
        t = time.perf_counter()
        model = pretrain_on_frames(method, frames_dir, game_dir, steps, batch_size, seed)
        t_train = time.perf_counter() - t
        encoder = model.backbone.float()
        encoder.encoder_meta = {"backbone": model.hparams.backbone, "in_chans": 1, "input_size": list(FRAME_SHAPE),
                                "mean": [0.0], "std": [1.0], "method": method, "steps": steps}
        # the probe plays on in the same random-agent stream, after the pre-training frames
        data = collect_probe_frames(game, frames, seed=seed, skip=pretrain_frames)
        row = {"pretrain_seconds": round(t_train, 1), "pretrain_collect_seconds": round(t_collect, 1)}
        row[method] = run_atariari_probe(encoder, game, seed=seed, annotations=annotations, data=data,
                                         pretrain_frames=pretrain_frames)
        if with_random:
            row["random-cnn"] = run_atariari_probe("random:atariari_cnn", game, seed=seed, annotations=annotations,
                                                   data=data, pretrain_frames=pretrain_frames)
        row["seconds"] = round(time.perf_counter() - t0, 1)
        results[key] = row
    ours = [method] + (["random-cnn"] if with_random else [])
    mean = {name: sum(r[name]["score_f1"] for r in results.values()) / len(results) for name in ours}
    paper = {c: sum(r[method]["published"]["f1"].get(c, float("nan")) for r in results.values()) / len(results)
             for c in PAPER_COLUMNS}
    return {
        "benchmark": "AtariARI bench", "method": method, "seed": seed, "frames": frames,
        "pretrain_frames": pretrain_frames, "steps": steps, "batch_size": batch_size, "annotations": annotations,
        "encoder": "mae: vit_tiny 10x10 patches" if method == "mae" else "atariari_cnn (1x210x160, 256 features)",
        "games": {k: {"score_f1": {n: v[n]["score_f1"] for n in ours}, "categories_f1": {n: v[n]["categories_f1"] for n in ours},
                      "published_f1": v[method]["published"]["f1"], "pretrain_seconds": v["pretrain_seconds"],
                      "seconds": v["seconds"], "results": {n: v[n] for n in ours}} for k, v in results.items()},
        "mean_f1": mean, "published_mean_f1_same_games": paper,
        "seconds_total": round(time.perf_counter() - t_start, 1), "threads": torch.get_num_threads(),
    }


def format_bench_table(result: dict[str, Any]) -> str:
    """Game score F1 per game: ours beside the paper's columns."""
    games = result["games"]
    ours = list(result["mean_f1"])
    head = f"{'game':16s}" + "".join(f"{n:>12s}" for n in ours) + "".join(f"{'paper ' + c:>18s}" for c in PAPER_COLUMNS[1:])
    lines = [f"AtariARI bench · {result['method']} · {result['steps']} steps on {result['pretrain_frames']} "
             f"pre-training frames · probe {result['frames']} frames · seed {result['seed']} · "
             f"{result['annotations']} annotations · F1 (game score)", head]
    for key, g in games.items():
        lines.append(f"{key:16s}" + "".join(f"{g['score_f1'][n]:12.3f}" for n in ours)
                     + "".join(f"{g['published_f1'].get(c, float('nan')):18.2f}" for c in PAPER_COLUMNS[1:]))
    lines.append(f"{'mean':16s}" + "".join(f"{result['mean_f1'][n]:12.3f}" for n in ours)
                 + "".join(f"{result['published_mean_f1_same_games'][c]:18.2f}" for c in PAPER_COLUMNS[1:]))
    lines.append(f"total {result['seconds_total']:.0f} s")
    return "\n".join(lines)
