"""Atari frames for pretraining and for the AtariARI probe.

Collects full-size (210×160) frames from an ALE game played by a seeded, uniformly random agent, each
paired with the console RAM of the same moment, into webdataset shards. The environment follows the
AtariARI protocol (Anand et al., "Unsupervised State Representation Learning in Atari", NeurIPS 2019),
i.e. the old ``<Game>NoFrameskip-v4`` + DeepMind-wrapper semantics rebuilt on Gymnasium/ale-py:
``frameskip=1`` and no sticky actions in ALE, then a 4-frame skip that max-pools the last two frames,
1–30 no-ops at reset and FIRE at reset for games that need it. Episodes are whole games; ``lives`` is
stored with every frame, so a consumer that wants AtariARI's episode-per-life split cuts there.

Shard layout, one sample per agent step (key ``ep000012_t000034``, unique in a run)::

    <key>.png   the frame, grayscale (L) or RGB, PNG at low compression
    <key>.ram   the 128 RAM bytes read right after the step that produced the frame
    <key>.json  {"game", "episode", "step", "action", "reward", "terminated", "truncated", "lives", "frame"}

``action`` is the index into the game's minimal action set that led to the frame (-1 for the first
frame of an episode; with ``noop=False`` the agent never picks 0 = NOOP, as AtariARI's agent did not);
``frame`` is the emulator's frame number within the episode.
"""
from __future__ import annotations

import json
import re
import struct
import sys
import time
import zlib
from importlib import resources
from pathlib import Path
from typing import Any, Iterator

import gymnasium as gym
import numpy as np

from ssl_toolkit.data.shards import INDEX_NAME, read_index, write_shards

FRAME_SKIP = 4
NOOP_MAX = 30
_ENV_IDS_FILE = "atari_env_ids.json"


def _registered_ale_ids() -> list[str]:
    import ale_py

    gym.register_envs(ale_py)
    return [k for k in gym.registry if k.startswith("ALE/") and k.endswith("-v5")]


def resolve_env_id(game: str) -> str:
    """Gymnasium id for ``game``.

    A full id (``ALE/Pong-v5``, ``PongNoFrameskip-v4``) is kept. A short name is looked up in the
    AtariARI table shipped as ``atari_env_ids.json`` (``mspacman`` → ``ALE/MsPacman-v5``), else matched
    against the registered ``ALE/<CamelCase>-v5`` ids ignoring case, ``_`` and ``-``
    (``space_invaders`` → ``ALE/SpaceInvaders-v5``).
    """
    ids = _registered_ale_ids()
    if "/" in game or re.search(r"-v\d+$", game):
        if game not in gym.registry:
            raise ValueError(f"unknown Atari env id {game!r}; e.g. 'ALE/Pong-v5' or a short name like 'pong'")
        return game
    key = re.sub(r"[^a-z0-9]", "", game.lower())
    table = json.loads(resources.files(__package__).joinpath(_ENV_IDS_FILE).read_text())["games"]
    if key in table:
        return table[key]["ale_py_v5_id"]
    for env_id in ids:
        if re.sub(r"[^a-z0-9]", "", env_id[len("ALE/"):-len("-v5")].lower()) == key:
            return env_id
    raise ValueError(f"unknown Atari game {game!r}; use a name like 'pong', 'mspacman' or an id like 'ALE/Pong-v5'")


