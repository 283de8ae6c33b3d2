"""Pretrained encoders in Stable-Baselines3 agents (PPO, A2C, DQN, QR-DQN).

``PretrainedFeaturesExtractor`` wraps :class:`~ssl_toolkit.rl.encoder.AtariEncoder` as SB3's
``BaseFeaturesExtractor``; ``policy_kwargs(encoder, ...)`` returns everything a policy needs::

    from stable_baselines3 import PPO
    from ssl_toolkit.rl.sb3 import policy_kwargs
    model = PPO("CnnPolicy", env, policy_kwargs=policy_kwargs("encoder.safetensors"))

It handles three traps of SB3 2.x (``stable_baselines3/common/policies.py``, ``dqn/policies.py``):

1. Images scaled twice: SB3's ``preprocess_obs`` divides image observations by 255 unless the policy
   has ``normalize_images=False``; the encoder scales itself, so ``policy_kwargs`` sets it False. The
   extractor checks the first non-black batch and raises if its pixels already look scaled.
2. PPO/A2C's orthogonal init: with ``ortho_init=True`` (the default) ``ActorCriticPolicy._build``
   calls ``features_extractor.apply(init_weights)``, which would overwrite the pretrained weights
   (frozen or not: ``nn.init`` ignores ``requires_grad``). This extractor's ``apply`` skips the
   pretrained encoder; the fusion layer and SB3's heads are still initialised as SB3 intends.
3. DQN/QR-DQN's target network: SB3 builds the online and the target Q-network each with its own
   extractor (``make_q_net`` twice) and copies the online state into the target. Each extractor
   loads the encoder itself (a module passed in is deep-copied), so both start from the pretrained
   weights and never share parameters.

Channel order: SB3 wraps channels-last image envs (``VecFrameStack`` gives ``(84, 84, 4)``) in
``VecTransposeImage``, so the extractor normally sees ``(4, 84, 84)``; it also accepts a
channels-last space and moves the channels itself.

Fine-tuning with ``lr_mult != 1``: SB3 sets one learning rate on every optimiser group before each
update (``update_learning_rate``), so the multiplier cannot live in the group's ``lr``. Instead the
encoder's parameters carry it (``LR_MULT_ATTR``) and :class:`LRMultOptimizer` builds the optimiser
with a group per multiplier, scaling each group's ``lr`` around every ``step()``.
"""
from __future__ import annotations

import copy
import os
from typing import Any, Callable

import gymnasium as gym
import torch
from stable_baselines3.common.preprocessing import is_image_space_channels_first
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

from ssl_toolkit.export import load_encoder
from ssl_toolkit.rl.encoder import AtariEncoder, encoder_in_chans

LR_MULT_ATTR = "ssl_toolkit_lr_mult"
ALGOS = ("ppo", "a2c", "dqn", "qrdqn")


class PretrainedFeaturesExtractor(BaseFeaturesExtractor):
    """An exported encoder as SB3's features extractor.

    Args:
        observation_space: the image space SB3 passes: uint8 ``(C, H, W)`` (or ``(H, W, C)``), ``C`` a
            multiple of the encoder's ``in_chans`` (frames are encoded separately when larger).
        encoder: ``.safetensors``/``.ckpt`` path, ``"random:<backbone>"`` (built with
            ``in_chans=C``), or a module from ``load_encoder`` (deep-copied).
        freeze: keep the encoder's weights and BatchNorm statistics fixed.
        fuse, out_features: how per-frame features are combined (see ``AtariEncoder``).
        lr_mult: fine-tuning only: the encoder's learning rate relative to the policy's; takes
            effect with :class:`LRMultOptimizer` (``policy_kwargs`` sets it up).

    Shapes: ``forward``: float ``(B, C, H, W)`` with values 0..255 (SB3 casts uint8 observations to
    float; ``normalize_images=False``) -> ``(B, features_dim)``.
    """

    def __init__(self, observation_space: gym.spaces.Box, encoder: str | os.PathLike | nn.Module,
                 freeze: bool = True, fuse: str = "concat", lr_mult: float = 1.0, out_features: int | None = None):
        shape = tuple(observation_space.shape or ())
        if len(shape) != 3:
            raise ValueError(f"PretrainedFeaturesExtractor needs image observations (C, H, W), got shape {shape}")
        channels_first = is_image_space_channels_first(observation_space)
        chans = shape[0] if channels_first else shape[-1]
        if isinstance(encoder, nn.Module):
            # the online and the target network each build an extractor: they must not share weights
            module = copy.deepcopy(encoder)
        else:
            spec = str(encoder)
            module = load_encoder(spec, freeze=freeze, **({"in_chans": chans} if spec.startswith("random:") else {}))
        enc_chans = encoder_in_chans(module)
        if chans % enc_chans:
            raise ValueError(f"observations have {chans} channels, not a multiple of the encoder's in_chans={enc_chans}")
        atari = AtariEncoder(module, frame_stack=chans // enc_chans, fuse=fuse, freeze=freeze, lr_mult=lr_mult,
                             out_features=out_features)
        super().__init__(observation_space, features_dim=atari.num_features)
        self.atari = atari
        self.channels_first = channels_first
        self._checked_scale = False
        if not freeze and lr_mult != 1.0:
            for p in atari.encoder.parameters():
                setattr(p, LR_MULT_ATTR, float(lr_mult))

    def apply(self, fn: Callable[[nn.Module], None]) -> "PretrainedFeaturesExtractor":
        """``fn`` on everything but the pretrained encoder (see trap 2 in the module docstring)."""
        self.atari.fuse.apply(fn)
        fn(self)
        return self

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        if not self.channels_first:
            observations = observations.permute(0, 3, 1, 2)
        if not self._checked_scale and observations.is_floating_point():
            peak = float(observations.max())
            if 0.0 < peak <= 1.0:
                raise ValueError("observations are already scaled to [0, 1]: build the policy with "
                                 "normalize_images=False (ssl_toolkit.rl.sb3.policy_kwargs does)")
            self._checked_scale = peak > 1.0
        return self.atari(observations)


