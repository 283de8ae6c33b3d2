"""AtariARI per-category F1 as grouped bars, our encoder beside the columns of the paper.

The paper (Anand et al., "Unsupervised State Representation Learning in Atari", NeurIPS 2019) groups a
game's state variables into five categories (agent localisation, small-object localisation, other
localisation, score/clock/lives/display, misc) and reports the mean weighted F1 per category. The
figure puts one group of bars per category: ours first, then every published column given.

Expected result shape: what ``ssl-toolkit probe atariari --output FILE`` writes
(:func:`ssl_toolkit.eval.atariari.probe_game`); only the per-category F1 is required, unknown keys are
ignored::

    {
      "game": "pong",
      "encoder": "runs/demo/encoder.safetensors",         # "label" overrides the legend entry "ours"
      "categories_f1": {"Agent Loc.": 0.71, "Small Loc.": 0.40, ...},   # or "categories"
      "score_f1": 0.55,                                    # or "mean_f1" / "f1": the "overall" group
      "variables": {"player_y": {"categories": ["Agent Loc."], "f1": 0.8}, ...},
      "published": {
        "f1": {"random-cnn": 0.17, "st-dim": 0.81, ...},   # the paper's game score per column
        "variables": {"player_y": {"random-cnn": 0.62, ...}, ...}   # the paper's per-variable F1
      }
    }

The paper prints per-category F1 only averaged over games, so for one game the published category bars
are the means of the paper's per-variable F1 over that category's variables (the way the paper forms
its categories). ``published`` may also be given directly as ``{column: {category: f1}}`` or in the
paper-table shape ``{"columns": [...], "rows": {category: {column: f1}}}``. Leniency: a value may be a
number or a dict holding ``"f1"``; category names match whatever their spelling (``"Agent Loc."`` =
``agent_localization`` = ``agent``); a category missing from a column has no bar there.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from collections.abc import Sequence
from typing import Any

# matplotlib's object API, never pyplot (see the package docstring)
from matplotlib import colormaps
from matplotlib.figure import Figure

# canonical category → the display name; the first word of any spelling decides which it is
CATEGORIES = {
    "agent": "agent loc.",
    "small": "small-object loc.",
    "other": "other loc.",
    "score": "score/clock/lives",
    "misc": "misc",
    "overall": "game score",
}
# the paper's cheapest calibration point, its best self-supervised method and its upper bound
DEFAULT_COLUMNS = ("random-cnn", "st-dim", "supervised")
_ALIASES = {"smallobject": "small", "scoreclock": "score", "scoreclocklivesdisplay": "score", "mean": "overall",
            "meanf1": "overall", "f1": "overall", "all": "overall"}


def _column_key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def category_key(name: str) -> str:
    """A category's canonical key from any spelling (``"Small Loc."`` → ``"small"``); unknown names
    are kept, lower-cased."""
    words = re.findall(r"[a-z0-9]+", name.lower())
    if not words:
        return name
    if words[0] in CATEGORIES:
        return words[0]
    joined = "".join(words)
    for alias, key in _ALIASES.items():
        if joined.startswith(alias):
            return key
    return "_".join(words)


def _f1(value: Any) -> float | None:
    if isinstance(value, dict):
        value = value.get("f1", value.get("mean_f1"))
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _scores(mapping: dict[str, Any]) -> dict[str, float]:
    out = {}
    for name, value in (mapping or {}).items():
        f1 = _f1(value)
        if f1 is not None and not name.startswith("_"):
            out[category_key(name)] = f1
    return out


def _variable_categories(name: str, result: dict[str, Any]) -> list[str]:
    known = (result.get("variables") or {}).get(name)
    if isinstance(known, dict) and known.get("categories"):
        return list(known["categories"])
    try:
        from ssl_toolkit.eval.atariari import variable_categories
    except ImportError:
        return []
    return variable_categories(name)


def _published_columns(published: Any, result: dict[str, Any]) -> dict[str, dict[str, float]]:
    if not isinstance(published, dict):
        return {}
    columns: dict[str, dict[str, float]] = {}
    if "rows" in published and isinstance(published["rows"], dict):  # the paper-table shape
        for category, row in published["rows"].items():
            for column, value in (row or {}).items():
                f1 = _f1(value)
                if f1 is not None:
                    columns.setdefault(column, {})[category_key(category)] = f1
        return columns
    if isinstance(published.get("variables"), dict) or isinstance(published.get("f1"), dict):
        # probe_game's shape: per-variable F1 → per-category means; the game score → "overall"
        sums: dict[tuple[str, str], list[float]] = {}
        for name, row in (published.get("variables") or {}).items():
            for category in _variable_categories(name, result):
                for column, value in (row or {}).items():
                    f1 = _f1(value)
                    if f1 is not None:
                        sums.setdefault((column, category_key(category)), []).append(f1)
        for (column, category), values in sums.items():
            columns.setdefault(column, {})[category] = sum(values) / len(values)
        for column, value in (published.get("f1") or {}).items():
            f1 = _f1(value)
            if f1 is not None:
                columns.setdefault(column, {})["overall"] = f1
        return columns
    return {column: _scores(values) for column, values in published.items() if isinstance(values, dict)}


def plot_atariari(result: dict[str, Any] | str | os.PathLike, out_path: str | os.PathLike,
                  columns: Sequence[str] | None = DEFAULT_COLUMNS, title: str | None = None) -> Path:
    """Grouped bars of per-category F1: ours and the published columns.

    Args:
        result: a dict of the shape in the module docstring, or the path of such a JSON file.
        out_path: PNG to write (parents created).
        columns: published columns to show, in order (``random-cnn`` = ``random_cnn``); None: all given.
    """
    if not isinstance(result, dict):
        result = json.loads(Path(result).read_text())
    ours = _scores(result.get("categories_f1") or result.get("categories") or {})
    if not ours:
        raise ValueError("AtariARI result has no per-category F1; expected {'categories_f1': {category: f1}, ...}")
    overall = next((_f1(result[k]) for k in ("score_f1", "mean_f1", "f1", "overall") if k in result), None)
    if overall is not None:
        ours.setdefault("overall", overall)
    published = _published_columns(result.get("published"), result)
    if columns is not None:
        by_key = {_column_key(c): c for c in published}
        published = {by_key[_column_key(c)]: published[by_key[_column_key(c)]] for c in columns if _column_key(c) in by_key}
    bars = {str(result.get("label") or "ours"): ours, **published}
    # our categories set the groups: a published value for a category we did not measure has no partner
    order = [k for k in CATEGORIES if k in ours] + sorted(k for k in ours if k not in CATEGORIES)
    width = 0.8 / len(bars)
    fig = Figure(figsize=(max(6.0, 1.3 * len(order) + 2), 4.0))
    ax = fig.subplots()
    cmap = colormaps.get_cmap("tab10")
    for i, (column, scores) in enumerate(bars.items()):
        xs = [j + (i - (len(bars) - 1) / 2) * width for j, k in enumerate(order) if k in scores]
        ys = [scores[k] for k in order if k in scores]
        ax.bar(xs, ys, width=width, color=cmap(i % 10), label=column.replace("_", " "),
               edgecolor="black" if i == 0 else "none", linewidth=0.8)
    ax.set_xticks(range(len(order)))
    ax.set_xticklabels([CATEGORIES.get(k, k) for k in order], rotation=15, ha="right")
    ax.set_ylim(0, 1.15)  # room for the legend above the bars
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel("F1 (weighted, mean over variables)")
    game = result.get("game")
    ax.set_title(title or f"AtariARI{' — ' + str(game) if game else ''}")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=len(bars), loc="upper center")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    return out_path