class AtariARIFrames(gym.Wrapper):
    """Frame skip with max-pooling, no-op and FIRE reset, full-size frames; RAM in ``info["ram"]``.

    Wraps an ale-py env made with ``frameskip=1, repeat_action_probability=0.0``. Each ``step``
    repeats the action ``frame_skip`` times and returns the pixel-wise max of the last two frames;
    ``info["ram"]`` is the RAM after the last of them, so frame and RAM describe the same moment (also
    for the first frame after ``reset``). The no-op count comes from the env's seeded ``np_random``.
    Emulator frames are stepped on the env's ALE directly (as ``AtariEnv.step`` does, without building
    an observation and info dict per frame), which doubles the collect speed.
    """

    def __init__(self, env: gym.Env, frame_skip: int = FRAME_SKIP, noop_max: int = NOOP_MAX):
        super().__init__(env)
        if getattr(env.unwrapped, "_frameskip", 1) != 1:
            raise ValueError("AtariARIFrames needs an env made with frameskip=1")
        self.ale = env.unwrapped.ale
        if self.ale.getFloat("repeat_action_probability") != 0.0:
            raise ValueError("AtariARIFrames needs an env made with repeat_action_probability=0.0 (no sticky actions)")
        self.frame_skip = frame_skip
        self.noop_max = noop_max
        minimal = self.ale.getMinimalActionSet()
        self._actions = minimal if len(minimal) == env.action_space.n else self.ale.getLegalActionSet()
        meanings = env.unwrapped.get_action_meanings()
        self.fire_reset = len(meanings) >= 3 and meanings[1] == "FIRE"
        shape = env.observation_space.shape
        self._screen = self.ale.getScreenGrayscale if len(shape) == 2 else self.ale.getScreenRGB
        self._frames = np.zeros((2, *shape), np.uint8)  # the last two screens, newest at self._newest
        self._newest = 0

    def _act(self, action: int, grab: bool = True) -> tuple[float, bool, bool]:
        reward = self.ale.act(self._actions[action])
        terminated, truncated = self.ale.game_over(with_truncation=False), self.ale.game_truncated()
        # only the last two screens of a skip are pooled; reading the others is wasted work
        if grab or terminated or truncated:
            self._newest ^= 1
            self._screen(self._frames[self._newest])
        return float(reward), terminated, truncated

    def _observe(self) -> tuple[np.ndarray, dict[str, Any]]:
        info = {"ram": self.ale.getRAM().copy(), "lives": self.ale.lives(), "frame": self.ale.getEpisodeFrameNumber()}
        return np.maximum(self._frames[0], self._frames[1]), info

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        while True:
            obs, _ = self.env.reset(seed=seed, options=options)
            seed = None  # a game over during the no-ops restarts from the continued RNG stream
            self._frames[self._newest] = obs
            self._frames[self._newest ^ 1] = 0
            done = False
            for _ in range(int(self.env.unwrapped.np_random.integers(1, self.noop_max + 1))):
                _, terminated, truncated = self._act(0)
                done = done or terminated or truncated
            if self.fire_reset and not done:
                for action in (1, 2):  # FIRE, then a move (as the DeepMind FireResetEnv does)
                    for _ in range(self.frame_skip):
                        _, terminated, truncated = self._act(action)
                        done = done or terminated or truncated
            if not done:
                return self._observe()

    def step(self, action: int):
        total = 0.0
        terminated = truncated = False
        for i in range(self.frame_skip):
            reward, terminated, truncated = self._act(action, grab=i >= self.frame_skip - 2)
            total += reward
            if terminated or truncated:
                break
        frame, info = self._observe()
        return frame, total, terminated, truncated, info


def make_atariari_env(game: str, grayscale: bool = True) -> AtariARIFrames:
    """The AtariARI-protocol env for ``game`` (see :func:`resolve_env_id`); observations are uint8
    ``(210, 160)`` (grayscale) or ``(210, 160, 3)`` (RGB)."""
    env_id = resolve_env_id(game)
    env = gym.make(
        env_id, frameskip=1, repeat_action_probability=0.0, full_action_space=False,
        obs_type="grayscale" if grayscale else "rgb",
    )
    return AtariARIFrames(env)


def game_key(env_id: str) -> str:
    """AtariARI's name for a game: ``ALE/MsPacman-v5`` → ``mspacman``."""
    return re.sub(r"[^a-z0-9]", "", env_id.removeprefix("ALE/").split("-")[0].split("NoFrameskip")[0].lower())


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(frame: np.ndarray) -> bytes:
    """A standard 8-bit PNG (grayscale or RGB) of ``frame: (H, W) | (H, W, 3)`` uint8.

    Written directly (filter type 0 on every row, zlib level 1): about 3× faster than PIL's encoder
    for 210×160 frames at the same size, and any PNG reader decodes it bit-exactly.
    """
    height, width = frame.shape[:2]
    color_type = 0 if frame.ndim == 2 else 2
    rows = np.ascontiguousarray(frame).reshape(height, -1)
    raw = np.zeros((height, rows.shape[1] + 1), np.uint8)  # a leading 0 per row = filter "None"
    raw[:, 1:] = rows
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(raw.tobytes(), 1)) + _png_chunk(b"IEND", b""))


def play_random(
    game: str, frames: int, seed: int = 0, grayscale: bool = True, noop: bool = True,
) -> Iterator[tuple[np.ndarray, dict[str, Any], dict[str, Any]]]:
    """Play ``game`` with a seeded, uniformly random agent for ``frames`` agent steps.

    Yields ``(frame, info, step)`` per frame, the first frame of every game included: ``frame`` the
    uint8 screen, ``info`` the env's (``ram``, ``lives``, ``frame``: all of the same moment as the
    screen), ``step`` = ``{"episode", "step", "action", "reward", "terminated", "truncated"}`` with
    ``episode`` counting whole games and ``action`` the index that led to the frame (-1 after a reset).
    A game over resets the env (no-ops, FIRE) and the next frame starts the next episode.

    Args:
        noop: let the agent choose action 0 (NOOP). AtariARI's random agent never did
            (``randint(1, n)``), so its benchmark data uses ``noop=False``.
    """
    env = make_atariari_env(game, grayscale=grayscale)
    rng = np.random.default_rng(seed)
    num_actions = int(env.action_space.n)
    first_action = 0 if noop else 1
    frame, info = env.reset(seed=seed)
    step = {"episode": 0, "step": 0, "action": -1, "reward": 0.0, "terminated": False, "truncated": False}
    try:
        for _ in range(frames):
            yield frame, info, step
            if step["terminated"] or step["truncated"]:
                frame, info = env.reset()
                step = {"episode": step["episode"] + 1, "step": 0, "action": -1, "reward": 0.0,
                        "terminated": False, "truncated": False}
            else:
                action = int(rng.integers(first_action, num_actions))
                frame, reward, terminated, truncated, info = env.step(action)
                step = {"episode": step["episode"], "step": step["step"] + 1, "action": action,
                        "reward": reward, "terminated": terminated, "truncated": truncated}
    finally:
        env.close()


