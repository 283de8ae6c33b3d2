"""AtariARI probing (ssl_toolkit.eval.atariari) on real Pong frames, small and seeded."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ssl_toolkit.eval.atariari import (CATEGORIES, LinearProbes, ProbeConfig, ProbeFrames, collect_probe_frames,
                                       entropy_nats, game_scores, game_variables, load_annotations,
                                       split_probe_data, train_probes, variable_categories, weighted_f1)

ROOT = Path(__file__).resolve().parents[1]
EXE = Path(sys.executable).parent / "ssl-toolkit"
PONG_SCORES = (13, 14)  # enemy_score, player_score RAM bytes (paper annotations)


def run_cli(*args, check=True) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([str(EXE), *map(str, args)], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def pong() -> ProbeFrames:
    # ~5 random-agent games of Pong (a game lasts ~850 agent steps)
    return collect_probe_frames("pong", 4500, seed=0)


def test_annotations_and_categories():
    _, pong_vars = game_variables("pong")
    assert pong_vars == {"player_y": 51, "enemy_y": 50, "ball_x": 49, "ball_y": 54, "enemy_score": 13, "player_score": 14}
    breakout = load_annotations("paper")["breakout"]
    assert breakout["block_bit_map_0"] == 0 and breakout["block_bit_map_29"] == 29  # list → one variable per byte
    assert len(load_annotations("paper")) == 22 and len(load_annotations("current")) == 24
    assert variable_categories("ball_x") == ["Small Loc."]
    assert variable_categories("missiles_y") == ["Small Loc."]
    assert variable_categories("player_y") == ["Agent Loc."]
    assert variable_categories("enemy_car_x_3") == ["Other Loc."]
    assert variable_categories("num_lives") == ["Score/Clock/Lives/Display"]
    assert variable_categories("block_bit_map_7") == ["Misc."]
    assert variable_categories("player_direction") == ["Misc."]
    # the game score is the mean over the categories present, not over variables
    scores = game_scores({"ball_x": 1.0, "ball_y": 0.0, "player_y": 0.5}, {"ball_x": 1.0, "ball_y": 1.0, "player_y": 1.0})
    assert scores["categories_f1"] == {"Small Loc.": 0.5, "Agent Loc.": 0.5}
    assert scores["f1"] == pytest.approx(0.5) and scores["mean_all_variables_f1"] == pytest.approx(0.5)
    assert set(scores["categories_f1"]) <= set(CATEGORIES)


def test_unknown_game_errors():
    with pytest.raises(ValueError, match="unknown Atari game"):
        game_variables("notagame")
    with pytest.raises(ValueError, match="no AtariARI RAM annotations"):
        game_variables("skiing", "paper")  # a real ALE game the paper did not annotate


def test_labels_are_the_ram_of_the_same_frame(pong):
    """Pong's score digits (rows 1–20) change when the score bytes do (the display may trail the RAM by
    one step when the byte changes on the last emulator frame of a skip, never lead it); the first
    frame after a reset pairs the 0–0 screen with 0–0 RAM (the original paired it with the last game's)."""
    scores = pong.ram[:, PONG_SCORES].astype(int)
    same_episode = pong.episode[1:] == pong.episode[:-1]
    ram_change = np.flatnonzero((np.abs(np.diff(scores, axis=0)).sum(1) > 0) & same_episode) + 1
    top = pong.frames[:, 1:21].astype(int)
    screen_change = set((np.flatnonzero(np.abs(np.diff(top, axis=0)).sum((1, 2)) > 0) + 1).tolist())
    assert len(ram_change) > 20
    lagged = 0
    for t in ram_change:
        assert t - 1 not in screen_change or t in screen_change, f"screen changed before the RAM at {t}"
        assert t in screen_change or t + 1 in screen_change, f"score byte changed at {t} without the digits"
        lagged += t not in screen_change
    assert lagged < len(ram_change) / 2
    starts = np.flatnonzero(np.diff(pong.episode)) + 1
    assert len(starts) >= 4
    for t in starts:
        assert scores[t].tolist() == [0, 0]
        assert np.array_equal(pong.frames[t, 1:21], pong.frames[0, 1:21])  # the 0–0 digits
        assert scores[t - 1].max() == 21  # the game before ended 21 – x


def test_entropy_filter(pong):
    _, variables = game_variables("pong")
    constant = int(np.flatnonzero((pong.ram == pong.ram[0]).all(0))[0])
    split = split_probe_data(pong, {**variables, "a_constant_byte": constant}, seed=0)
    assert "a_constant_byte" in split.info["dropped_low_entropy"]
    assert split.info["entropy"]["a_constant_byte"] == 0.0
    assert split.variables == [v for v, e in split.info["entropy"].items() if e >= 0.6]
    # natural-log entropy of each column's value distribution
    values = np.array([[0, 5], [0, 5], [1, 5], [2, 5]], np.uint8)
    expected = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert np.allclose(entropy_nats(values), [expected, 0.0])


def test_split_by_episode_without_overlap_and_dedup(pong):
    _, variables = game_variables("pong")
    split = split_probe_data(pong, variables, seed=0)
    parts = [set(pong.episode[idx].tolist()) for idx in (split.train, split.val, split.test)]
    assert all(parts) and not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    n_eps = split.info["episodes_kept"]
    n_train, n_val = int(0.7 * n_eps), max(int(0.8 * n_eps), int(0.7 * n_eps) + 1)
    assert split.info["split_episodes"] == {"train": n_train, "val": n_val - n_train, "test": n_eps - n_val}
    seen = set(pong.digest[split.train].tolist()) | set(pong.digest[split.val].tolist())
    assert not seen & set(pong.digest[split.test].tolist())
    # a test frame equal to a training frame goes, and so does one equal to a pre-training frame
    a, b = split.test[5], split.test[7]
    digest = pong.digest.copy()
    digest[a] = digest[split.train[0]]
    altered = ProbeFrames(pong.frames, pong.ram, pong.episode, digest, skipped_digests={bytes(digest[b])})
    split2 = split_probe_data(altered, variables, seed=0)
    removed = set(split.test.tolist()) - set(split2.test.tolist())
    assert {a, b} <= removed and set(split2.test.tolist()) <= set(split.test.tolist())
    assert all(digest[i] in (digest[a], digest[b]) for i in removed)
    assert split2.info["test_duplicates_removed"] == split.info["test_duplicates_removed"] + len(removed)


def test_too_few_episodes_is_an_error():
    data = collect_probe_frames("pong", 300, seed=0, keep_frames=False)
    with pytest.raises(ValueError, match="raise --frames"):
        split_probe_data(data, game_variables("pong")[1])


def _reference_probe(x_tr, y_tr, x_val, y_val, v, seed, cfg):
    """Variable v alone: nn.Linear + torch.optim.Adam + ReduceLROnPlateau + the original's early stopping,
    on the same batches and from the same initial weights as the batched probes."""
    gen = torch.Generator().manual_seed(seed)
    classes = [np.unique(y_tr[:, u].numpy()) for u in range(y_tr.shape[1])]
    init = LinearProbes(classes, x_tr.shape[1], gen)  # draws the same initial weights from gen
    cols = (init.column_var == v).nonzero().squeeze(1)
    values = torch.as_tensor(classes[v])
    layer = nn.Linear(x_tr.shape[1], len(cols))
    with torch.no_grad():
        layer.weight.copy_(init.weight[:, cols].T)
        layer.bias.copy_(init.bias[cols])
    opt = torch.optim.Adam(layer.parameters(), lr=cfg.lr, eps=cfg.eps)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", patience=cfg.lr_patience,
                                                       factor=cfg.lr_factor, min_lr=cfg.min_lr)
    target = torch.searchsorted(values, y_tr[:, v].long())
    best, count, best_state, epochs = None, 0, None, 0
    for _ in range(cfg.max_epochs):
        order = torch.randperm(len(x_tr), generator=gen)
        for batch in order.split(cfg.batch_size):
            opt.zero_grad()
            nn.functional.cross_entropy(layer(x_tr[batch]), target[batch]).backward()
            opt.step()
        epochs += 1
        with torch.no_grad():
            acc = (values[layer(x_val).argmax(1)] == y_val[:, v]).float().mean().item()
        if best is None or acc > best:
            best, count, best_state = acc, 0, [p.detach().clone() for p in layer.parameters()]
        else:
            count += 1
        if count >= cfg.patience:
            break
        sched.step(acc)
    return best_state, epochs, best


