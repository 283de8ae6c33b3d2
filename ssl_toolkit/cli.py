"""``ssl-toolkit``: the command-line entry point.

``pretrain`` is LightningCLI's ``fit`` (configs are YAML, unknown keys are errors, ``--print_config``
works); the other subcommands are small argparse front-ends over library functions. Every command
that produces numbers can also write them as JSON with ``--output FILE``.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
from pathlib import Path

# Each area adds its own subcommands through ``add_commands(groups)``; ``groups`` maps "top",
# "probe", "bench" and "rl" to the argparse sub-parser collections.
COMMAND_MODULES = (
    "ssl_toolkit.export_cli",
    "ssl_toolkit.eval.probe_cli",
    "ssl_toolkit.eval.atariari_cli",
    "ssl_toolkit.rl.cli",
    "ssl_toolkit.plots.cli",
)

PRETRAIN_HELP = "pretrain a method with LightningCLI: ssl-toolkit pretrain --config configs/vicreg_cifar.yaml [--data.train_path DIR]"


def write_json(path: str | os.PathLike | None, payload: dict) -> None:
    """Write ``payload`` as indented JSON to ``path`` (parents created); nothing when path is None."""
    if not path:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    os.replace(tmp, path)


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line.

    jsonargparse reports a failed class instantiation as a multi-line list of what every candidate
    type said ("Does not validate against any of the Union subtypes … - <the real error> …"); the
    real error is the first bullet that is not about the ``None`` alternative.
    """
    lines = str(err).splitlines()
    bullets = [ln.strip()[2:] for ln in lines if ln.strip().startswith("- ")]
    bullets = [b for b in bullets if "NoneType" not in b]
    return bullets[0] if bullets else (lines[0] if lines else type(err).__name__)


def _cmd_pretrain(rest: list[str]) -> int:
    from ssl_toolkit.pretrain import run_pretrain_cli

    run_pretrain_cli(["fit", *rest])
    return 0


def _cmd_atari(args: argparse.Namespace) -> int:
    from ssl_toolkit.data.atari import collect_frames

    summary = collect_frames(
        args.game, args.frames, args.out, seed=args.seed, grayscale=not args.rgb,
        frames_per_shard=args.frames_per_shard, noop=not args.no_noop,
    )
    print(json.dumps(summary, indent=2, default=float))
    write_json(args.output, summary)
    return 0


def parse_bytes(text: str) -> int:
    """``--max-size`` values: a byte count, optionally with a unit (``500MB``, ``1GiB``, ``1.5G``)."""
    units = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([kmgt]i?)?b?\s*", text.lower())
    if not match:
        raise argparse.ArgumentTypeError(f"expected a size in bytes such as 1000000000, 500MB or 1GiB, got {text!r}")
    return int(float(match.group(1)) * units[match.group(2) or ""])


