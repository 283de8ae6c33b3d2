"""``ssl-toolkit demo``: the main job on the embedded default.

Collect a few thousand frames of an Atari game from the ROMs that ship with ale-py, pretrain VICReg
on the DQN Nature CNN for a few minutes on the CPU, save the checkpoint and report how the loss went.
Later stages (probing, RL hand-off) extend this file.
"""
from __future__ import annotations

import csv
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger

from ssl_toolkit.data.atari import collect_frames, collect_summary
from ssl_toolkit.data.datamodule import SSLDataModule
from ssl_toolkit.methods import VICReg


def read_metric(metrics_csv: Path, key: str) -> list[tuple[int, float]]:
    """``(step, value)`` pairs of one metric from a Lightning CSVLogger file."""
    rows = []
    with open(metrics_csv) as f:
        for row in csv.DictReader(f):
            if row.get(key):
                rows.append((int(row["step"]), float(row[key])))
    return rows


def run_demo(
    game: str = "pong", frames: int = 4000, max_steps: int = 300, out_dir: str = "runs/demo",
    seed: int = 0, batch_size: int = 64, num_workers: int = 1,
) -> dict:
    """Collect → pretrain → report. Returns a summary dict (also printed)."""
    t_start = time.perf_counter()
    out = Path(out_dir)
    frames_dir = out / "frames"
    if (frames_dir / "index.json").exists():
        print(f"[demo] reusing {frames_dir}")
        collect = collect_summary(frames_dir)
    else:
        print(f"[demo] collecting {frames} frames of {game} (seeded random policy) into {frames_dir}")
        collect = collect_frames(game, frames, frames_dir, seed=seed)
    t_collect = time.perf_counter() - t_start

    pl.seed_everything(seed, workers=True)
    data = SSLDataModule(
        train_path=str(frames_dir), batch_size=batch_size, num_workers=num_workers,
        preset="atari", crop_size=[84, 84], image_mode="L", seed=seed,
    )
    model = VICReg(
        backbone="nature_cnn", backbone_kwargs={"img_size": [84, 84]}, in_chans=data.in_chans,
        projector="1024-1024-1024", base_lr=0.2, warmup_fraction=0.05, monitor_every_n_steps=25,
    )
    ckpt = ModelCheckpoint(dirpath=out / "checkpoints", save_last=True, save_top_k=0)
    trainer = pl.Trainer(
        max_steps=max_steps, precision="bf16-mixed", accelerator="auto", devices=1,
        logger=CSVLogger(save_dir=str(out), name="", version=""), callbacks=[ckpt],
        default_root_dir=str(out), log_every_n_steps=1, enable_model_summary=False,
    )
    print(f"[demo] pretraining VICReg on nature_cnn for {max_steps} steps "
          f"(batch {batch_size}, {torch.get_num_threads()} threads)")
    t0 = time.perf_counter()
    trainer.fit(model, data)
    t_train = time.perf_counter() - t0

    losses = read_metric(out / "metrics.csv", "train/loss")
    k = max(1, len(losses) // 10)
    first = sum(v for _, v in losses[:k]) / k
    last = sum(v for _, v in losses[-k:]) / k
    summary = {
        "game": game,
        "frames": collect["frames"],
        "steps": int(trainer.global_step),
        "checkpoint": str(Path(ckpt.last_model_path).resolve()),
        "loss_first": first, "loss_last": last, "loss_fell": last < first,
        "seconds_collect": round(t_collect, 1), "seconds_train": round(t_train, 1),
        "seconds_total": round(time.perf_counter() - t_start, 1),
        "metrics_csv": str((out / "metrics.csv").resolve()),
    }
    print(f"[demo] checkpoint: {summary['checkpoint']}")
    print(f"[demo] VICReg loss: {first:.3f} (first {k} logged steps) -> {last:.3f} (last {k})"
          f" {'fell' if last < first else 'did NOT fall'}")
    print(f"[demo] time: collect {t_collect:.0f}s, train {t_train:.0f}s, total {summary['seconds_total']:.0f}s")
    return summary
