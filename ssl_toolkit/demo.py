"""``ssl-toolkit demo``: the main job on the embedded default.

Collect a few thousand frames of an Atari game from the ROMs that ship with ale-py, pretrain VICReg
on the DQN Nature CNN for a few minutes on the CPU and report how the loss went; then export the
encoder, probe it and an untrained one with the AtariARI protocol (on frames it was not trained on)
beside the paper's numbers, print the lines that load it into Stable-Baselines3 and into a plain
PyTorch agent, and run a short PPO smoke check with it frozen.
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
from ssl_toolkit.tracking import RunArtifacts

LOAD_SNIPPET = """\
# Stable-Baselines3 (frozen encoder; SB3 must not scale the frames a second time)
from stable_baselines3 import PPO
from ssl_toolkit.rl.envs import make_sb3_atari_env
from ssl_toolkit.rl.sb3 import policy_kwargs
env = make_sb3_atari_env("{game}", n_envs=8, seed=0)
agent = PPO("CnnPolicy", env, policy_kwargs=policy_kwargs("{path}", freeze=True, algo="ppo"))

# plain PyTorch (CleanRL-style trunk: uint8 (B, 4, 84, 84) in, (B, num_features) out)
from ssl_toolkit import load_encoder
from ssl_toolkit.rl import AtariEncoder
trunk = AtariEncoder(load_encoder("{path}"), frame_stack=4)
q_net = torch.nn.Sequential(trunk, torch.nn.Linear(trunk.num_features, 512), torch.nn.ReLU(), torch.nn.Linear(512, n_actions))
"""


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
    seed: int = 0, batch_size: int = 64, num_workers: int = 1, probe_frames: int = 10_000, ppo_steps: int = 1024,
) -> dict:
    """Collect → pretrain → export → AtariARI probe → PPO smoke check. Returns a summary dict (also
    printed). ``probe_frames=0`` / ``ppo_steps=0`` skip those stages."""
    t_start = time.perf_counter()
    out = Path(out_dir)
    frames_dir = out / "frames"
    if (frames_dir / "index.json").exists():
        print(f"[demo] reusing {frames_dir}")
        collect = collect_summary(frames_dir)
    else:
        print(f"[demo] collecting {frames} frames of {game} (seeded random policy) into {frames_dir}")
        # the paper's random agent (never NOOP): the probe below continues this very stream
        collect = collect_frames(game, frames, frames_dir, seed=seed, noop=False)
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
        logger=CSVLogger(save_dir=str(out), name="", version=""), callbacks=[ckpt, RunArtifacts()],
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
    summary.update(_export(model, out))
    if probe_frames > 0:
        summary["atariari"] = _probe(model, game, seed, collect["frames"], probe_frames, out)
    if ppo_steps > 0:
        summary["ppo"] = _ppo_smoke(summary["encoder"], game, seed, ppo_steps, out)
    summary["seconds_total"] = round(time.perf_counter() - t_start, 1)
    print(f"[demo] time: collect {t_collect:.0f}s, train {t_train:.0f}s, total {summary['seconds_total']:.0f}s")
    return summary


def _export(model: VICReg, out: Path) -> dict:
    from ssl_toolkit.export import save_encoder

    path = out / "encoder.safetensors"
    meta = save_encoder(model, path)
    print(f"[demo] exported encoder: {path.resolve()} ({meta['backbone']}, {meta['num_features']} features, "
          f"input {meta['input_size']}, sha256 {meta['sha256'][:12]}…)")
    print("[demo] load it into your agent:\n" + LOAD_SNIPPET.format(game="ALE/Pong-v5", path=path))
    return {"encoder": str(path.resolve())}


def _probe(model: VICReg, game: str, seed: int, pretrain_frames: int, probe_frames: int, out: Path) -> dict:
    """AtariARI on the pretrained backbone and on the same architecture untrained, on the frames
    that follow the pre-training ones in the same seeded stream (test frames equal to any
    pre-training frame are dropped). Each result is kept as ``out/atariari_<name>.json``, with its
    per-category bars beside the paper's columns in ``out/plots/atariari_<name>.png``."""
    import json

    from ssl_toolkit.backbones import create_backbone
    from ssl_toolkit.eval.atariari import collect_probe_frames, format_table, run_atariari_probe
    from ssl_toolkit.plots import plot_atariari

    print(f"[demo] AtariARI probe: {probe_frames} frames after the {pretrain_frames} pre-training frames "
          "(the paper uses 50k; fewer frames here, so expect lower and noisier scores)")
    data = collect_probe_frames(game, probe_frames, seed=seed, skip=pretrain_frames)
    trained = model.backbone
    torch.manual_seed(seed)
    untrained = create_backbone(trained.backbone_name, **trained.backbone_kwargs)  # kwargs include in_chans
    results = {}
    for name, encoder in (("pretrained", trained), ("random", untrained)):
        encoder.encoder_meta = {"method": f"{name} nature_cnn", "in_chans": 1, "input_size": [84, 84],
                                "mean": [0.0], "std": [1.0]}
        results[name] = run_atariari_probe(encoder, game, seed=seed, data=data, quiet=True,
                                           pretrain_frames=pretrain_frames)
    for name, result in results.items():
        (out / f"atariari_{name}.json").write_text(json.dumps(result, indent=1, default=float))
        plot_atariari(result, out / "plots" / f"atariari_{name}.png", title=f"AtariARI {game}: {name} encoder")
    print(format_table(results["pretrained"]))
    paper = results["pretrained"]["published"]["f1"]
    columns = "  ".join(f"{c} {v:.2f}" for c, v in paper.items())
    print(f"[demo] AtariARI {results['pretrained']['game']} game F1: pretrained {results['pretrained']['score_f1']:.3f}"
          f" · random {results['random']['score_f1']:.3f} · paper: {columns}")
    return {name: {"score_f1": r["score_f1"], "categories_f1": r["categories_f1"], "frames": r["frames"],
                   "protocol_deviation": r["protocol_deviation"]} for name, r in results.items()}


def _ppo_smoke(encoder: str, game: str, seed: int, steps: int, out: Path) -> dict:
    from ssl_toolkit.rl.train import train_agent

    print(f"[demo] PPO smoke check: {steps} agent steps on {game} with the frozen exported encoder")
    result = train_agent(game, encoder=encoder, algo="ppo", steps=steps, seed=seed, freeze=True, n_envs=4,
                         eval_episodes=1, eval_max_episode_steps=2000, out_dir=out / "ppo", progress=False)
    print(f"[demo] PPO: {result['steps_per_second']} steps/s; evaluation game score {result.get('score')} "
          f"(human-normalised {result.get('human_normalized')}); agent saved to {result['agent']}")
    keys = ("steps_per_second", "agent", "score", "human_normalized", "trainable_parameters")
    return {k: result[k] for k in keys if k in result}
