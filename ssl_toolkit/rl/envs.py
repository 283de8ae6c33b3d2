"""Atari environments with the Atari-100k conventions, as gymnasium vector envs and as SB3 VecEnvs.

The conventions are those of Kaiser et al., "Model-Based Reinforcement Learning for Atari" (SimPLe,
ICLR 2020), which defined the 100k-step benchmark, and of the DQN line before it (Mnih et al.,
Nature 2015; Machado et al., JAIR 2018 for the sticky-action option):

- frame skip 4 with a max-pool over the last two frames, up to 30 no-ops at reset, FIRE at reset for
  games that need it, 84×84 grayscale, a stack of the last 4 frames, minimal action set;
- no sticky actions by default (``sticky`` sets ALE's repeat-action probability);
- episodes cut at 27,000 agent steps (108k emulator frames);
- for training only, a lost life is signalled as terminal while the game goes on (DeepMind's
  ``EpisodicLifeEnv``: the next observation continues the same game); evaluation plays whole games.

Two back-ends give the same observations, uint8 ``(n_envs, frame_stack, size, size)``:

- ``"ale"``: ale-py's ``AtariVectorEnv``, which runs every step of the preprocessing above in C++
  threads (its own life-loss signal, ``life_loss_info``, has exactly the semantics above);
- ``"gym"``: one ``gym.make("ALE/<Game>-v5", frameskip=1)`` per env wrapped in gymnasium's
  ``AtariPreprocessing`` and ``FrameStackObservation`` plus SB3's ``FireResetEnv``/``EpisodicLifeEnv``,
  in a ``SyncVectorEnv`` (``AsyncVectorEnv`` for ``n_envs > 1`` with ``async_envs=True``).

``make_atari_env`` returns the gymnasium vector env (raw, unclipped rewards). SB3 agents need their
own ``VecEnv`` type, so ``make_sb3_atari_env`` wraps the same vector env (run without life-loss
terminals, same-step autoreset) in :class:`SB3AtariVecEnv`, a small adapter that adds the life-loss
terminal, clips rewards to their sign for training and reports the raw score of each whole game in
``info["episode"]`` the way SB3's ``Monitor`` does, so SB3's logged ``ep_rew_mean`` is the game score.
We adapt rather than use SB3's own ``make_atari_env`` because its ``AtariWrapper`` stacks frames
channels-last through ``VecFrameStack`` and clips rewards before any monitor can see the raw score;
one env factory for gymnasium users, CleanRL-style code and SB3 keeps the three identical.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvStepReturn

from ssl_toolkit.data.atari import FRAME_SKIP, resolve_env_id

VECTORIZATIONS = ("auto", "ale", "gym")


def atari_game_name(game: str) -> str:
    """Canonical CamelCase game name used by the score tables: ``pong`` / ``ALE/Pong-v5`` → ``Pong``."""
    env_id = resolve_env_id(game)
    return env_id.split("/")[-1].split("-")[0].split("NoFrameskip")[0]


def _rom_name(env_id: str) -> str:
    """ale-py's ROM id (``ms_pacman``) for a gymnasium id (``ALE/MsPacman-v5``)."""
    return gym.spec(env_id).kwargs["game"]


def _has_ale_vector() -> bool:
    try:
        from ale_py.vector_env import AtariVectorEnv  # noqa: F401
    except ImportError:
        return False
    return True


def _make_gym_single(env_id: str, seed: int, frame_stack: int, size: int, grayscale: bool, noop_max: int,
                     sticky: float, terminal_on_life_loss: bool, max_frames: int) -> Callable[[], gym.Env]:
    """A thunk building one preprocessed env (for gymnasium's vector envs)."""

    def thunk() -> gym.Env:
        from stable_baselines3.common.atari_wrappers import EpisodicLifeEnv, FireResetEnv

        env = gym.make(env_id, frameskip=1, repeat_action_probability=sticky, full_action_space=False,
                       max_num_frames_per_episode=max_frames)
        env = gym.wrappers.AtariPreprocessing(env, noop_max=noop_max, frame_skip=FRAME_SKIP, screen_size=size,
                                              grayscale_obs=grayscale, scale_obs=False)
        if "FIRE" in env.unwrapped.get_action_meanings() and len(env.unwrapped.get_action_meanings()) >= 3:
            env = FireResetEnv(env)
        if terminal_on_life_loss:
            env = EpisodicLifeEnv(env)
        env = gym.wrappers.FrameStackObservation(env, frame_stack)
        env.action_space.seed(seed)
        return env

    return thunk


