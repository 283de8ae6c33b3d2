"""AtariARI calibration: the untrained paper encoder and the majority classifier against the paper.

Anand et al., "Unsupervised State Representation Learning in Atari", NeurIPS 2019, Table 2 (random
agent, F1). On the six development games × seeds, probe ``random:atariari_cnn`` and ``majority`` on
the same 50k random-agent frames per (game, seed) with the paper annotations, and compare the
six-game means with the paper's: within ±0.06 (random CNN) and ±0.05 (majority) is a pass.

    nice -n 10 .venv/bin/python benchmarks/atariari_calibration.py [--seeds 0 1 2] [--frames 50000]

Writes ``benchmarks/results/atariari_calibration.json`` after every run (``--resume`` skips the runs
already in it), seed-major so that a cut-off run still covers every game.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from ssl_toolkit.eval.atariari import collect_probe_frames, published_scores, run_atariari_probe

DEV_GAMES = ("pong", "breakout", "boxing", "freeway", "mspacman", "spaceinvaders")
ENCODERS = {"majority": "maj-clf", "random:atariari_cnn": "random-cnn"}
TOLERANCE = {"majority": 0.05, "random:atariari_cnn": 0.06}


def summarise(runs: list[dict], games: list[str]) -> dict:
    """Per game and encoder: mean, spread (sample std), min, max over seeds beside the paper; the
    six-game means and the pass/fail against the tolerances."""
    table, means = {}, {}
    for enc, column in ENCODERS.items():
        per_game = {}
        for game in games:
            scores = [r["score_f1"] for r in runs if r["game"] == game and r["encoder"] == enc]
            if not scores:
                continue
            per_game[game] = {
                "mean": statistics.fmean(scores), "std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
                "min": min(scores), "max": max(scores), "seeds": len(scores),
                "paper": published_scores(game)["f1"][column],
            }
        table[enc] = per_game
        if per_game:
            ours = statistics.fmean(g["mean"] for g in per_game.values())
            paper = statistics.fmean(g["paper"] for g in per_game.values())
            means[enc] = {"ours": ours, "paper": paper, "difference": ours - paper, "tolerance": TOLERANCE[enc],
                          "pass": abs(ours - paper) <= TOLERANCE[enc], "games": len(per_game)}
    return {"per_game": table, "six_game_mean": means}


def format_summary(summary: dict) -> str:
    lines = [f"{'game':14s} {'majority (ours)':>18s} {'paper':>6s}   {'random CNN (ours)':>18s} {'paper':>6s}"]
    games = list(summary["per_game"].get("random:atariari_cnn", {})) or list(summary["per_game"].get("majority", {}))
    for game in games:
        cells = []
        for enc in ENCODERS:
            g = summary["per_game"].get(enc, {}).get(game)
            cells.append(f"{g['mean']:.3f} ± {g['std']:.3f} (n={g['seeds']}) {g['paper']:6.2f}" if g else f"{'':>25s}")
        lines.append(f"{game:14s} " + "   ".join(cells))
    for enc, m in summary["six_game_mean"].items():
        lines.append(f"mean over {m['games']} games, {enc}: ours {m['ours']:.3f} vs paper {m['paper']:.3f} "
                     f"(difference {m['difference']:+.3f}, tolerance ±{m['tolerance']}) {'PASS' if m['pass'] else 'FAIL'}")
    return "\n".join(lines)


def save(out: Path, runs: list[dict], args: argparse.Namespace, command: str, seconds: float) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "AtariARI calibration (Anand et al. 2019, Table 2, random agent, F1)",
        "command": command, "annotations": "paper", "frames": args.frames,
        "encode_precision": "bf16 autocast, channels-last",
        "note": "measured on a shared 2-core CPU (other jobs running); timings are not idle-machine figures",
        **summarise(runs, args.games), "runs": runs, "seconds_this_invocation": round(seconds, 1),
    }, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--games", nargs="+", default=list(DEV_GAMES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--frames", type=int, default=50_000)
    parser.add_argument("--output", default="benchmarks/results/atariari_calibration.json")
    parser.add_argument("--encoders", nargs="+", choices=list(ENCODERS), default=list(ENCODERS))
    parser.add_argument("--resume", action="store_true", help="keep the runs already in --output")
    parser.add_argument("--include", nargs="*", default=[], help="also count the runs in these result files")
    args = parser.parse_args()

    out = Path(args.output)
    runs = json.loads(out.read_text())["runs"] if args.resume and out.exists() else []
    for extra in args.include:
        runs += [r for r in json.loads(Path(extra).read_text())["runs"]
                 if not any((q["game"], q["seed"], q["encoder"]) == (r["game"], r["seed"], r["encoder"]) for q in runs)]
    command = "nice -n 10 .venv/bin/python benchmarks/atariari_calibration.py " + " ".join(
        [f"--games {' '.join(args.games)}", f"--seeds {' '.join(map(str, args.seeds))}", f"--frames {args.frames}",
         f"--encoders {' '.join(args.encoders)}"])
    t_start = time.perf_counter()
    for seed in args.seeds:
        for game in args.games:
            todo = [e for e in args.encoders if not any(r["game"] == game and r["seed"] == seed and r["encoder"] == e
                                                   for r in runs)]
            if not todo:
                continue
            data = collect_probe_frames(game, args.frames, seed=seed, keep_frames="random:atariari_cnn" in todo)
            for enc in todo:
                r = run_atariari_probe(enc, game, seed=seed, frames=args.frames, data=data, quiet=True)
                runs.append({
                    "game": r["game"], "seed": seed, "encoder": enc, "score_f1": r["score_f1"],
                    "score_accuracy": r["score_accuracy"], "categories_f1": r["categories_f1"],
                    "variables_f1": {k: v["f1"] for k, v in r["variables"].items()},
                    "probe_epochs": {k: v.get("epochs") for k, v in r["variables"].items()},
                    "dropped_low_entropy": r["data"]["dropped_low_entropy"], "split_frames": r["data"]["split_frames"],
                    "episodes_kept": r["data"]["episodes_kept"],
                    "test_duplicates_removed": r["data"]["test_duplicates_removed"], "seconds": r["seconds"],
                })
                print(f"{game} seed {seed} {enc}: F1 {r['score_f1']:.3f} (paper "
                      f"{r['published']['f1'][ENCODERS[enc]]:.2f}) {r['seconds']}", flush=True)
                save(out, runs, args, command, time.perf_counter() - t_start)
    save(out, runs, args, command, time.perf_counter() - t_start)
    print(format_summary(summarise(runs, args.games)))


if __name__ == "__main__":
    main()