def test_batched_probes_equal_independent_training():
    torch.manual_seed(0)
    n, d = 600, 16
    x = torch.randn(n, d)
    # three variables: a separable one, a noisy one, a binary one (different class counts)
    y = torch.stack([
        (x[:, 0] > 0).long() * 7 + (x[:, 1] > 0).long() * 3,
        ((x[:, 2] + torch.randn(n)) > 0).long() * 200 + torch.randint(0, 3, (n,)),
        (x[:, 3] > 0.5).long(),
    ], 1).to(torch.uint8)
    x_tr, y_tr, x_val, y_val = x[:400], y[:400], x[400:], y[400:]
    cfg = ProbeConfig(lr=3e-3, max_epochs=25, patience=4, lr_patience=1, batch_size=32)
    probes, history = train_probes(x_tr, y_tr, x_val, y_val, seed=3, config=cfg)
    assert min(history["epochs"]) < cfg.max_epochs  # early stopping and lr cuts were exercised
    assert min(history["final_lr"]) < cfg.lr
    for v in range(3):
        (w, b), epochs, best = _reference_probe(x_tr, y_tr, x_val, y_val, v, 3, cfg)
        cols = (probes.column_var == v).nonzero().squeeze(1)
        assert history["epochs"][v] == epochs
        assert history["best_val_accuracy"][v] == pytest.approx(best)
        torch.testing.assert_close(probes.weight[:, cols].T, w, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(probes.bias[cols], b, atol=1e-5, rtol=1e-4)
    # the linearly separable variables are read off far above their majority rate (~0.25, ~0.7)
    separable = [0, 2]
    probes, _ = train_probes(x_tr, y_tr[:, separable], x_val, y_val[:, separable], seed=0,
                             config=ProbeConfig(lr=1e-2, batch_size=32))
    assert ((probes.predict(x_val) == y_val[:, separable]).float().mean(0) > 0.8).all()


def test_weighted_f1_matches_the_formula():
    gen = np.random.default_rng(0)
    target = gen.integers(0, 6, (300, 3))
    pred = np.where(gen.random((300, 3)) < 0.6, target, gen.integers(0, 8, (300, 3)))
    pred[:, 2] = 255  # a class never in the target: all false positives
    ours = weighted_f1(torch.as_tensor(pred), torch.as_tensor(target))
    for v in range(3):
        t, p = target[:, v], pred[:, v]
        total = 0.0
        for c in np.union1d(t, p):
            tp = np.sum((p == c) & (t == c))
            precision = tp / np.sum(p == c) if np.sum(p == c) else 0.0
            recall = tp / np.sum(t == c) if np.sum(t == c) else 0.0
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            total += f1 * np.sum(t == c) / len(t)
        assert ours[v].item() == pytest.approx(total, abs=1e-6)
    assert ours[2].item() == 0.0


def test_cli_probe_random_cnn_and_majority(tmp_path):
    out = tmp_path / "pong_random.json"
    proc = run_cli("probe", "atariari", "--encoder", "random:atariari_cnn", "--game", "pong", "--frames", 4000,
                   "--seed", 1, "--output", out)
    assert "game score" in proc.stdout and "random-cnn" in proc.stdout
    result = json.loads(out.read_text())
    assert result["game"] == "pong" and result["encoder"] == "random:atariari_cnn" and result["annotations"] == "paper"
    assert result["frames"] == 4000 and result["published"]["f1"]["random-cnn"] == 0.17
    assert 0.0 <= result["score_f1"] <= 1.0 and set(result["categories_f1"]) <= set(CATEGORIES)
    assert all(v["epochs"] >= 1 for v in result["variables"].values())

    out = tmp_path / "pong_majority.json"
    run_cli("probe", "atariari", "--encoder", "majority", "--game", "pong", "--frames", 4000, "--seed", 1,
            "--output", out)
    majority = json.loads(out.read_text())
    assert majority["data"]["split_frames"] == result["data"]["split_frames"]  # the same frames and split
    assert 0.0 <= majority["score_f1"] <= 1.0


@pytest.mark.parametrize("args, message", [
    (["--encoder", "majority", "--game", "notagame"], "unknown Atari game"),
    (["--encoder", "no/such/encoder.safetensors", "--game", "pong"], "not found"),
    (["--encoder", "random:atariari_cnn", "--game", "pong", "--annotations", "current", "--frames", "0"], "frames"),
])
def test_cli_errors(args, message):
    proc = run_cli("probe", "atariari", *args, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_an_encoder_trained_at_another_size_is_probed_on_resized_frames(pong):
    # an RL encoder (84×84): frames are resized for it, and the result states the deviation
    from ssl_toolkit.backbones import create_backbone
    from ssl_toolkit.eval.atariari import encode_frames, run_atariari_probe

    torch.manual_seed(0)
    encoder = create_backbone("nature_cnn", in_chans=1, img_size=[84, 84])
    encoder.encoder_meta = {"method": "test", "in_chans": 1, "input_size": [84, 84], "mean": [0.0], "std": [1.0]}
    frames = pong.frames[:4]
    resized = torch.nn.functional.interpolate(torch.from_numpy(frames).unsqueeze(1).float(), size=(84, 84),
                                              mode="bilinear", antialias=True) / 255.0
    with torch.no_grad():
        expected = encoder.eval()(resized)
    got = encode_frames(encoder, frames, bf16=False, size=(84, 84))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)

    result = run_atariari_probe(encoder, "pong", seed=0, data=pong, quiet=True)
    assert "resized from 210x160 to 84x84" in result["protocol_deviation"]
    assert 0.0 <= result["score_f1"] <= 1.0
    assert run_atariari_probe("random:atariari_cnn", "pong", seed=0, data=pong, quiet=True)["protocol_deviation"] is None