def make_atari_env(
    game: str, n_envs: int = 1, seed: int = 0, frame_stack: int = 4, size: int = 84, grayscale: bool = True,
    noop_max: int = 30, sticky: float = 0.0, terminal_on_life_loss: bool = True, max_episode_steps: int = 27_000,
    vectorization: str = "auto", autoreset_mode: str = "NextStep", async_envs: bool = False,
) -> gym.vector.VectorEnv:
    """A gymnasium vector env of ``game`` with the Atari-100k conventions (see the module docstring).

    Args:
        game: ``pong``, ``ms_pacman``, ``ALE/Pong-v5``, …
        n_envs: parallel environments.
        seed: env ``i`` is seeded with ``seed + i`` at the first ``reset()`` (call ``reset(seed=seed)``).
        frame_stack, size, grayscale: observation ``(n_envs, frame_stack, size, size)`` uint8 (grayscale) or
            ``(n_envs, frame_stack, size, size, 3)`` (RGB).
        noop_max: up to this many no-op actions at reset (drawn uniformly).
        sticky: ALE repeat-action probability (0: none, the Atari-100k setting; 0.25: Machado et al.).
        terminal_on_life_loss: ``terminated`` when a life is lost while the game continues (training
            only: pass False for evaluation envs).
        max_episode_steps: agent steps per episode at most (truncation), ×4 emulator frames.
        vectorization: ``"ale"`` (ale-py's ``AtariVectorEnv``), ``"gym"`` (gymnasium wrappers) or
            ``"auto"`` (``"ale"`` when ale-py has it).
        autoreset_mode: gymnasium's ``"NextStep"`` (default) or ``"SameStep"`` (final observation in
            ``info["final_obs"]``).
        async_envs: ``"gym"`` back-end only: ``AsyncVectorEnv`` (a process per env) instead of sync.

    Returns:
        A ``gymnasium.vector.VectorEnv`` with raw (unclipped) rewards and ``info["lives"]``; its
        ``spec_id`` attribute holds the gymnasium id and ``game`` the score-table name.
    """
    if vectorization not in VECTORIZATIONS:
        raise ValueError(f"vectorization must be one of {VECTORIZATIONS}, got {vectorization!r}")
    if n_envs < 1:
        raise ValueError(f"n_envs must be at least 1, got {n_envs}")
    if not 0.0 <= sticky < 1.0:
        raise ValueError(f"sticky (repeat-action probability) must be in [0, 1), got {sticky}")
    env_id = resolve_env_id(game)
    mode = AutoresetMode(autoreset_mode)
    max_frames = max_episode_steps * FRAME_SKIP
    if vectorization == "auto":
        vectorization = "ale" if _has_ale_vector() else "gym"
    if vectorization == "ale":
        if not _has_ale_vector():
            raise ValueError("vectorization='ale' needs ale-py >= 0.10 (AtariVectorEnv); use vectorization='gym'")
        from ale_py.vector_env import AtariVectorEnv

        env = AtariVectorEnv(
            _rom_name(env_id), n_envs, img_height=size, img_width=size, grayscale=grayscale, stack_num=frame_stack,
            frameskip=FRAME_SKIP, maxpool=True, noop_max=noop_max, use_fire_reset=True,
            # life_loss_info: terminal on a lost life while the game continues (DeepMind's semantics);
            # episodic_life would restart the whole game instead.
            life_loss_info=terminal_on_life_loss, episodic_life=False, reward_clipping=False,
            repeat_action_probability=sticky, full_action_space=False, max_num_frames_per_episode=max_frames,
            autoreset_mode=mode, num_threads=min(n_envs, 2),
        )
        # ale-py seeds env i with seed + i on reset(seed=seed); remember it for the first reset
        env = _SeededReset(env, seed)
    else:
        thunks = [_make_gym_single(env_id, seed + i, frame_stack, size, grayscale, noop_max, sticky,
                                   terminal_on_life_loss, max_frames) for i in range(n_envs)]
        # ale-py's AtariEnv puts "lives" in every info, so both back-ends report them the same way
        if async_envs and n_envs > 1:
            env = gym.vector.AsyncVectorEnv(thunks, autoreset_mode=mode)
        else:
            env = gym.vector.SyncVectorEnv(thunks, autoreset_mode=mode)
        env = _SeededReset(env, seed)
    env.spec_id = env_id
    env.game = atari_game_name(env_id)
    env.backend = vectorization
    return env


class _SeededReset(gym.vector.VectorWrapper):
    """Seeds the first ``reset()`` with ``seed`` when the caller passes none, so envs made with the same
    seed replay the same no-op starts without every caller remembering to pass it."""

    def __init__(self, env: gym.vector.VectorEnv, seed: int):
        super().__init__(env)
        self._first_seed: int | None = seed

    def reset(self, *, seed=None, options=None):
        if seed is None and self._first_seed is not None:
            seed = self._first_seed
        self._first_seed = None
        return self.env.reset(seed=seed, options=options)


