"""``ssl-toolkit plot RUN_DIR``: regenerate every figure a run directory allows
(see :mod:`ssl_toolkit.plots.run_dir`)."""
from __future__ import annotations

import argparse


def _cmd_plot(args: argparse.Namespace) -> int:
    from ssl_toolkit.cli import write_json
    from ssl_toolkit.plots.run_dir import plot_run

    result = plot_run(args.run_dir, out_dir=args.out, projection=None if args.projection == "none" else args.projection,
                      max_samples=args.max_samples, data_path=args.data)
    for path in result["written"]:
        print(f"wrote {path}")
    for figure, reason in result["skipped"].items():
        print(f"skipped {figure}: {reason}")
    write_json(args.output, result)
    if not result["written"]:
        raise ValueError(f"nothing to plot in {args.run_dir!r}: " + "; ".join(result["skipped"].values()))
    return 0


def add_commands(groups: dict) -> None:
    """Add ``plot`` to the top-level sub-parsers."""
    plot = groups["top"].add_parser(
        "plot", help="write the run's figures as PNG: loss terms, online probe, collapse, embeddings, AtariARI",
        description="Regenerate every figure RUN_DIR allows: curves from metrics.csv, a 2-D projection of "
        "embeddings (embeddings.npz, else computed from checkpoints/last.ckpt on the run's data) and "
        "AtariARI bars from *atariari*.json results. Figures whose inputs are missing are skipped.",
    )
    plot.add_argument("run_dir", help="a run directory, e.g. runs/demo or runs/vicreg_atari")
    plot.add_argument("--out", default=None, help="folder for the PNGs (default: RUN_DIR/plots)")
    plot.add_argument("--projection", choices=["pca", "tsne", "none"], default="pca",
                      help="embedding projection (tsne needs scikit-learn); none skips that figure")
    plot.add_argument("--max-samples", type=int, default=512, help="images to embed when computing features")
    plot.add_argument("--data", default=None, help="images to embed instead of the run's own data")
    plot.add_argument("--output", help="also write the list of written and skipped figures as JSON here")
    plot.set_defaults(func=_cmd_plot)
