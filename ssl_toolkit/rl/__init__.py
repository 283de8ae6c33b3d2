"""Pretrained encoders in Atari agents: ``AtariEncoder`` (plain PyTorch), ``make_atari_env``
(gymnasium + ale-py with the Atari-100k conventions), ``ssl_toolkit.rl.sb3`` (Stable-Baselines3)
and ``ssl_toolkit.rl.heads`` (spectral-normalised Q-heads).

The names are imported on first use, so ``import ssl_toolkit.rl`` (e.g. by the CLI) stays cheap.
"""
import importlib

# public name -> module that defines it
_LAZY = {
    "AtariEncoder": "ssl_toolkit.rl.encoder",
    "make_atari_env": "ssl_toolkit.rl.envs",
    "make_sb3_atari_env": "ssl_toolkit.rl.envs",
}
__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ssl_toolkit.rl' has no attribute {name!r}")
