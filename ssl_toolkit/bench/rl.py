"""``ssl-toolkit bench rl``: does a pretrained encoder help an Atari agent? An Atari-100k-style comparison.

For every game, frames from a seeded random policy are collected and VICReg pretrains the DQN Nature
CNN on them (the ``ssl-toolkit demo`` recipe: 84×84 crops of grayscale frames), and the encoder is
exported. Then games × seeds × variants agents are trained with the same algorithm and budget:

- ``pretrained``: that game's exported encoder, frozen;
- ``random``: the same architecture (single-frame Nature CNN, per-frame features concatenated),
  randomly initialised from the run's seed and frozen: what pretraining must beat;
- ``scratch``: SB3's own 4-frame Nature CNN trained end to end, the usual baseline.

Each run ends with whole-game evaluation episodes; its human-normalised score is that of the mean
return. Per variant, the scores form a ``(seeds, games)`` matrix summarised, as Agarwal et al. (NeurIPS
2021) recommend, by the interquartile mean with a 95% stratified-bootstrap confidence interval
(:mod:`ssl_toolkit.rl.aggregate`). Finished runs (``summary.json``) and encoders are reused, so an
interrupted benchmark resumes; the results file is rewritten after every run.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssl_toolkit.rl.aggregate import aggregate
from ssl_toolkit.rl.scores import canonical_game

VARIANTS = ("pretrained", "random", "scratch")
ENCODER_BACKBONE = "nature_cnn"
ENCODER_KWARGS = {"in_chans": 1, "img_size": [84, 84]}


def pretrain_game_encoder(game: str, path: Path, frames: int = 4000, steps: int = 300, seed: int = 0,
                          batch_size: int = 64) -> dict[str, Any]:
    """Collect ``frames`` frames of ``game``, pretrain VICReg on nature_cnn for ``steps`` steps, export to
    ``path`` (``.safetensors``). The demo's recipe (``ssl_toolkit.demo``). Returns the export metadata
    plus timings."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint

    from ssl_toolkit.data.atari import collect_frames
    from ssl_toolkit.data.datamodule import SSLDataModule
    from ssl_toolkit.export import save_encoder
    from ssl_toolkit.methods import VICReg

    work = path.parent / f"{path.stem}_pretrain"
    t0 = time.perf_counter()
    if not (work / "frames" / "index.json").exists():
        collect_frames(game, frames, work / "frames", seed=seed, progress=False)
    t_collect = time.perf_counter() - t0
    pl.seed_everything(seed, workers=True)
    data = SSLDataModule(train_path=str(work / "frames"), batch_size=batch_size, num_workers=1, preset="atari",
                         crop_size=[84, 84], image_mode="L", seed=seed)
    model = VICReg(backbone=ENCODER_BACKBONE, backbone_kwargs={"img_size": [84, 84]}, in_chans=data.in_chans,
                   projector="1024-1024-1024", base_lr=0.2, warmup_fraction=0.05, monitor_every_n_steps=25)
    ckpt = ModelCheckpoint(dirpath=work / "checkpoints", save_last=True, save_top_k=0)
    trainer = pl.Trainer(max_steps=steps, precision="bf16-mixed", accelerator="auto", devices=1, logger=False,
                         callbacks=[ckpt], default_root_dir=str(work), enable_model_summary=False,
                         enable_progress_bar=False)
    t1 = time.perf_counter()
    trainer.fit(model, data)
    t_train = time.perf_counter() - t1
    meta = save_encoder(ckpt.last_model_path, path)
    return {"encoder": str(path), "seconds_collect": round(t_collect, 1), "seconds_pretrain": round(t_train, 1),
            "frames": frames, "steps": int(trainer.global_step), "num_features": meta["num_features"]}


def random_encoder(path: Path, seed: int) -> str:
    """Export a randomly initialised single-frame Nature CNN (seeded) to ``path``; returns the path."""
    if not path.exists():
        from ssl_toolkit.backbones import create_backbone
        from ssl_toolkit.export import save_encoder

        torch.manual_seed(seed)
        save_encoder(create_backbone(ENCODER_BACKBONE, **ENCODER_KWARGS), path, method="random", steps=0,
                     input_size=[84, 84])
    return str(path)


def _table(result: dict) -> str:
    """The results as a markdown table: one row per variant, raw mean score per game, IQM [95% CI]."""
    games = result["games"]
    lines = ["| encoder | " + " | ".join(games) + " | IQM human-norm. [95% CI] | mean human-norm. |",
             "|---" * (len(games) + 3) + "|"]
    for variant, agg in result["aggregate"].items():
        raw = [np.mean(result["raw_scores"][variant][g]) for g in games]
        lines.append(f"| {variant} | " + " | ".join(f"{r:.1f}" for r in raw)
                     + f" | {agg['iqm']:.3f} [{agg['iqm_ci'][0]:.3f}, {agg['iqm_ci'][1]:.3f}] | {agg['mean']:.3f} |")
    return "\n".join(lines)