def _scale_lr(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
    for group in optimizer.param_groups:
        group["unscaled_lr"] = group["lr"]
        group["lr"] = group["lr"] * group.get("lr_mult", 1.0)


def _unscale_lr(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group.pop("unscaled_lr", group["lr"])


class LRMultOptimizer:
    """An SB3 ``optimizer_class`` giving tagged parameters their own learning-rate multiplier.

    SB3 calls ``optimizer_class(params, lr=..., **optimizer_kwargs)``; this groups ``params`` by their
    ``LR_MULT_ATTR`` (1 when untagged) and builds ``base`` with one group per multiplier. Between
    updates every group's ``lr`` is SB3's (so its schedule and logs are unchanged); during ``step()``
    it is ``lr × lr_mult``.
    """

    def __init__(self, base: type[torch.optim.Optimizer] = torch.optim.Adam):
        self.base = base

    def __call__(self, params, lr: float, **kwargs: Any) -> torch.optim.Optimizer:
        by_mult: dict[float, list[nn.Parameter]] = {}
        for p in params:
            by_mult.setdefault(float(getattr(p, LR_MULT_ATTR, 1.0)), []).append(p)
        optimizer = self.base([{"params": ps, "lr_mult": m} for m, ps in by_mult.items()], lr=lr, **kwargs)
        optimizer.register_step_pre_hook(_scale_lr)
        optimizer.register_step_post_hook(_unscale_lr)
        return optimizer

    def __repr__(self) -> str:
        return f"LRMultOptimizer({self.base.__name__})"


def policy_kwargs(encoder: str | os.PathLike | nn.Module, freeze: bool = True, *, algo: str = "ppo",
                  fuse: str = "concat", lr_mult: float = 1.0, out_features: int | None = None,
                  **policy_kw: Any) -> dict:
    """``policy_kwargs`` for an SB3 ``CnnPolicy`` (or our spectral-norm policies) on ``encoder``.

    Args:
        encoder: anything ``PretrainedFeaturesExtractor`` takes.
        freeze: frozen encoder (default) or fine-tuned.
        algo: ``ppo``, ``a2c``, ``dqn`` or ``qrdqn``; picks the defaults below.
        fuse, lr_mult, out_features: see ``PretrainedFeaturesExtractor``.
        **policy_kw: other policy arguments (``net_arch``, ``n_quantiles``, ...); they win over these defaults.

    Returns:
        ``features_extractor_class``/``features_extractor_kwargs``, ``normalize_images=False``; for
        dqn/qrdqn ``net_arch=[512]`` (SB3 would use ``[64, 64]`` for any extractor other than its own
        NatureCNN; 512 is Nature DQN's hidden width and gives the spectral-norm policies their
        penultimate layer); and when fine-tuning with ``lr_mult != 1`` an ``LRMultOptimizer`` on the
        optimiser each algorithm uses by default (PPO Adam eps 1e-5, A2C RMSprop alpha 0.99 eps 1e-5,
        DQN Adam, QR-DQN Adam eps 0.01/32 as in its paper at batch 32).
    """
    algo = algo.lower()
    if algo not in ALGOS:
        raise ValueError(f"unknown algo {algo!r}; choose from {', '.join(ALGOS)}")
    kwargs: dict[str, Any] = {
        "features_extractor_class": PretrainedFeaturesExtractor,
        "features_extractor_kwargs": {"encoder": encoder, "freeze": freeze, "fuse": fuse, "lr_mult": lr_mult,
                                      "out_features": out_features},
        "normalize_images": False,
    }
    if algo in ("dqn", "qrdqn"):
        kwargs["net_arch"] = [512]
    if not freeze and lr_mult != 1.0:
        base, opt_kwargs = {
            "ppo": (torch.optim.Adam, {"eps": 1e-5}),
            "a2c": (torch.optim.RMSprop, {"alpha": 0.99, "eps": 1e-5, "weight_decay": 0.0}),
            "dqn": (torch.optim.Adam, {}),
            "qrdqn": (torch.optim.Adam, {"eps": 0.01 / 32}),
        }[algo]
        kwargs["optimizer_class"] = LRMultOptimizer(base)
        kwargs["optimizer_kwargs"] = opt_kwargs
    kwargs.update(policy_kw)
    return kwargs
