"""The Atari collector on a real ALE game: frame format, RAM pairing, determinism."""
from __future__ import annotations

import io
import json
import tarfile

import gymnasium as gym
import numpy as np
import pytest
from PIL import Image

from ssl_toolkit.data import collect_frames, collect_summary, expand_shards

FRAMES = 200
META_FIELDS = {"game", "episode", "step", "action", "reward", "terminated", "truncated", "lives", "frame"}


def read_collect(out_dir) -> list[dict]:
    """All samples in shard order, read with plain tarfile (independent of the webdataset reader)."""
    samples: dict[str, dict] = {}
    for url in expand_shards(out_dir):
        with tarfile.open(url) as tar:
            for member in tar:
                key, ext = member.name.split(".", 1)
                samples.setdefault(key, {"key": key})[ext] = tar.extractfile(member).read()
    for s in samples.values():
        image = Image.open(io.BytesIO(s["png"]))
        s["mode"], s["frame"] = image.mode, np.asarray(image)
        s["meta"] = json.loads(s["json"])
    return list(samples.values())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for name, seed in [("a", 0), ("b", 0), ("c", 1)]:
        path = tmp_path_factory.mktemp(f"pong_{name}")
        summary = collect_frames("pong", FRAMES, path, seed=seed, frames_per_shard=64, progress=False)
        out[name] = (summary, read_collect(path), path)
    return out


def test_frames_ram_and_metadata(runs):
    summary, samples, path = runs["a"]
    assert len(samples) == FRAMES and len(expand_shards(path)) == 4  # 64 + 64 + 64 + 8
    assert summary["frames"] == FRAMES and summary["env_id"] == "ALE/Pong-v5" and summary["frames_per_second"] > 0
    assert collect_summary(path) == summary
    for s in samples:
        assert s["mode"] == "L" and s["frame"].shape == (210, 160)
        assert len(s["ram"]) == 128
        assert set(s["meta"]) == META_FIELDS and s["meta"]["game"] == "pong"
        m = s["meta"]
        assert s["key"] == f"ep{m['episode']:06d}_t{m['step']:06d}"
    assert len({s["key"] for s in samples}) == FRAMES
    first = samples[0]["meta"]
    assert first["step"] == 0 and first["action"] == -1
    # the first frame comes after 1..30 no-ops plus FIRE and one move of 4 frames each
    assert 1 + 8 <= first["frame"] <= 30 + 8
    assert all(b["meta"]["frame"] - a["meta"]["frame"] == 4 for a, b in zip(samples, samples[1:]))


def test_same_seed_same_frames_and_ram_other_seed_differs(runs):
    a, b, c = (runs[k][1] for k in "abc")
    assert [s["ram"] for s in a] == [s["ram"] for s in b]
    assert all(np.array_equal(x["frame"], y["frame"]) for x, y in zip(a, b))
    assert [s["meta"] for s in a] == [s["meta"] for s in b]
    assert [s["ram"] for s in a] != [s["ram"] for s in c]


def test_ram_belongs_to_the_frame_it_is_stored_with(runs):
    """Replay the run on a bare ALE env (no wrapper of ours): after the same emulator frames, the
    max of the last two screens is the stored frame and the RAM is the stored RAM — from the first
    frame after reset on."""
    import ale_py

    gym.register_envs(ale_py)
    _, samples, _ = runs["a"]
    assert {s["meta"]["episode"] for s in samples} == {0}  # one episode: no resets to replay
    env = gym.make("ALE/Pong-v5", frameskip=1, repeat_action_probability=0.0, obs_type="grayscale").unwrapped
    obs, _ = env.reset(seed=0)
    last = [obs]

    def act(action: int, times: int) -> None:
        for _ in range(times):
            last.append(env.step(action)[0])
            del last[:-2]

    act(0, samples[0]["meta"]["frame"] - 8)  # the no-ops
    act(1, 4)  # FIRE
    act(2, 4)
    for s in samples:
        if s["meta"]["action"] >= 0:
            act(s["meta"]["action"], 4)
        assert np.array_equal(np.maximum(*last), s["frame"]), s["key"]
        assert env.ale.getRAM().tobytes() == s["ram"], s["key"]
    env.close()


@pytest.mark.parametrize("shape", [(210, 160), (210, 160, 3), (7, 5)])
def test_frame_png_decodes_bit_exact(shape):
    from ssl_toolkit.data.atari import _png

    frame = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(_png(frame)))), frame)
