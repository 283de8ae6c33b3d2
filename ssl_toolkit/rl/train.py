"""Train and evaluate Stable-Baselines3 Atari agents on a pretrained, random or from-scratch encoder.

``train_agent`` builds PPO (Schulman et al., 2017), DQN (Mnih et al., Nature 2015) or QR-DQN
(Dabney et al., AAAI 2018) on the Atari-100k environments of :mod:`ssl_toolkit.rl.envs`, with the
encoder as the agent's trunk through :func:`ssl_toolkit.rl.sb3.policy_kwargs`:

- a path (``.safetensors`` / ``.ckpt``) or ``random:<backbone>``: our :class:`AtariEncoder`, frozen
  (default) or fine-tuned with a learning-rate multiplier;
- ``scratch``: SB3's own ``NatureCNN``, trainable, the usual baseline.

It logs to TensorBoard (and to wandb when asked: offline unless ``WANDB_API_KEY`` is set, so it
never prompts), evaluates whole games at the end on an env without the life-loss terminal, reports
raw and human-normalised scores and saves the agent as ``agent.zip`` next to ``agent.json`` (what
``ssl-toolkit rl eval`` needs to rebuild the env).

Hyperparameters (:func:`hyperparameters`) are the published Atari settings, shrunk where a small
budget would otherwise never reach them:

- PPO: the Atari table of Schulman et al. (8 envs × 128 steps, 4 epochs of 4 minibatches, lr 2.5e-4
  annealed to 0, clip 0.1, entropy 0.01, GAE λ 0.95, γ 0.99); the rollout shrinks to
  ``steps / n_envs`` (at least 16) when the budget is smaller than one rollout.
- DQN / QR-DQN: the data-efficient settings used on Atari-100k (DER, van Hasselt et al. 2019;
  DrQ-ε, Agarwal et al. 2021): Adam lr 1e-4, one update per agent step, batch 32, 10-step returns,
  target network copied every 2,000 updates, ε-greedy from 1 to 0.01 over the first 5,000 steps,
  learning from step 1,600, replay of the whole run (100k at most), evaluation at ε = 0.001
  (Dopamine's default). Each of the step counts is capped at a tenth to a half of a smaller budget so
  that a short run still learns. Replay memory: ``2 × buffer × 28 kB`` (5.6 GB at 100k).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ssl_toolkit.rl.envs import make_sb3_atari_env
from ssl_toolkit.rl.scores import canonical_game, human_normalized

ALGOS = ("ppo", "dqn", "qrdqn")
EVAL_EPSILON = 0.001
EVAL_SEED_OFFSET = 10_000  # evaluation no-op starts differ from the training ones


def hyperparameters(algo: str, steps: int, n_envs: int) -> dict[str, Any]:
    """SB3 keyword arguments for ``algo`` at a budget of ``steps`` agent steps over ``n_envs`` envs."""
    if algo == "ppo":
        n_steps = min(128, max(16, steps // n_envs))
        return dict(
            n_steps=n_steps, batch_size=max(8, n_steps * n_envs // 4), n_epochs=4,
            learning_rate=_linear(2.5e-4), clip_range=0.1, ent_coef=0.01, vf_coef=0.5,
            gae_lambda=0.95, gamma=0.99, max_grad_norm=0.5,
        )
    if algo in ("dqn", "qrdqn"):
        return dict(
            learning_rate=1e-4, buffer_size=max(1000, min(100_000, steps)),
            learning_starts=min(1600, max(32, steps // 10)), batch_size=32, train_freq=1,
            gradient_steps=1, n_steps=10, gamma=0.99,
            target_update_interval=min(2000, max(100, steps // 10)),
            exploration_fraction=min(5000, max(1, steps // 2)) / steps,
            exploration_initial_eps=1.0, exploration_final_eps=0.01,
            **({"max_grad_norm": 10.0} if algo == "dqn" else {}),
        )
    raise ValueError(f"algo must be one of {ALGOS}, got {algo!r}")


def _linear(start: float):
    """SB3 schedule: ``start`` annealed linearly to 0 over training (``progress`` runs 1 → 0)."""

    def schedule(progress_remaining: float) -> float:
        return start * progress_remaining

    return schedule


def _algo_class(algo: str):
    if algo == "ppo":
        from stable_baselines3 import PPO

        return PPO
    if algo == "dqn":
        from stable_baselines3 import DQN

        return DQN
    if algo == "qrdqn":
        from sb3_contrib import QRDQN

        return QRDQN
    raise ValueError(f"algo must be one of {ALGOS}, got {algo!r}")


def _policy(algo: str, encoder: str, freeze: bool, spectral_norm: bool, fuse: str, lr_mult: float):
    """``(policy, policy_kwargs)`` for the algorithm and encoder choice."""
    if spectral_norm and algo == "ppo":
        raise ValueError("--spectral-norm applies to the Q-heads of dqn/qrdqn, not to ppo")
    if spectral_norm:
        from ssl_toolkit.rl.heads import SpectralNormDQNPolicy, SpectralNormQRDQNPolicy

        policy = SpectralNormDQNPolicy if algo == "dqn" else SpectralNormQRDQNPolicy
    else:
        policy = "CnnPolicy"
    if encoder == "scratch":
        return policy, {}  # SB3's NatureCNN, trainable, scaling by 255 in the policy
    if not (encoder.startswith("random:") or Path(encoder).is_file()):
        raise FileNotFoundError(f"encoder {encoder!r} not found: give an exported .safetensors/.ckpt, "
                                "random:<backbone> (e.g. random:nature_cnn) or scratch")
    from ssl_toolkit.rl.sb3 import policy_kwargs

    return policy, policy_kwargs(encoder, freeze=freeze, algo=algo, fuse=fuse, lr_mult=lr_mult)


def _wandb_run(project: str | None, name: str, out_dir: Path, config: dict):
    """A wandb run syncing the TensorBoard logs, or None. Offline without an API key: never prompts."""
    project = project or os.environ.get("WANDB_PROJECT")
    if not project or os.environ.get("WANDB_MODE") == "disabled":
        return None
    import wandb

    mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
    return wandb.init(project=project, name=name, dir=str(out_dir), config=config, mode=mode,
                      sync_tensorboard=True, reinit="finish_previous")


def evaluate_agent(
    model, game: str, episodes: int = 10, seed: int = 0, max_episode_steps: int = 27_000,
    epsilon: float | None = None, vectorization: str = "auto",
) -> dict[str, Any]:
    """Play ``episodes`` whole games (no life-loss terminal, raw rewards) and score them.

    One env per episode, run in parallel; each contributes its first game, so short games are not
    over-represented. PPO samples from its policy; DQN/QR-DQN act ε-greedily with ``epsilon``
    (default 0.001).

    Returns:
        ``{"episodes", "returns", "lengths", "mean", "std", "human_normalized", "game"}`` where
        ``human_normalized`` is that of the mean return.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be at least 1, got {episodes}")
    env = make_sb3_atari_env(game, n_envs=episodes, seed=seed + EVAL_SEED_OFFSET, training=False,
                             max_episode_steps=max_episode_steps, vectorization=vectorization)
    value_based = hasattr(model, "exploration_rate")
    saved_eps = getattr(model, "exploration_rate", None)
    if value_based:
        model.exploration_rate = EVAL_EPSILON if epsilon is None else epsilon
    returns = np.full(episodes, np.nan)
    lengths = np.zeros(episodes, np.int64)
    try:
        obs = env.reset()
        while np.isnan(returns).any():
            actions, _ = model.predict(obs, deterministic=False)
            obs, _, dones, infos = env.step(actions)
            for i, info in enumerate(infos):
                if "episode" in info and np.isnan(returns[i]):
                    returns[i], lengths[i] = info["episode"]["r"], info["episode"]["l"]
    finally:
        env.close()
        if value_based:
            model.exploration_rate = saved_eps
    name = canonical_game(env.spec_id or game)
    mean = float(returns.mean())
    return {
        "game": name, "episodes": episodes, "returns": returns.tolist(), "lengths": lengths.tolist(),
        "mean": mean, "std": float(returns.std()), "human_normalized": human_normalized(name, mean),
    }


