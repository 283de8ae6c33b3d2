"""Human-normalised Atari scores on the 26 Atari-100k games.

``human_normalized = (score - random) / (human - random)``: 0 is a uniformly random policy, 1 a human
tester (Mnih et al., Nature 2015). The table ships as ``atari100k_scores.json`` with its source
(the rliable tables of Agarwal et al., NeurIPS 2021).
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from importlib import resources

SCORES_FILE = "atari100k_scores.json"


@lru_cache(maxsize=1)
def score_table() -> dict:
    """The shipped table: ``{"description", "source", "games": {Game: {"random", "human"}}}``."""
    return json.loads(resources.files(__package__).joinpath(SCORES_FILE).read_text())


def atari100k_games() -> list[str]:
    """The 26 Atari-100k games, CamelCase as in the literature (``MsPacman``, ``UpNDown``)."""
    return sorted(score_table()["games"])


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def canonical_game(game: str) -> str:
    """The table's name for ``game``: ``pong``, ``ms_pacman``, ``ALE/MsPacman-v5`` → ``Pong``, ``MsPacman``.

    Raises ValueError for a game outside the 26.
    """
    name = game.split("/")[-1]
    name = re.sub(r"(NoFrameskip)?-v\d+$", "", name)
    by_key = {_key(g): g for g in score_table()["games"]}
    if _key(name) not in by_key:
        raise ValueError(f"{game!r} is not one of the 26 Atari-100k games with human/random scores "
                         f"(e.g. {', '.join(atari100k_games()[:4])}, …)")
    return by_key[_key(name)]


def human_normalized(game: str, score: float) -> float:
    """``(score - random) / (human - random)`` for ``game`` (any spelling ``canonical_game`` accepts)."""
    entry = score_table()["games"][canonical_game(game)]
    return (float(score) - entry["random"]) / (entry["human"] - entry["random"])
