"""``ssl-toolkit export CKPT OUT.safetensors``: a pretraining checkpoint's backbone as an encoder file."""
from __future__ import annotations

import argparse
import json


def _parse_size(text: str) -> list[int]:
    parts = [p for p in text.lower().replace("x", ",").split(",") if p.strip()]
    if len(parts) == 1:
        parts = parts * 2
    try:
        size = [int(p) for p in parts]
    except ValueError:
        size = []
    if len(size) != 2 or min(size) < 1:
        raise argparse.ArgumentTypeError(f"expected an input size such as 84 or 84x84, got {text!r}")
    return size


def _cmd_export(args: argparse.Namespace) -> int:
    from ssl_toolkit.cli import write_json
    from ssl_toolkit.export import save_encoder

    if not str(args.out).endswith(".safetensors"):
        raise ValueError(f"output must be a .safetensors file, got {args.out!r}; name it e.g. encoder.safetensors")
    meta = {"input_size": args.input_size} if args.input_size else {}
    info = save_encoder(args.ckpt, args.out, **meta)
    print(json.dumps({"out": str(args.out), **info}, indent=2))
    write_json(args.output, {"out": str(args.out), **info})
    return 0


def add_commands(groups: dict) -> None:
    """Add ``export`` to the top-level sub-parsers."""
    export = groups["top"].add_parser(
        "export", help="write a checkpoint's backbone as safetensors with JSON metadata (load_encoder reads it)",
        description="Read CKPT (a Lightning checkpoint from `ssl-toolkit pretrain` or the demo) with "
        "torch.load(weights_only=True) and write its backbone to OUT as safetensors, with metadata: backbone "
        "name and kwargs, in_chans, input size, normalisation, method, steps, num_features, version, sha256.",
    )
    export.add_argument("ckpt", help="Lightning .ckpt from a pretraining run")
    export.add_argument("out", help="output .safetensors file")
    export.add_argument("--input-size", type=_parse_size, default=None,
                        help="training input size HxW to record when the checkpoint does not say (e.g. 84x84)")
    export.add_argument("--output", help="also write the metadata as JSON here")
    export.set_defaults(func=_cmd_export)
