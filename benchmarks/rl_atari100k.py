"""Atari-100k-style comparison of encoders for RL agents: frozen pretrained vs frozen random vs scratch.

The same as ``ssl-toolkit bench rl`` (see ``ssl_toolkit/bench/rl.py``), with the results written to
``benchmarks/results/rl_atari100k.json`` unless ``--output`` says otherwise. Finished runs are
reused, so seeds can run as separate processes and a last call with every seed only aggregates. The
recorded run (the budget the shared 2-core machine afforded):

    for s in 0 1 2; do nice -n 10 python benchmarks/rl_atari100k.py --games breakout boxing ms_pacman \
        --seeds $s --steps 2048 --eval-episodes 3 --eval-max-steps 1000 --out runs/bench_rl_2k \
        --output /tmp/s$s.json & done; wait
    python benchmarks/rl_atari100k.py --games breakout boxing ms_pacman --seeds 0 1 2 --steps 2048 \
        --eval-episodes 3 --eval-max-steps 1000 --out runs/bench_rl_2k
"""
from __future__ import annotations

import sys
from pathlib import Path

from ssl_toolkit.cli import main

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "rl_atari100k.json"

if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--output" not in argv:
        argv += ["--output", str(DEFAULT_OUTPUT)]
    raise SystemExit(main(["bench", "rl", *argv]))