class SB3AtariVecEnv(VecEnv):
    """Stable-Baselines3 ``VecEnv`` over a gymnasium Atari vector env made with
    ``terminal_on_life_loss=False, autoreset_mode="SameStep"`` (see :func:`make_sb3_atari_env`).

    SB3's contract: ``step_wait`` returns ``(obs, rewards, dones, infos)`` with a list of per-env info
    dicts; an env that is done has already been reset, its last observation in
    ``info["terminal_observation"]`` and ``info["TimeLimit.truncated"]`` telling truncation from
    termination. On top of that:

    - ``terminal_on_life_loss``: a lost life is a ``done`` (the agent bootstraps with 0) but the game
      is not reset; the returned observation continues it and ``terminal_observation`` is that same
      observation (DeepMind's ``EpisodicLifeEnv``);
    - ``clip_reward``: the agent sees ``sign(reward)``; ``info["episode"] = {"r", "l", "t"}`` (raw game
      score, agent steps, seconds since start) is added when a whole game ends, as SB3's ``Monitor``
      does, so ``model.ep_info_buffer`` holds game scores.
    """

    def __init__(self, venv: gym.vector.VectorEnv, terminal_on_life_loss: bool = True, clip_reward: bool = True):
        super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)
        self.venv = venv
        self.terminal_on_life_loss = terminal_on_life_loss
        self.clip_reward = clip_reward
        self.game = getattr(venv, "game", None)
        self.spec_id = getattr(venv, "spec_id", None)
        self._actions: np.ndarray | None = None
        self._returns = np.zeros(self.num_envs, np.float64)
        self._lengths = np.zeros(self.num_envs, np.int64)
        self._lives = np.zeros(self.num_envs, np.int64)
        self._t0 = time.time()
        self.render_mode = None

    def reset(self) -> np.ndarray:
        # VecEnv.seed(s) stores s, s+1, …; both back-ends seed env i with seed + i from one int
        obs, info = self.venv.reset(seed=self._seeds[0])
        self._reset_seeds()
        self._returns[:] = 0
        self._lengths[:] = 0
        self._lives[:] = np.asarray(info.get("lives", np.zeros(self.num_envs)))
        self.reset_infos = [{} for _ in range(self.num_envs)]
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions, dtype=np.int64).reshape(self.num_envs)

    def step_wait(self) -> VecEnvStepReturn:
        obs, reward, terminated, truncated, info = self.venv.step(self._actions)
        reward = np.asarray(reward, np.float64)
        self._returns += reward
        self._lengths += 1
        game_over = np.asarray(terminated) | np.asarray(truncated)
        lives = np.asarray(info.get("lives", self._lives))
        life_lost = (lives < self._lives) & (lives > 0) & ~game_over if self.terminal_on_life_loss else np.zeros_like(game_over)
        final_obs = info.get("final_obs")
        infos: list[dict[str, Any]] = []
        for i in range(self.num_envs):
            env_info: dict[str, Any] = {}
            if game_over[i]:
                env_info["terminal_observation"] = final_obs[i] if final_obs is not None else obs[i]
                env_info["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
                env_info["episode"] = {"r": float(self._returns[i]), "l": int(self._lengths[i]),
                                       "t": round(time.time() - self._t0, 6)}
                self._returns[i] = 0
                self._lengths[i] = 0
            elif life_lost[i]:
                env_info["terminal_observation"] = obs[i]
                env_info["TimeLimit.truncated"] = False
            env_info["lives"] = int(lives[i])
            infos.append(env_info)
        # after a reset the lives count starts again; a game over's returned obs is the new game's
        self._lives = lives.astype(np.int64)
        dones = game_over | life_lost
        rewards = np.sign(reward) if self.clip_reward else reward
        return obs, rewards.astype(np.float32), dones, infos

    def close(self) -> None:
        self.venv.close()

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return [getattr(self, attr_name, None) for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        setattr(self, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices: VecEnvIndices = None, **method_kwargs) -> list[Any]:
        raise NotImplementedError(f"SB3AtariVecEnv has no per-env methods (asked for {method_name!r})")

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        # episode statistics come from this adapter, so SB3 need not warn about a missing Monitor
        from stable_baselines3.common.monitor import Monitor

        return [wrapper_class is Monitor for _ in self._get_indices(indices)]

    def _get_indices(self, indices: VecEnvIndices) -> Sequence[int]:
        if indices is None:
            return range(self.num_envs)
        return [indices] if isinstance(indices, int) else indices


def make_sb3_atari_env(
    game: str, n_envs: int = 1, seed: int = 0, training: bool = True, clip_reward: bool | None = None,
    **kwargs,
) -> SB3AtariVecEnv:
    """An SB3 ``VecEnv`` of ``game`` with the Atari-100k conventions.

    Args:
        game, n_envs, seed: as for :func:`make_atari_env` (plus its other keyword arguments).
        training: True: life loss is terminal and rewards are clipped to their sign; False (evaluation):
            whole games, raw rewards.
        clip_reward: overrides the clipping that ``training`` implies.

    Returns:
        :class:`SB3AtariVecEnv`; observations uint8 ``(n_envs, 4, 84, 84)``.
    """
    if "terminal_on_life_loss" in kwargs or "autoreset_mode" in kwargs:
        raise ValueError("make_sb3_atari_env sets terminal_on_life_loss/autoreset_mode itself; pass training=")
    venv = make_atari_env(game, n_envs=n_envs, seed=seed, terminal_on_life_loss=False,
                          autoreset_mode="SameStep", **kwargs)
    vec = SB3AtariVecEnv(venv, terminal_on_life_loss=training, clip_reward=training if clip_reward is None else clip_reward)
    vec.seed(seed)
    return vec
