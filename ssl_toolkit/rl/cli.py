"""``ssl-toolkit rl train|eval`` and ``ssl-toolkit bench rl``: Atari agents on pretrained encoders.

Thin argparse front-ends over :func:`ssl_toolkit.rl.train.train_agent`,
:func:`ssl_toolkit.rl.train.evaluate_saved_agent` and :func:`ssl_toolkit.bench.rl.run_rl_bench`;
every command prints its summary and writes it as JSON with ``--output FILE``.
"""
from __future__ import annotations

import argparse
import json


def _print_scores(summary: dict) -> None:
    ev = summary.get("eval")
    if ev:
        print(f"[rl] {ev['game']}: {ev['episodes']} games, score {ev['mean']:.1f} ± {ev['std']:.1f}, "
              f"human-normalised {ev['human_normalized']:.3f}")


def _cmd_train(args: argparse.Namespace) -> int:
    from ssl_toolkit.cli import write_json
    from ssl_toolkit.rl.train import train_agent

    summary = train_agent(
        env=args.env, encoder=args.encoder, algo=args.algo, steps=args.steps, seed=args.seed,
        freeze=not args.finetune, spectral_norm=args.spectral_norm, n_envs=args.n_envs,
        eval_episodes=args.eval_episodes, out_dir=args.out, fuse=args.fuse, lr_mult=args.lr_mult,
        eval_max_episode_steps=args.eval_max_steps, progress=not args.quiet, wandb_project=args.wandb,
        vectorization=args.vectorization, device=args.device, threads=args.threads,
    )
    print(json.dumps(summary, indent=2, default=float))
    _print_scores(summary)
    write_json(args.output, summary)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from ssl_toolkit.cli import write_json
    from ssl_toolkit.rl.train import evaluate_saved_agent

    summary = evaluate_saved_agent(args.agent, episodes=args.episodes, seed=args.seed, env=args.env,
                                   algo=args.algo, max_episode_steps=args.max_steps)
    print(json.dumps(summary, indent=2, default=float))
    _print_scores(summary)
    write_json(args.output, summary)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from ssl_toolkit.bench.rl import run_rl_bench
    from ssl_toolkit.cli import write_json

    result = run_rl_bench(
        games=args.games, seeds=args.seeds, variants=args.variants, algo=args.algo, steps=args.steps,
        pretrain_frames=args.pretrain_frames, pretrain_steps=args.pretrain_steps, out_dir=args.out,
        eval_episodes=args.eval_episodes, eval_max_steps=args.eval_max_steps, n_envs=args.n_envs,
        reps=args.bootstrap_reps, output=args.output, threads=args.threads,
    )
    write_json(args.output, result)
    return 0


ALGOS = ("ppo", "dqn", "qrdqn")  # as ssl_toolkit.rl.train.ALGOS; not imported: building the parser stays cheap


def add_commands(groups: dict) -> None:
    """Add ``rl train``, ``rl eval`` and ``bench rl`` to the CLI's sub-parser collections."""
    train = groups["rl"].add_parser(
        "train", help="train a PPO/DQN/QR-DQN agent on an Atari game with a pretrained, random or scratch encoder",
        description="Train an SB3 agent with the Atari-100k env conventions, evaluate whole games at the end, "
        "report raw and human-normalised scores, save OUT/agent.zip (+ agent.json, summary.json, tb/).",
    )
    train.add_argument("--env", required=True, help="Atari-100k game: ALE/Pong-v5, pong, ms_pacman, …")
    train.add_argument("--encoder", default="scratch",
                       help="exported encoder (.safetensors/.ckpt), random:<backbone> (random:nature_cnn), "
                       "or scratch (SB3's trainable NatureCNN); default scratch")
    train.add_argument("--algo", choices=ALGOS, default="ppo")
    train.add_argument("--steps", type=int, default=100_000, help="agent steps (4 frames each), over all envs")
    train.add_argument("--seed", type=int, default=0)
    mode = train.add_mutually_exclusive_group()
    mode.add_argument("--freeze", action="store_true", default=True, help="keep the encoder fixed (default)")
    mode.add_argument("--finetune", action="store_true", help="train the encoder too (with --lr-mult)")
    train.add_argument("--lr-mult", type=float, default=1.0, help="encoder learning-rate multiplier when fine-tuning")
    train.add_argument("--fuse", choices=("concat", "linear"), default="concat",
                       help="how per-frame features of a single-frame encoder are combined")
    train.add_argument("--spectral-norm", action="store_true",
                       help="spectral norm on the Q-head's penultimate layer (dqn/qrdqn)")
    train.add_argument("--n-envs", type=int, default=None, help="training envs (default: 8 for ppo, 1 for dqn/qrdqn)")
    train.add_argument("--eval-episodes", type=int, default=10, help="whole games played at the end (0: none)")
    train.add_argument("--eval-max-steps", type=int, default=27_000, help="cut evaluation games at this many agent steps")
    train.add_argument("--vectorization", choices=("auto", "ale", "gym"), default="auto",
                       help="ale-py's AtariVectorEnv or gymnasium wrappers (auto: ale when available)")
    train.add_argument("--device", default="auto", help="torch device for the agent (auto, cpu, cuda)")
    train.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    train.add_argument("--wandb", metavar="PROJECT", default=None,
                       help="also log to wandb (offline unless WANDB_API_KEY is set; WANDB_PROJECT works too)")
    train.add_argument("--out", default="runs/rl", help="run directory")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("--output", help="also write the summary as JSON here")
    train.set_defaults(func=_cmd_train)

    ev = groups["rl"].add_parser("eval", help="play whole games with a saved agent.zip and score them")
    ev.add_argument("agent", help="agent.zip written by `ssl-toolkit rl train` (its agent.json names game and algo)")
    ev.add_argument("--episodes", type=int, default=10)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--env", default=None, help="override the game from agent.json")
    ev.add_argument("--algo", choices=ALGOS, default=None, help="override the algorithm from agent.json")
    ev.add_argument("--max-steps", type=int, default=27_000, help="cut games at this many agent steps")
    ev.add_argument("--output", help="also write the scores as JSON here")
    ev.set_defaults(func=_cmd_eval)

    bench = groups["bench"].add_parser(
        "rl", help="Atari-100k-style comparison: frozen pretrained vs frozen random vs scratch encoders",
        description="For each game: collect frames, pretrain VICReg on nature_cnn, export; then train "
        "games × seeds × variants and report the IQM of human-normalised scores with stratified-bootstrap CIs.",
    )
    bench.add_argument("--games", nargs="+", default=["breakout", "boxing", "ms_pacman"])
    bench.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    bench.add_argument("--variants", nargs="+", default=["pretrained", "random", "scratch"],
                       choices=["pretrained", "random", "scratch"])
    bench.add_argument("--algo", choices=ALGOS, default="ppo")
    bench.add_argument("--steps", type=int, default=10_000, help="agent steps per run")
    bench.add_argument("--n-envs", type=int, default=None)
    bench.add_argument("--pretrain-frames", type=int, default=4000, help="frames collected per game for pretraining")
    bench.add_argument("--pretrain-steps", type=int, default=300, help="VICReg optimiser steps per game")
    bench.add_argument("--eval-episodes", type=int, default=5)
    bench.add_argument("--eval-max-steps", type=int, default=27_000)
    bench.add_argument("--bootstrap-reps", type=int, default=2000)
    bench.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: best on a busy machine)")
    bench.add_argument("--out", default="runs/bench_rl", help="run directory (finished runs are reused)")
    bench.add_argument("--output", help="write the results as JSON here (also rewritten after every run)")
    bench.set_defaults(func=_cmd_bench)
