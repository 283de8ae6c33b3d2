"""Atari-100k environments (ssl_toolkit.rl.envs) on real ALE games, both back-ends, and the SB3 adapter."""
from __future__ import annotations

import numpy as np
import pytest
from gymnasium.spaces import Discrete

from ssl_toolkit.rl.envs import make_atari_env, make_sb3_atari_env

BACKENDS = ["ale", "gym"]


def _play(env, steps: int, seed: int = 0):
    """Step a vector env with seeded random actions; yield (obs, reward, terminated, truncated, info)."""
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        yield env.step(rng.integers(0, env.single_action_space.n, env.num_envs))


@pytest.mark.parametrize("backend", BACKENDS)
def test_observations_are_uint8_frame_stacks(backend):
    env = make_atari_env("pong", n_envs=2, seed=0, vectorization=backend)
    obs, info = env.reset()
    assert obs.shape == (2, 4, 84, 84) and obs.dtype == np.uint8
    assert env.single_action_space == Discrete(6)  # Pong's minimal action set
    assert env.game == "Pong" and env.spec_id == "ALE/Pong-v5"
    for obs, reward, *_ in _play(env, 20):
        pass
    assert obs.shape == (2, 4, 84, 84) and obs.dtype == np.uint8 and obs.max() > 0
    env.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_seed_same_trajectory(backend):
    runs = []
    for _ in range(2):
        env = make_atari_env("breakout", n_envs=2, seed=3, vectorization=backend)
        obs, _ = env.reset()
        frames = [obs]
        frames += [o for o, *_ in _play(env, 40, seed=1)]
        runs.append(np.stack(frames))
        env.close()
    np.testing.assert_array_equal(runs[0], runs[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_life_loss_is_terminal_for_training_only(backend):
    lives_at_terminal = {}
    for training in (True, False):
        env = make_atari_env("breakout", n_envs=1, seed=0, vectorization=backend, terminal_on_life_loss=training)
        env.reset()
        lives_at_terminal[training] = [int(info["lives"][0]) for _, _, term, _, info in _play(env, 300) if term[0]]
        env.close()
    # training: terminal at each lost life while the game goes on (lives 4, 3, …)
    assert lives_at_terminal[True][:2] == [4, 3]
    # evaluation: terminal only when the game is over
    assert all(lives in (0, 5) for lives in lives_at_terminal[False])


@pytest.mark.parametrize("backend", BACKENDS)
def test_sb3_adapter_clips_rewards_and_reports_raw_game_scores(backend):
    train_env = make_sb3_atari_env("ms_pacman", n_envs=2, seed=0, training=True, vectorization=backend)
    eval_env = make_sb3_atari_env("ms_pacman", n_envs=2, seed=0, training=False, vectorization=backend)
    for env in (train_env, eval_env):
        assert env.observation_space.shape == (4, 84, 84) and env.num_envs == 2
        assert env.reset().shape == (2, 4, 84, 84)
    rng = np.random.default_rng(0)
    train_rewards, eval_rewards, life_dones, episodes = [], [], 0, []
    for _ in range(250):
        actions = rng.integers(0, 9, 2)
        _, r_train, d_train, i_train = train_env.step(actions)
        _, r_eval, d_eval, i_eval = eval_env.step(actions)
        train_rewards += r_train.tolist()
        eval_rewards += r_eval.tolist()
        for done, info in zip(d_train, i_train):
            if done:
                assert info["terminal_observation"].shape == (4, 84, 84)
                life_dones += "episode" not in info
        episodes += [info["episode"] for info in i_eval if "episode" in info]
        assert not any(d and "episode" not in info for d, info in zip(d_eval, i_eval))
    assert set(train_rewards) <= {0.0, 1.0} and 1.0 in train_rewards
    assert max(eval_rewards) >= 10  # MsPacman's dots: raw score
    assert life_dones > 0  # lives lost in 250 random steps, each a done without a game over
    train_env.close()
    eval_env.close()


def test_bad_arguments_raise_value_errors():
    with pytest.raises(ValueError, match="vectorization"):
        make_atari_env("pong", vectorization="threads")
    with pytest.raises(ValueError, match="unknown Atari game"):
        make_atari_env("not_a_game")
    with pytest.raises(ValueError, match="sticky"):
        make_atari_env("pong", sticky=1.5)
