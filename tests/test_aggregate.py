"""IQM and stratified bootstrap (ssl_toolkit.rl.aggregate) against direct computations; the score table."""
from __future__ import annotations

import numpy as np
import pytest

from ssl_toolkit.rl.aggregate import aggregate, iqm, stratified_bootstrap_ci
from ssl_toolkit.rl.scores import atari100k_games, canonical_game, human_normalized, score_table


def _trim_mean_25(values) -> float:
    """The IQM as scipy.stats.trim_mean(x, 0.25) computes it, written out: drop floor(n/4) per end."""
    x = sorted(float(v) for v in np.ravel(values))
    k = len(x) // 4
    kept = x[k:len(x) - k]
    return sum(kept) / len(kept)


@pytest.mark.parametrize("shape", [(3, 3), (5, 4), (2, 7), (1, 1), (10, 26)])
def test_iqm_equals_direct_trimmed_mean(shape):
    scores = np.random.default_rng(sum(shape)).normal(size=shape)
    assert iqm(scores) == pytest.approx(_trim_mean_25(scores), abs=1e-12)


def test_iqm_ignores_the_outer_quartiles():
    scores = np.array([[-1e9, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 1e9]])  # 8 values: drop 2 per end
    assert iqm(scores) == pytest.approx((2 + 3 + 4 + 5) / 4)


def test_stratified_bootstrap_matches_an_explicit_loop():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(3, 4))
    low, high = stratified_bootstrap_ci(scores, reps=300, seed=7)
    # the same draws, one game (column) at a time, statistic computed directly
    draw = np.random.default_rng(7)
    stats = []
    for _ in range(300):
        rows = draw.integers(0, 3, size=(3, 4))
        resampled = np.stack([scores[rows[:, g], g] for g in range(4)], axis=1)
        stats.append(_trim_mean_25(resampled))
    assert (low, high) == pytest.approx(tuple(np.quantile(stats, [0.025, 0.975])), abs=1e-12)
    assert low <= iqm(scores) <= high


def test_bootstrap_resamples_within_games_only():
    # every run of game 0 scores 0 and of game 1 scores 10: any within-game resample keeps the
    # mean at 5, a resample across games would not
    scores = np.array([[0.0, 10.0]] * 4)
    agg = aggregate(scores, reps=200)
    assert agg["mean_ci"] == pytest.approx([5.0, 5.0])
    assert agg["iqm"] == pytest.approx(5.0)


def test_aggregate_mean_and_median_follow_rliable():
    scores = np.arange(12, dtype=float).reshape(3, 4)
    agg = aggregate(scores, reps=50)
    assert agg["mean"] == pytest.approx(scores.mean())
    assert agg["median"] == pytest.approx(np.median(scores.mean(axis=0)))
    assert (agg["runs"], agg["games"]) == (3, 4)


def test_bad_scores_raise():
    with pytest.raises(ValueError, match="empty"):
        iqm(np.array([]))
    with pytest.raises(ValueError, match="runs, games"):
        stratified_bootstrap_ci(np.zeros(5))


def test_score_table_has_the_26_games_with_a_source():
    table = score_table()
    assert len(atari100k_games()) == 26
    assert "rliable" in table["source"]
    for game, entry in table["games"].items():
        assert entry["human"] > entry["random"], game
    # spot values of the published table
    assert table["games"]["Pong"] == {"random": -20.7, "human": 14.6}
    assert table["games"]["MsPacman"] == {"random": 307.3, "human": 6951.6}


@pytest.mark.parametrize("spelling", ["pong", "Pong", "ALE/Pong-v5", "PongNoFrameskip-v4"])
def test_human_normalized(spelling):
    assert human_normalized(spelling, -20.7) == pytest.approx(0.0)
    assert human_normalized(spelling, 14.6) == pytest.approx(1.0)
    assert canonical_game("ms_pacman") == "MsPacman" and canonical_game("up_n_down") == "UpNDown"


def test_unknown_game_is_a_value_error():
    with pytest.raises(ValueError, match="26 Atari-100k games"):
        human_normalized("Tetris", 1.0)
