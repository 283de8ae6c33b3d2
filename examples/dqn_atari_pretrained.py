"""DQN on Atari with a pretrained encoder as the trunk: a CleanRL-style single file.

Follows CleanRL's ``dqn_atari.py`` (Huang et al., JMLR 2022), itself the DQN of Mnih et al. (Nature
2015), with two changes: the Q-network's trunk is ``ssl_toolkit.rl.AtariEncoder`` (uint8 frame stacks
in, features out, scaling inside; frozen by default), and the environment comes from
``ssl_toolkit.rl.envs.make_atari_env`` (Atari-100k conventions). Whole games are episodes here
(no life-loss terminal) so the printed returns are game scores.

    python examples/dqn_atari_pretrained.py --encoder runs/demo/encoder.safetensors --env-id ALE/Pong-v5
    python examples/dqn_atari_pretrained.py --encoder random:nature_cnn --total-timesteps 100000
"""
from __future__ import annotations

import argparse
import dataclasses
import random
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from stable_baselines3.common.buffers import ReplayBuffer
from torch import nn

from ssl_toolkit.rl.encoder import AtariEncoder
from ssl_toolkit.rl.envs import make_atari_env


@dataclass
class Args:
    encoder: str = "random:nature_cnn"
    """exported encoder (.safetensors / .ckpt) or random:<backbone>"""
    finetune: bool = False
    """train the encoder too (default: frozen)"""
    env_id: str = "ALE/Breakout-v5"
    """the Atari game"""
    seed: int = 1
    """seed of the experiment"""
    total_timesteps: int = 100_000
    """agent steps (4 frames each)"""
    learning_rate: float = 1e-4
    """Adam learning rate"""
    buffer_size: int = 100_000
    """replay memory size"""
    gamma: float = 0.99
    """discount factor"""
    target_network_frequency: int = 1000
    """steps between target-network copies"""
    batch_size: int = 32
    """replay batch size"""
    start_e: float = 1.0
    """initial exploration epsilon"""
    end_e: float = 0.01
    """final exploration epsilon"""
    exploration_fraction: float = 0.1
    """fraction of total_timesteps over which epsilon decays"""
    learning_starts: int = 1600
    """steps of random play before learning"""
    train_frequency: int = 1
    """steps between gradient updates"""


def parse_args() -> Args:
    """argparse from the dataclass: ``--total-timesteps 1000``; booleans are flags."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for f in dataclasses.fields(Args):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            parser.add_argument(flag, action="store_true")
        else:
            parser.add_argument(flag, type=type(f.default), default=f.default)
    return Args(**vars(parser.parse_args()))


class QNetwork(nn.Module):
    """The pretrained trunk + CleanRL's Q-head (512 ReLU units, one output per action)."""

    def __init__(self, encoder: str, n_actions: int, freeze: bool):
        super().__init__()
        self.trunk = AtariEncoder(encoder, frame_stack=4, freeze=freeze)  # uint8 (B, 4, 84, 84) -> (B, F)
        self.head = nn.Sequential(nn.Linear(self.trunk.num_features, 512), nn.ReLU(), nn.Linear(512, n_actions))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


def linear_schedule(start_e: float, end_e: float, duration: int, t: int) -> float:
    slope = (end_e - start_e) / duration
    return max(slope * t + start_e, end_e)


def main(args: Args) -> dict:
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    # same-step autoreset: a finished env's last frame is in info["final_obs"] for the replay memory
    envs = make_atari_env(args.env_id, n_envs=1, seed=args.seed, terminal_on_life_loss=False,
                          autoreset_mode="SameStep")
    n_actions = int(envs.single_action_space.n)
    q_network = QNetwork(args.encoder, n_actions, freeze=not args.finetune).to(device)
    optimizer = torch.optim.Adam([p for p in q_network.parameters() if p.requires_grad], lr=args.learning_rate)
    target_network = QNetwork(args.encoder, n_actions, freeze=not args.finetune).to(device)
    target_network.load_state_dict(q_network.state_dict())

    rb = ReplayBuffer(args.buffer_size, envs.single_observation_space, envs.single_action_space, device,
                      optimize_memory_usage=True, handle_timeout_termination=False)
    start_time = time.time()
    episode_return, returns = 0.0, []
    obs, _ = envs.reset(seed=args.seed)
    for global_step in range(args.total_timesteps):
        epsilon = linear_schedule(args.start_e, args.end_e, int(args.exploration_fraction * args.total_timesteps), global_step)
        if random.random() < epsilon:
            actions = np.array([envs.single_action_space.sample()])
        else:
            with torch.no_grad():
                actions = q_network(torch.as_tensor(obs, device=device)).argmax(dim=1).cpu().numpy()

        next_obs, rewards, terminations, truncations, infos = envs.step(actions)
        episode_return += float(rewards[0])
        if terminations[0] or truncations[0]:
            returns.append(episode_return)
            print(f"global_step={global_step}, episodic_return={episode_return}")
            episode_return = 0.0
        real_next_obs = next_obs.copy()
        for i in np.flatnonzero(terminations | truncations):
            real_next_obs[i] = infos["final_obs"][i]
        # rewards clipped to their sign for learning (DQN); the returns above are raw game scores
        rb.add(obs, real_next_obs, actions, np.sign(rewards), terminations, [{}])
        obs = next_obs

        if global_step > args.learning_starts and global_step % args.train_frequency == 0:
            data = rb.sample(args.batch_size)
            with torch.no_grad():
                target_max, _ = target_network(data.next_observations).max(dim=1)
                td_target = data.rewards.flatten() + args.gamma * target_max * (1 - data.dones.flatten())
            old_val = q_network(data.observations).gather(1, data.actions).squeeze()
            loss = F.mse_loss(td_target, old_val)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if global_step % 100 == 0:
                print(f"global_step={global_step}, td_loss={loss.item():.4f}, "
                      f"SPS={int(global_step / (time.time() - start_time))}")
        if global_step % args.target_network_frequency == 0:
            target_network.load_state_dict(q_network.state_dict())

    envs.close()
    summary = {"steps": args.total_timesteps, "episodes": len(returns),
               "mean_return_last10": float(np.mean(returns[-10:])) if returns else None,
               "seconds": round(time.time() - start_time, 1)}
    print(f"done: {summary}")
    return summary


if __name__ == "__main__":
    main(parse_args())