def iter_frames(
    game: str, frames: int, seed: int = 0, grayscale: bool = True, noop: bool = True,
) -> Iterator[dict[str, Any]]:
    """Yield ``frames`` shard samples (see the module docstring) from a seeded random agent
    (:func:`play_random`; ``noop=False`` never chooses NOOP, as AtariARI's agent)."""
    name = game_key(resolve_env_id(game))
    for frame, info, step in play_random(game, frames, seed=seed, grayscale=grayscale, noop=noop):
        meta = {"game": name, **step, "lives": info["lives"], "frame": info["frame"]}
        key = f"ep{step['episode']:06d}_t{step['step']:06d}"
        yield {"__key__": key, "png": _png(frame), "ram": info["ram"].tobytes(), "json": meta}


def collect_frames(
    game: str,
    frames: int,
    out_dir: str | Path,
    seed: int = 0,
    grayscale: bool = True,
    frames_per_shard: int = 10000,
    progress: bool = True,
    noop: bool = True,
) -> dict[str, Any]:
    """Play ``game`` with a seeded uniformly random agent and write ``frames`` frames as shards.

    Args:
        game: short name (``pong``, ``mspacman``, ``space_invaders``) or Gymnasium id (``ALE/Pong-v5``).
        frames: number of samples (agent steps, incl. the first frame of every episode) to write.
        out_dir: output folder: ``<game>-000000.tar, …`` (``pong-000000.tar``) and ``index.json``.
        seed: seeds the emulator, the no-ops and the agent; the same seed gives the same frames and RAM.
        grayscale: store L frames; ``False`` stores RGB.
        frames_per_shard: samples per shard.
        progress: print progress to stderr.
        noop: the agent may choose NOOP; ``False`` draws from actions 1… only, as AtariARI's agent.

    Returns:
        the collect summary (also stored under ``"collect"`` in ``index.json``): ``game``, ``env_id``,
        ``seed``, ``grayscale``, ``frames``, ``episodes``, ``seconds``, ``frames_per_second``, ``shards``.
    """
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    env_id = resolve_env_id(game)
    out_dir = Path(out_dir)
    episodes: set[int] = set()
    start = time.perf_counter()

    def samples() -> Iterator[dict[str, Any]]:
        for i, sample in enumerate(iter_frames(env_id, frames, seed=seed, grayscale=grayscale, noop=noop), 1):
            episodes.add(sample["json"]["episode"])
            if progress and (i % 10000 == 0 or i == frames):
                rate = i / (time.perf_counter() - start)
                print(f"atari collect {env_id}: {i}/{frames} frames, {rate:.0f} frames/s", file=sys.stderr)
            yield sample

    paths = write_shards(samples(), out_dir, prefix=game_key(env_id), max_count=frames_per_shard)
    seconds = time.perf_counter() - start
    summary = {
        "game": game_key(env_id), "env_id": env_id, "seed": seed, "grayscale": grayscale, "frames": frames,
        "episodes": len(episodes), "seconds": round(seconds, 3), "frames_per_second": round(frames / seconds, 1),
        "shards": [Path(p).name for p in paths],
        "env": {"frameskip": 1, "repeat_action_probability": 0.0, "frame_skip": FRAME_SKIP,
                "max_pool_last": 2, "noop_max": NOOP_MAX, "fire_reset": "when action 1 is FIRE", "screen": [210, 160]},
        "agent": "uniform over all actions" if noop else "uniform over actions 1.. (never NOOP, as AtariARI)",
    }
    index = read_index(out_dir) or {}
    index["collect"] = summary
    (out_dir / INDEX_NAME).write_text(json.dumps(index, indent=1))
    return summary


def collect_summary(out_dir: str | Path) -> dict[str, Any]:
    """The summary :func:`collect_frames` stored in ``out_dir/index.json``."""
    index = read_index(out_dir)
    if not index or "collect" not in index:
        raise FileNotFoundError(f"no Atari collect summary in {str(Path(out_dir) / INDEX_NAME)!r}")
    return index["collect"]