def run_rl_bench(
    games: list[str] = ("breakout", "boxing", "ms_pacman"), seeds: list[int] = (0, 1, 2),
    variants: list[str] = VARIANTS, algo: str = "ppo", steps: int = 10_000, pretrain_frames: int = 4000,
    pretrain_steps: int = 300, out_dir: str = "runs/bench_rl", eval_episodes: int = 5,
    eval_max_steps: int = 27_000, n_envs: int | None = None, reps: int = 2000, output: str | None = None,
    threads: int | None = 1,
) -> dict[str, Any]:
    """Run the comparison (see the module docstring) and return the results dict.

    ``threads``: torch CPU threads for pretraining and agents (1 by default: on a shared or small
    machine, several threads fighting over the same cores are several times slower).
    """
    from ssl_toolkit.cli import write_json
    from ssl_toolkit.rl.train import train_agent

    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise ValueError(f"unknown variant(s) {bad}; choose from {VARIANTS}")
    names = [canonical_game(g) for g in games]  # fail before any work for a game without scores
    if threads:
        torch.set_num_threads(threads)
    out = Path(out_dir)
    result: dict[str, Any] = {
        "algo": algo, "steps": steps, "seeds": list(seeds), "variants": list(variants), "games": names,
        "eval_episodes": eval_episodes, "eval_max_steps": eval_max_steps,
        "pretrain": {}, "runs": [], "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "threads": torch.get_num_threads(),
    }
    for game, name in zip(games, names):
        if "pretrained" not in variants:
            break
        path = out / name / "encoder.safetensors"
        record = path.with_suffix(".pretrain.json")  # how the encoder was made, kept for reruns
        if path.exists():
            info = json.loads(record.read_text()) if record.exists() else {}
            result["pretrain"][name] = {**info, "encoder": str(path), "reused": True}
        else:
            print(f"[bench rl] pretraining VICReg on {name} ({pretrain_frames} frames, {pretrain_steps} steps)")
            result["pretrain"][name] = pretrain_game_encoder(game, path, pretrain_frames, pretrain_steps)
            record.write_text(json.dumps(result["pretrain"][name], indent=2) + "\n")
        write_json(output, result)

    scores = {v: {n: [] for n in names} for v in variants}
    raw = {v: {n: [] for n in names} for v in variants}
    for seed in seeds:
        for game, name in zip(games, names):
            for variant in variants:
                run_dir = out / name / f"{variant}_s{seed}"
                if (run_dir / "summary.json").exists():
                    summary = json.loads((run_dir / "summary.json").read_text())
                else:
                    encoder = {"pretrained": str(out / name / "encoder.safetensors"),
                               "random": random_encoder(out / "random_encoders" / f"nature_cnn_s{seed}.safetensors", seed)
                               if variant == "random" else None, "scratch": "scratch"}[variant]
                    print(f"[bench rl] {name} seed {seed} {variant}: {algo} for {steps} steps")
                    summary = train_agent(env=game, encoder=encoder, algo=algo, steps=steps, seed=seed, freeze=True,
                                          n_envs=n_envs, eval_episodes=eval_episodes, out_dir=run_dir,
                                          eval_max_episode_steps=eval_max_steps, progress=False, threads=threads)
                    print(f"[bench rl]   score {summary['score']:.1f} (human-norm. {summary['human_normalized']:.3f}), "
                          f"train {summary['seconds_train']:.0f}s, eval {summary['seconds_eval']:.0f}s")
                scores[variant][name].append(summary["human_normalized"])
                raw[variant][name].append(summary["score"])
                result["runs"].append({k: summary.get(k) for k in (
                    "game", "mode", "encoder", "seed", "algo", "steps", "score", "human_normalized",
                    "seconds_train", "seconds_eval", "steps_per_second", "trainable_parameters")} | {"variant": variant})
                result["human_normalized"], result["raw_scores"] = scores, raw
                write_json(output, result)

    result["aggregate"] = {
        v: aggregate(np.array([scores[v][n] for n in names]).T, reps=reps) for v in variants
    }
    per_run = [r["seconds_train"] + r["seconds_eval"] for r in result["runs"]]
    result["seconds_per_game_seed"] = {
        v: float(np.mean([r["seconds_train"] + r["seconds_eval"] for r in result["runs"] if r["variant"] == v]))
        for v in variants
    }
    result["seconds_runs_total"] = float(np.sum(per_run))
    result["table"] = _table(result)
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(result["table"])
    return result
