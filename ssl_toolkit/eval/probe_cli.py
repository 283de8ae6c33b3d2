"""``ssl-toolkit probe linear|knn`` and ``ssl-toolkit bench probe``: front-ends over
:mod:`ssl_toolkit.eval.linear_probe`, :mod:`~ssl_toolkit.eval.knn`,
:mod:`~ssl_toolkit.eval.standard_protocol` and :mod:`ssl_toolkit.bench.probe`."""
from __future__ import annotations

import argparse
import json
import os
from typing import Any

ENCODER_HELP = "a .safetensors export, a pretrain .ckpt, or random:<backbone> (untrained, seeded by --seed)"


def _encoder(args: argparse.Namespace):
    from ssl_toolkit.eval.features import load_frozen_encoder

    overrides = _json_dict(args.encoder_kwargs, "--encoder-kwargs")
    if args.in_chans is not None:
        overrides["in_chans"] = args.in_chans
    return load_frozen_encoder(args.encoder, seed=args.seed, **overrides)


def _json_dict(text: str | None, flag: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{flag} must be a JSON object such as '{{\"small_images\": true}}': {err}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{flag} must be a JSON object such as '{{\"small_images\": true}}', got {text!r}")
    return value


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--encoder", required=True, help=ENCODER_HELP)
    parser.add_argument("--train", required=True, help="training split: an ImageFolder tree or shards")
    parser.add_argument("--val", required=True, help="validation split: an ImageFolder tree or shards")
    parser.add_argument("--crop-size", type=int, default=None,
                        help="center crop (and training crop) in pixels; default the encoder's input size, else 224")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per batch (default 128 for extraction, 256 for --protocol standard)")
    parser.add_argument("--workers", type=int, default=max(1, min(4, (os.cpu_count() or 2) - 1)),
                        help="DataLoader workers decoding images")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                        help="auto: bf16 autocast + channels_last when a timed batch says it is faster")
    parser.add_argument("--cache-dir", default=None,
                        help="feature cache (default $SSL_TOOLKIT_CACHE/features or ~/.cache/ssl_toolkit/features)")
    parser.add_argument("--no-cache", action="store_true", help="always extract; store nothing")
    parser.add_argument("--in-chans", type=int, default=None, help="input channels of a random: encoder")
    parser.add_argument("--encoder-kwargs", default=None,
                        help="JSON backbone arguments for a random: encoder, e.g. '{\"small_images\": true}'")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", help="also write the results as JSON here")


def _cmd_linear(args: argparse.Namespace) -> int:
    from ssl_toolkit.cli import write_json

    encoder = _encoder(args)
    if args.protocol == "standard":
        from ssl_toolkit.eval.standard_protocol import standard_linear_eval

        result = standard_linear_eval(
            encoder, args.train, args.val, epochs=args.epochs, batch_size=args.batch_size or 256, lr=args.lr,
            weight_decay=args.sgd_weight_decay, schedule=args.schedule, crop_size=args.crop_size,
            batchnorm=bool(args.batchnorm), crop=args.crop, crop_scale=tuple(args.crop_scale),
            flip_p=0.0 if args.no_flip else 0.5,
            num_workers=args.workers, precision=args.precision, seed=args.seed, progress=not args.quiet,
        )
    else:
        from ssl_toolkit.eval.linear_probe import DEFAULT_WEIGHT_DECAYS, cached_linear_eval

        result = cached_linear_eval(
            encoder, args.train, args.val, crop_size=args.crop_size, batch_size=args.batch_size or 128,
            num_workers=args.workers, precision=args.precision, cache_dir=args.cache_dir,
            use_cache=not args.no_cache, weight_decays=args.weight_decays or DEFAULT_WEIGHT_DECAYS,
            holdout_fraction=args.holdout, batchnorm=args.batchnorm is not False, seed=args.seed,
        )
    payload = {"protocol": args.protocol, "encoder": args.encoder, "train": args.train, "val": args.val, **result}
    line = (f"linear probe ({args.protocol}) top-1 {result['top1']:.2f}  top-5 {result['top5']:.2f}  "
            f"({result['seconds']:.1f} s)")
    if args.protocol == "cached":
        hits = [name for name in ("train", "val") if result["features"][name]["cached"]]
        line += f"  weight decay {result['weight_decay']:g}  features from cache: {', '.join(hits) or 'none'}"
    print(line)
    write_json(args.output, payload)
    return 0


