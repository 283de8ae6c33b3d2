"""The CleanRL-style example (examples/dqn_atari_pretrained.py) runs end to end on a real game."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "dqn_atari_pretrained.py"


def test_example_dqn_trains_a_few_hundred_steps_on_an_exported_encoder(tmp_path):
    from ssl_toolkit.backbones import create_backbone
    from ssl_toolkit.export import save_encoder

    torch.manual_seed(0)
    encoder = tmp_path / "encoder.safetensors"
    save_encoder(create_backbone("nature_cnn", in_chans=1, img_size=[84, 84]), encoder, input_size=[84, 84])
    # one thread: several fighting over two busy cores are slower, not faster
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), "--encoder", str(encoder), "--env-id", "ALE/Breakout-v5",
         "--total-timesteps", "300", "--learning-starts", "100", "--buffer-size", "1000",
         "--train-frequency", "4", "--target-network-frequency", "100", "--seed", "0"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "td_loss=" in proc.stdout  # gradient steps happened
    assert "done: {'steps': 300" in proc.stdout