def _cmd_shards(args: argparse.Namespace) -> int:
    if args.shards_command == "from-folder":
        from ssl_toolkit.data.shard_writer import shards_from_folder

        summary = shards_from_folder(
            args.src, args.out, max_count=args.max_count, max_size=args.max_size, seed=args.seed,
            prefix=args.prefix, overwrite=args.overwrite, progress=not args.quiet,
        )
        print(json.dumps(summary, indent=2))
        write_json(args.output, summary)
        return 0
    from ssl_toolkit.data.shard_stats import format_stats, shard_stats

    stats = shard_stats(args.pattern, verify=not args.no_verify, decode=args.decode, progress=not args.quiet)
    print(format_stats(stats))
    write_json(args.output, stats)
    return 1 if stats["problems"] else 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from ssl_toolkit.demo import run_demo

    if args.threads:
        import torch

        # on a shared CPU one thread per process beats several waiting on each other (2-7x for the
        # VICReg steps, more for PPO, measured on the busy 2-core machine)
        torch.set_num_threads(args.threads)
    summary = run_demo(
        game=args.game, frames=args.frames, max_steps=args.steps, out_dir=args.out, seed=args.seed,
        probe_frames=args.probe_frames, ppo_steps=args.ppo_steps,
    )
    write_json(args.output, summary)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "step":
        from ssl_toolkit.bench.step import run_step_bench

        result = run_step_bench(steps=args.steps, warmup=args.warmup, methods=args.methods)
    elif args.what == "pipeline":
        from ssl_toolkit.bench.pipeline import run_pipeline_bench

        result = run_pipeline_bench(shards=args.shards, num_images=args.images)
    else:  # collect; argparse restricts the choices
        from ssl_toolkit.bench.collect import run_collect_bench

        result = run_collect_bench(game=args.game, frames=args.frames)
    write_json(args.output, result)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ssl-toolkit",
        description="Self-supervised pretraining (VICReg, SimSiam, SimCLR, MAE), probes and Atari RL hand-off.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("pretrain", help=PRETRAIN_HELP, add_help=False)

    atari = sub.add_parser("atari", help="Atari data: collect frames from a seeded random policy")
    atari_sub = atari.add_subparsers(dest="atari_command", required=True)
    collect = atari_sub.add_parser("collect", help="write ALE frames, RAM and step info to shards")
    collect.add_argument("--game", required=True, help="e.g. pong, mspacman or ALE/Pong-v5")
    collect.add_argument("--frames", type=int, required=True, help="number of frames to write")
    collect.add_argument("--out", required=True, help="output directory for the shards")
    collect.add_argument("--seed", type=int, default=0)
    collect.add_argument("--rgb", action="store_true", help="keep RGB frames (default: grayscale)")
    collect.add_argument("--no-noop", action="store_true", help="never choose NOOP (AtariARI's random agent)")
    collect.add_argument("--frames-per-shard", type=int, default=10000)
    collect.add_argument("--output", help="also write the summary as JSON here")
    collect.set_defaults(func=_cmd_atari)

    shards = sub.add_parser("shards", help="webdataset shards: write them from an image folder, check them")
    shards_sub = shards.add_subparsers(dest="shards_command", required=True)
    from_folder = shards_sub.add_parser(
        "from-folder", help="write an ImageFolder tree as shuffled shards (original image bytes); resumable",
        description="Write SRC (an ImageFolder tree) as OUT/<prefix>-000000.tar, … with <key>.jpg|png|webp "
        "(the original bytes), <key>.cls and <key>.json per image, plus OUT/classes.json and OUT/index.json. "
        "Re-running a cut-off run with the same arguments keeps the finished shards.",
    )
    from_folder.add_argument("src", help="ImageFolder tree (one subfolder per class) or flat folder of images")
    from_folder.add_argument("out", help="output folder for the shards (created if missing)")
    from_folder.add_argument("--max-count", type=int, default=1000, help="samples per shard at most")
    from_folder.add_argument("--max-size", type=parse_bytes, default=None,
                             help="bytes per shard file at most (1000000000, 500MB, 1GiB); default: no limit")
    from_folder.add_argument("--seed", type=int, default=0, help="seeds the sample order across shards")
    from_folder.add_argument("--prefix", default="train", help="shard file prefix")
    from_folder.add_argument("--overwrite", action="store_true",
                             help="replace the shards, index.json and classes.json already in OUT")
    from_folder.add_argument("--quiet", action="store_true", help="no progress bar")
    from_folder.add_argument("--output", help="also write the summary as JSON here")
    from_folder.set_defaults(func=_cmd_shards)
    stats = shards_sub.add_parser(
        "stats", help="count shards, samples, classes and bytes; report unreadable members (exit 1 if any)",
    )
    stats.add_argument("pattern", help="a shard folder, a .tar, or a pattern (train-{000000..000127}.tar, train-*.tar)")
    stats.add_argument("--no-verify", action="store_true", help="read tar headers and labels only, not the images")
    stats.add_argument("--decode", action="store_true", help="fully decode every image (catches truncated pixel data)")
    stats.add_argument("--quiet", action="store_true", help="no progress bar")
    stats.add_argument("--output", help="also write the statistics as JSON here")
    stats.set_defaults(func=_cmd_shards)

    demo = sub.add_parser("demo", help="the main job: collect Atari frames, pretrain VICReg, export, AtariARI probe, PPO smoke check")
    demo.add_argument("--game", default="pong")
    demo.add_argument("--frames", type=int, default=4000)
    demo.add_argument("--steps", type=int, default=300, help="optimiser steps of pretraining")
    demo.add_argument("--out", default="runs/demo", help="run directory")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--probe-frames", type=int, default=10_000, help="AtariARI probe frames (0: skip the probe)")
    demo.add_argument("--ppo-steps", type=int, default=1024, help="PPO smoke-check agent steps (0: skip it)")
    demo.add_argument("--threads", type=int, default=None,
                      help="torch CPU threads (default: torch's choice; 1 is faster on a busy machine)")
    demo.add_argument("--output", help="also write the summary as JSON here")
    demo.set_defaults(func=_cmd_demo)

    bench = sub.add_parser("bench", help="performance benchmarks (JSON with --output)")
    bench_sub = bench.add_subparsers(dest="what", required=True, metavar="BENCHMARK")
    step = bench_sub.add_parser("step", help="training-step throughput per method, fp32 vs bf16 + channels_last")
    step.add_argument("--steps", type=int, default=10, help="timed steps per configuration")
    step.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    step.add_argument("--methods", nargs="*", default=None, help="subset of the configurations")
    pipe = bench_sub.add_parser("pipeline", help="CPU stage vs per-sample baseline vs JPEG decode, one core")
    pipe.add_argument("--shards", default=None, help="shard pattern to read (default: synthesised photo-like JPEGs)")
    pipe.add_argument("--images", type=int, default=256, help="images per timed pass")
    coll = bench_sub.add_parser("collect", help="Atari frames written per second vs ALE's own step rate")
    coll.add_argument("--game", default="pong")
    coll.add_argument("--frames", type=int, default=5000)
    for b in (step, pipe, coll):
        b.add_argument("--output", help="write the results as JSON here")
        b.set_defaults(func=_cmd_bench)

    probe = sub.add_parser("probe", help="evaluate a frozen encoder: linear probe, kNN, AtariARI state probing")
    rl = sub.add_parser("rl", help="train and evaluate Atari agents on a pretrained encoder")
    groups = {
        "top": sub,
        "bench": bench_sub,
        "probe": probe.add_subparsers(dest="probe_command", required=True, metavar="PROBE"),
        "rl": rl.add_subparsers(dest="rl_command", required=True, metavar="RL_COMMAND"),
    }
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(groups)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # pretrain hands everything after it to LightningCLI untouched (its own --help included)
    try:
        if argv and argv[0] == "pretrain":
            return _cmd_pretrain(argv[1:])
        args = build_parser().parse_args(argv)
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        # bad input: one line naming the problem, non-zero exit, no traceback
        command = argv[0] if argv else "ssl-toolkit"
        print(f"ssl-toolkit {command}: error: {one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