def _cmd_knn(args: argparse.Namespace) -> int:
    from ssl_toolkit.cli import write_json
    from ssl_toolkit.eval.knn import DEFAULT_KS, DEFAULT_TEMPERATURES, knn_eval

    result = knn_eval(
        _encoder(args), args.train, args.val, ks=args.k or DEFAULT_KS,
        temperatures=args.temperature or DEFAULT_TEMPERATURES, crop_size=args.crop_size,
        batch_size=args.batch_size or 128, num_workers=args.workers, precision=args.precision,
        cache_dir=args.cache_dir, use_cache=not args.no_cache,
    )
    print(f"{'k':>5} {'T':>6} {'top-1':>7} {'top-5':>7}")
    for row in result["results"]:
        print(f"{row['k']:>5} {row['temperature']:>6g} {row['top1']:>7.2f} {row['top5']:>7.2f}")
    payload = {"protocol": "knn", "encoder": args.encoder, "train": args.train, "val": args.val, **result}
    write_json(args.output, payload)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from ssl_toolkit.bench.probe import run_probe_bench
    from ssl_toolkit.cli import write_json

    kwargs = _json_dict(args.encoder_kwargs, "--encoder-kwargs") if args.encoder_kwargs else None
    result = run_probe_bench(work_dir=args.work_dir, epochs=args.epochs, encoder=args.encoder, encoder_kwargs=kwargs,
                             crop_size=args.crop_size, frames=args.frames, num_workers=args.workers, seed=args.seed)
    write_json(args.output, result)
    return 0


def add_commands(groups: dict) -> None:
    """Add ``probe linear``, ``probe knn`` and ``bench probe``."""
    linear = groups["probe"].add_parser(
        "linear", help="linear probe of a frozen encoder: cached features (fast) or the published protocol",
        description="Top-1/top-5 of a linear classifier on a frozen encoder. --protocol cached (default): features "
        "extracted once (center crop) and cached, logistic regression with a weight-decay sweep picked on a "
        "held-out part of train. --protocol standard: the published protocol (random crops + flips, SGD, "
        "100 epochs), for comparison with published tables.",
    )
    _common(linear)
    linear.add_argument("--protocol", choices=("cached", "standard"), default="cached")
    linear.add_argument("--weight-decays", type=float, nargs="+", default=None,
                        help="cached: the weight-decay sweep (default 1e-6 1e-5 1e-4 1e-3 1e-2)")
    linear.add_argument("--holdout", type=float, default=0.1, help="cached: part of train held out for the sweep")
    linear.add_argument("--batchnorm", action=argparse.BooleanOptionalAction, default=None,
                        help="a non-affine BatchNorm on the features before the linear layer, as MAE evaluates "
                        "(default: on for cached, off for standard, as SimCLR/VICReg publish)")
    linear.add_argument("--epochs", type=int, default=100, help="standard: passes over train")
    linear.add_argument("--lr", type=float, default=0.1, help="standard: SGD learning rate per 256 images")
    linear.add_argument("--sgd-weight-decay", type=float, default=0.0, help="standard: SGD weight decay")
    linear.add_argument("--schedule", choices=("cosine", "step"), default="cosine", help="standard: lr schedule")
    linear.add_argument("--crop-scale", type=float, nargs=2, default=[0.08, 1.0], metavar=("LO", "HI"),
                        help="standard: random resized crop area range (published: 0.08 1)")
    linear.add_argument("--crop", choices=("resized", "padded", "center"), default="resized",
                        help="standard: random resized crops (ImageNet protocol), pad-by-1/8-and-crop "
                             "(small-image protocol, for labels resized crops destroy) or the center view "
                             "(with --no-flip: no augmentation at all)")
    linear.add_argument("--no-flip", action="store_true", help="standard: no horizontal flips")
    linear.add_argument("--quiet", action="store_true", help="standard: no per-epoch line")
    linear.set_defaults(func=_cmd_linear)

    knn = groups["probe"].add_parser(
        "knn", help="weighted cosine kNN on a frozen encoder's cached features (k and T grid)",
        description="Temperature-weighted cosine kNN (Wu et al. 2018): every (k, T) pair on the cached features.",
    )
    _common(knn)
    knn.add_argument("--k", type=int, nargs="+", default=None, help="neighbours, one or more (default 20 200)")
    knn.add_argument("--temperature", type=float, nargs="+", default=None,
                     help="vote temperatures, one or more (default 0.07 0.1)")
    knn.set_defaults(func=_cmd_knn)

    bench = groups["bench"].add_parser(
        "probe", help="cached linear probe vs the standard protocol: same data and encoder, wall time and top-1",
    )
    bench.add_argument("--work-dir", default="runs/bench_probe", help="where the benchmark's dataset is built/reused")
    bench.add_argument("--encoder", default=None,
                       help=f"{ENCODER_HELP}; default random:nature_cnn (RGB, 64 px), cheap enough for 100 epochs")
    bench.add_argument("--encoder-kwargs", default=None, help="JSON backbone arguments for a random: encoder")
    bench.add_argument("--epochs", type=int, default=100, help="epochs of the standard protocol")
    bench.add_argument("--crop-size", type=int, default=None, help="default 64")
    bench.add_argument("--frames", type=int, default=None, help="Space Invaders agent steps to play (default 20000)")
    bench.add_argument("--workers", type=int, default=1)
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--output", help="write the results as JSON here")
    bench.set_defaults(func=_cmd_bench)