def train_agent(
    env: str, encoder: str = "scratch", algo: str = "ppo", steps: int = 100_000, seed: int = 0,
    freeze: bool = True, spectral_norm: bool = False, n_envs: int | None = None, eval_episodes: int = 10,
    out_dir: str | os.PathLike = "runs/rl", fuse: str = "concat", lr_mult: float = 1.0,
    eval_max_episode_steps: int = 27_000, progress: bool = True, wandb_project: str | None = None,
    vectorization: str = "auto", device: str = "auto", threads: int | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train an SB3 agent on ``env`` for ``steps`` agent steps, evaluate it, save it, return a summary.

    Args:
        env: Atari game (``ALE/Pong-v5``, ``pong``); must be one of the 26 Atari-100k games.
        encoder: exported encoder path, ``random:<backbone>``, or ``scratch`` (SB3's NatureCNN).
        algo: ``ppo``, ``dqn`` or ``qrdqn``.
        steps: agent steps (each 4 emulator frames), summed over envs.
        freeze: keep the encoder's weights fixed (``False``: fine-tune with ``lr_mult``).
        spectral_norm: spectral normalisation on the Q-head's penultimate layer (dqn/qrdqn).
        n_envs: training envs (default 8 for PPO, 1 for DQN/QR-DQN).
        eval_episodes: whole games played at the end (0: skip evaluation).
        out_dir: ``agent.zip``, ``agent.json``, ``summary.json`` and TensorBoard logs (``tb/``) go here.
        eval_max_episode_steps: cut evaluation games at this many agent steps (27k = 108k frames).
        threads: torch CPU threads (None: torch's default). On a busy machine 1 is much faster than
            several threads fighting over the same cores.
        overrides: SB3 keyword arguments replacing :func:`hyperparameters`'s.

    Returns:
        The summary dict (also written to ``out_dir/summary.json``).
    """
    if algo not in ALGOS:
        raise ValueError(f"algo must be one of {ALGOS}, got {algo!r}")
    if steps < 1:
        raise ValueError(f"steps must be positive, got {steps}")
    game = canonical_game(env)  # fail early for a game without human/random scores
    from stable_baselines3.common.utils import set_random_seed

    n_envs = n_envs or (8 if algo == "ppo" else 1)
    if threads:
        import torch

        torch.set_num_threads(threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    set_random_seed(seed)  # the random encoder and the heads start from this seed
    policy, policy_kwargs = _policy(algo, encoder, freeze, spectral_norm, fuse, lr_mult)
    hparams = {**hyperparameters(algo, steps, n_envs), **(overrides or {})}
    venv = make_sb3_atari_env(env, n_envs=n_envs, seed=seed, training=True, vectorization=vectorization)
    mode = "scratch" if encoder == "scratch" else ("frozen" if freeze else "finetune")
    run_name = f"{game}_{algo}_{mode}_s{seed}"
    config = {"env": venv.spec_id, "game": game, "algo": algo, "encoder": encoder, "mode": mode,
              "spectral_norm": spectral_norm, "steps": steps, "seed": seed, "n_envs": n_envs,
              "fuse": fuse, "lr_mult": lr_mult}
    run = _wandb_run(wandb_project, run_name, out, config)
    model = _algo_class(algo)(
        policy, venv, policy_kwargs=policy_kwargs, seed=seed, device=device, verbose=0,
        tensorboard_log=str(out / "tb"), **hparams,
    )
    trainable = sum(p.numel() for p in model.policy.parameters() if p.requires_grad)
    t0 = time.perf_counter()
    try:
        model.learn(total_timesteps=steps, progress_bar=progress, tb_log_name=run_name)
    finally:
        venv.close()
    seconds_train = time.perf_counter() - t0
    agent_path = out / "agent.zip"
    model.save(agent_path)
    (out / "agent.json").write_text(json.dumps(config, indent=2) + "\n")
    train_returns = [ep["r"] for ep in model.ep_info_buffer]
    summary: dict[str, Any] = {
        **config,
        "hyperparameters": {k: (v if not callable(v) else f"linear({v(1.0)} -> 0)") for k, v in hparams.items()},
        "trainable_parameters": int(trainable),
        "seconds_train": round(seconds_train, 2),
        "steps_per_second": round(model.num_timesteps / seconds_train, 1),
        "train_episodes": len(train_returns),
        "train_return_mean_last100": float(np.mean(train_returns)) if train_returns else None,
        "agent": str(agent_path.resolve()),
        "tensorboard": str((out / "tb").resolve()),
    }
    if eval_episodes:
        t1 = time.perf_counter()
        summary["eval"] = evaluate_agent(model, venv.spec_id, eval_episodes, seed=seed,
                                         max_episode_steps=eval_max_episode_steps, vectorization=vectorization)
        summary["seconds_eval"] = round(time.perf_counter() - t1, 2)
        summary["score"] = summary["eval"]["mean"]
        summary["human_normalized"] = summary["eval"]["human_normalized"]
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    if run is not None:
        run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float))})
        run.finish()
    return summary


def load_agent(path: str | os.PathLike, algo: str | None = None, device: str = "auto"):
    """``(model, config)`` from an ``agent.zip`` written by :func:`train_agent`.

    ``config`` is the sibling ``agent.json`` (game, algo, encoder); ``algo`` overrides or replaces it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"agent file not found: {path} (train one with `ssl-toolkit rl train`)")
    meta_path = path.with_suffix(".json")
    config = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    algo = algo or config.get("algo")
    if algo is None:
        raise ValueError(f"no {meta_path.name} next to {path.name}: pass --algo and --env")
    model = _algo_class(algo).load(path, device=device)
    return model, {**config, "algo": algo}


def evaluate_saved_agent(path: str | os.PathLike, episodes: int = 10, seed: int = 0, env: str | None = None,
                         algo: str | None = None, max_episode_steps: int = 27_000) -> dict[str, Any]:
    """Load an ``agent.zip`` and play ``episodes`` whole games with it (see :func:`evaluate_agent`)."""
    model, config = load_agent(path, algo=algo)
    env = env or config.get("env")
    if env is None:
        raise ValueError(f"no agent.json next to {path}: pass --env (e.g. ALE/Pong-v5)")
    result = evaluate_agent(model, env, episodes, seed=seed, max_episode_steps=max_episode_steps)
    return {"agent": str(Path(path).resolve()), **{k: v for k, v in config.items() if k != "env"}, "env": env,
            "eval": result, "score": result["mean"], "human_normalized": result["human_normalized"]}

