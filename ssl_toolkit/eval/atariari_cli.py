"""``ssl-toolkit probe atariari`` and ``ssl-toolkit bench atariari``: the AtariARI state-probing
benchmark (Anand et al., NeurIPS 2019) from the command line; see :mod:`ssl_toolkit.eval.atariari`."""
from __future__ import annotations

import argparse

DEV_GAMES = ("pong", "breakout", "boxing", "freeway", "mspacman", "spaceinvaders")


def _cmd_probe(args: argparse.Namespace) -> int:
    from ssl_toolkit.cli import write_json
    from ssl_toolkit.eval.atariari import format_table, run_atariari_probe

    result = run_atariari_probe(
        args.encoder, args.game, seed=args.seed, frames=args.frames, pretrain_frames=args.pretrain_frames,
        annotations=args.annotations, bf16=not args.fp32,
    )
    print(format_table(result))
    write_json(args.output, result)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from ssl_toolkit.bench.atariari import format_bench_table, run_atariari_bench
    from ssl_toolkit.cli import write_json

    result = run_atariari_bench(
        method=args.method, games=args.games, seed=args.seed, frames=args.frames,
        pretrain_frames=args.pretrain_frames, steps=args.steps, batch_size=args.batch_size,
        annotations=args.annotations, out_dir=args.out, with_random=not args.no_random,
    )
    print(format_bench_table(result))
    write_json(args.output, result)
    return 0


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0,
                   help="seeds the random agent, the emulator, the episode split, the random encoder and the probes")
    p.add_argument("--frames", type=int, default=50_000, help="probe frames (the paper: 50000)")
    p.add_argument("--annotations", choices=("paper", "current"), default="paper",
                   help="RAM annotation version: the published tables' (paper) or the authors' later fixes (current)")
    p.add_argument("--output", help="also write the results as JSON here")


def add_commands(groups: dict) -> None:
    """Add ``probe atariari`` and ``bench atariari`` (each sets ``func``)."""
    probe = groups["probe"].add_parser(
        "atariari", help="AtariARI: linear probes for an Atari game's RAM state on frozen-encoder features",
        description="Collect random-agent frames of GAME with their RAM, probe every annotated state variable "
        "linearly on the frozen encoder's features and report weighted F1 per variable, per category and the "
        "game score beside the paper's numbers (Anand et al. 2019).",
    )
    probe.add_argument("--encoder", required=True,
                       help="exported .safetensors, pretraining .ckpt, random:<backbone> (e.g. random:atariari_cnn, "
                       "the paper's untrained encoder) or majority (most frequent training value per variable)")
    probe.add_argument("--game", required=True, help="e.g. pong, mspacman, spaceinvaders or ALE/Pong-v5")
    probe.add_argument("--pretrain-frames", type=int, default=0,
                       help="the encoder was pretrained on the first N frames of this seed's random-agent stream "
                       "(what bench atariari pretrains on): probe on the frames after them and drop test frames "
                       "equal to any of them")
    probe.add_argument("--fp32", action="store_true", help="encode in float32 (default: bfloat16 autocast)")
    _add_common(probe)
    probe.set_defaults(func=_cmd_probe)

    bench = groups["bench"].add_parser(
        "atariari", help="pretrain a method on each game's own frames, then AtariARI-probe it",
        description="Per game: collect --pretrain-frames frames (random agent, never NOOP), pretrain METHOD "
        "on them for --steps steps at full 210x160, then probe on the next --frames frames of the same "
        "random-agent stream (never the frames it trained on); table beside the paper's random-CNN / "
        "ST-DIM / supervised columns.",
    )
    bench.add_argument("--method", choices=("vicreg", "simsiam", "simclr", "mae"), default="vicreg")
    bench.add_argument("--games", nargs="+", default=list(DEV_GAMES), help="games (default: the six development games)")
    bench.add_argument("--pretrain-frames", type=int, default=100_000, help="pre-training frames per game (the paper: 100000)")
    bench.add_argument("--steps", type=int, default=1000, help="optimiser steps of pretraining per game")
    bench.add_argument("--batch-size", type=int, default=64, help="pretraining batch size")
    bench.add_argument("--out", default="runs/bench_atariari", help="folder for the frames and checkpoints")
    bench.add_argument("--no-random", action="store_true", help="skip probing random:atariari_cnn on the same frames")
    _add_common(bench)
    bench.set_defaults(func=_cmd_bench)
