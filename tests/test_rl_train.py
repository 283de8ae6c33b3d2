"""``ssl-toolkit rl train`` / ``rl eval`` through the real entry point: PPO and DQN on a real Atari game
with a VICReg-pretrained, exported, frozen encoder."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
EXE = Path(sys.executable).parent / "ssl-toolkit"


def run_cli(*args, check=True) -> subprocess.CompletedProcess:
    # one torch thread: on two busy cores more threads are slower, not faster
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(EXE), *map(str, args)], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def pretrained_encoder(tmp_path_factory) -> Path:
    """A real (tiny) pretraining: 100 Pong frames, 3 VICReg steps on nature_cnn, exported."""
    from ssl_toolkit.bench.rl import pretrain_game_encoder

    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("encoder") / "pong_vicreg.safetensors"
    pretrain_game_encoder("pong", path, frames=100, steps=3, batch_size=8)
    return path


def _agent_encoder_weights(agent_zip: Path) -> dict[str, torch.Tensor]:
    """The encoder weights inside an SB3 agent.zip (policy.pth), keyed like the exported file."""
    with zipfile.ZipFile(agent_zip) as zf, zf.open("policy.pth") as f:
        state = torch.load(f, map_location="cpu", weights_only=True)
    prefix = next(k for k in state if ".atari.encoder." in k).split(".atari.encoder.")[0] + ".atari.encoder."
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def test_rl_train_ppo_frozen_pretrained(pretrained_encoder, tmp_path):
    out = tmp_path / "ppo"
    run_cli("rl", "train", "--env", "ALE/Pong-v5", "--encoder", pretrained_encoder, "--algo", "ppo",
            "--steps", 64, "--n-envs", 2, "--seed", 0, "--freeze", "--eval-episodes", 2, "--eval-max-steps", 50,
            "--out", out, "--output", tmp_path / "ppo.json", "--threads", 1)
    summary = json.loads((tmp_path / "ppo.json").read_text())
    assert summary["algo"] == "ppo" and summary["mode"] == "frozen" and summary["game"] == "Pong"
    assert summary["eval"]["episodes"] == 2 and len(summary["eval"]["returns"]) == 2
    assert summary["human_normalized"] == pytest.approx((summary["score"] + 20.7) / (14.6 + 20.7))
    assert (out / "agent.zip").is_file() and (out / "agent.json").is_file() and any((out / "tb").rglob("events.*"))
    # frozen means the agent's encoder is still exactly the exported one
    exported = load_file(str(pretrained_encoder))
    in_agent = _agent_encoder_weights(out / "agent.zip")
    assert set(in_agent) == set(exported)
    for key, value in exported.items():
        assert torch.equal(in_agent[key], value), key


def test_rl_train_dqn_spectral_norm_then_eval(pretrained_encoder, tmp_path):
    out = tmp_path / "dqn"
    run_cli("rl", "train", "--env", "pong", "--encoder", pretrained_encoder, "--algo", "dqn", "--steps", 64,
            "--spectral-norm", "--eval-episodes", 1, "--eval-max-steps", 50, "--out", out,
            "--output", tmp_path / "dqn.json", "--threads", 1, "--quiet")
    summary = json.loads((tmp_path / "dqn.json").read_text())
    assert summary["algo"] == "dqn" and summary["spectral_norm"] is True
    assert summary["hyperparameters"]["learning_starts"] < 64  # a short run still takes gradient steps
    proc = run_cli("rl", "eval", out / "agent.zip", "--episodes", 2, "--max-steps", 50, "--output", tmp_path / "eval.json")
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["algo"] == "dqn" and result["eval"]["episodes"] == 2 and result["eval"]["lengths"] == [50, 50]
    assert "human-normalised" in proc.stdout


def test_rl_train_bad_input_is_a_one_line_error(tmp_path):
    proc = run_cli("rl", "train", "--env", "pong", "--encoder", tmp_path / "missing.safetensors", "--steps", 64,
                   "--out", tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "not found" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("kwargs, error, message", [
    ({"encoder": "scratch", "algo": "ppo", "spectral_norm": True}, ValueError, "spectral-norm"),
    ({"encoder": "scratch", "env": "ALE/Tetris-v5"}, ValueError, "Atari-100k"),
    ({"encoder": "scratch", "algo": "a3c"}, ValueError, "algo"),
    ({"encoder": "random:nature_cnn", "steps": 0}, ValueError, "steps"),
])
def test_train_agent_rejects_bad_arguments_before_any_work(kwargs, error, message, tmp_path):
    from ssl_toolkit.rl.train import train_agent

    with pytest.raises(error, match=message):
        train_agent(**{"env": "pong", "steps": 64, "out_dir": tmp_path, **kwargs})


def test_rl_eval_missing_agent(tmp_path):
    from ssl_toolkit.rl.train import evaluate_saved_agent

    with pytest.raises(FileNotFoundError, match="agent file not found"):
        evaluate_saved_agent(tmp_path / "nope.zip")
