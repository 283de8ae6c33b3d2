"""Spectral normalisation for Q-heads: plain PyTorch heads and Stable-Baselines3 policies.

Gogianu et al., "Spectral Normalisation for Deep Reinforcement Learning: an Optimisation
Perspective" (ICML 2021) found that constraining only the *penultimate* layer of a C51 agent to a
largest singular value of 1 made it match Rainbow on Atari. We use PyTorch's
``torch.nn.utils.parametrizations.spectral_norm`` (one power iteration per training forward, the
weight divided by the estimated largest singular value).

Which layer is "penultimate": the second-to-last ``nn.Linear`` of the Q-network, i.e. the layer
whose output feeds the last (action-value) Linear. In SB3's ``QNetwork`` (features extractor, then
``q_net`` = the MLP of ``net_arch``) with ``net_arch=[512]`` it is the hidden ``Linear(features, 512)``;
that is the paper's layer in function, the last hidden layer before the value head. Our policies
default to ``net_arch=[512]``, because a frozen pretrained encoder cannot be normalised (that
would change what it computes); with ``net_arch=[]`` and SB3's own trainable ``NatureCNN`` the
layer is NatureCNN's ``Linear(3136, 512)``, exactly the paper's.

The bound is only as tight as the power iteration's estimate of σ_max, which lags the weights: on
a random 64×32 head trained 300 steps with Adam we measured an effective σ_max of 1.009 at
lr 1e-4 (DQN's) and up to 1.11 at lr 1e-3; ``n_power_iterations`` > 1 tightens it (1.02 with 5).
In an SB3 DQN on Pong (512×512 hidden layer, Adam 1e-4, batch 8) σ_max rose to 1.12 during the
first ~80 updates, while Adam's early steps turn the weights fastest, and was 1.00001 from ~100 on.

The target network: SB3 keeps it in eval mode, where ``spectral_norm`` stops its power iteration
and divides by the singular value estimated when the target was created, while its weights are
replaced by the online ones at every target update. The policies below keep the target's
spectral-norm power iteration running, so its weights too are divided by their own largest
singular value.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from sb3_contrib.qrdqn.policies import CnnPolicy as QRDQNCnnPolicy
from sb3_contrib.qrdqn.policies import QuantileNetwork
from stable_baselines3.dqn.policies import CnnPolicy as DQNCnnPolicy
from stable_baselines3.dqn.policies import QNetwork
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

PENULTIMATE = "penultimate"
WARMUP_ITERATIONS = 1000


def _penultimate_linear(module: nn.Module) -> str:
    linears = [name for name, m in module.named_modules() if isinstance(m, nn.Linear)]
    if len(linears) < 2:
        raise ValueError(f"{type(module).__name__} has {len(linears)} Linear layer(s); the penultimate needs at least 2 "
                         "(give the Q-head a hidden layer, e.g. net_arch=[512])")
    return linears[-2]


def apply_spectral_norm(module: nn.Module, layers: str | Sequence[str] = PENULTIMATE,
                        n_power_iterations: int = 1) -> list[str]:
    """Spectral-normalise the weights of ``layers`` of ``module`` in place.

    Args:
        module: a network (a Q-head, an SB3 ``QNetwork``, a whole agent).
        layers: ``"penultimate"`` (the second-to-last ``nn.Linear`` in ``module.named_modules()``
            order) or the names of ``Linear``/``Conv`` submodules (``module.get_submodule`` names).
        n_power_iterations: power-iteration steps per training forward.

    Returns:
        The names of the normalised layers.
    """
    names = [_penultimate_linear(module)] if layers == PENULTIMATE else list(layers)
    if isinstance(layers, str) and layers != PENULTIMATE:
        raise ValueError(f"layers must be 'penultimate' or a list of layer names, got {layers!r}")
    for name in names:
        try:
            layer = module.get_submodule(name)
        except AttributeError:
            raise ValueError(f"{type(module).__name__} has no layer {name!r}") from None
        if not isinstance(layer, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            raise ValueError(f"layer {name!r} is a {type(layer).__name__}; spectral norm applies to Linear/Conv layers")
        if not layer.weight.requires_grad:
            raise ValueError(f"layer {name!r} is frozen (part of a frozen encoder?); normalising it would change a "
                             "fixed function: add a trainable hidden layer to the head (net_arch=[512])")
        spectral_norm(layer, n_power_iterations=n_power_iterations)
        _converge(layer)
    return names


def _converge(layer: nn.Module, iterations: int = WARMUP_ITERATIONS) -> None:
    """Run the power iteration ``iterations`` more times now. PyTorch does 15 at registration; the
    top two singular values of a random init are nearly equal, so that leaves σ_max underestimated
    (by ~2 % for a 512×512 Linear), and one iteration per update only catches up slowly. How many
    more it takes depends on the draw's gap between them: 200 brought one draw within 1e-4 and left
    another 0.2 % under; 1000 (0.2 s per 512×512 layer here) cover both."""
    sn = layer.parametrizations["weight"][0]
    mode = sn.training
    sn.train(True)
    with torch.no_grad():
        for _ in range(iterations):
            layer.weight  # in training mode, reading the weight runs the power iteration
    sn.train(mode)


def spectral_norm_layers(module: nn.Module) -> list[str]:
    """Names of the submodules whose ``weight`` is spectral-normalised."""
    return [name for name, m in module.named_modules()
            if parametrize.is_parametrized(m, "weight")
            and any(type(p).__name__ == "_SpectralNorm" for p in m.parametrizations["weight"])]


class QHead(nn.Module):
    """Linear → ReLU → Linear from features to action values, spectral norm on the first Linear.

    Args:
        in_features: width of the trunk's features (``AtariEncoder.num_features``).
        n_actions: number of actions.
        hidden: hidden width (512 in Nature DQN).
        spectral_norm: normalise the penultimate (hidden) layer.
        n_atoms: ``None`` for one value per action; otherwise a distributional head with ``n_atoms``
            outputs per action (C51 logits before the softmax, or QR-DQN quantiles).
        n_power_iterations: spectral norm's power-iteration steps per training forward.

    Shapes: ``(B, in_features) -> (B, n_actions)``, or ``(B, n_actions, n_atoms)``.
    """

    def __init__(self, in_features: int, n_actions: int, hidden: int = 512, spectral_norm: bool = True,
                 n_atoms: int | None = None, n_power_iterations: int = 1):
        super().__init__()
        self.n_actions, self.n_atoms = n_actions, n_atoms
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(),
                                 nn.Linear(hidden, n_actions * (n_atoms or 1)))
        if spectral_norm:
            apply_spectral_norm(self.net, n_power_iterations=n_power_iterations)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out = self.net(h)
        return out if self.n_atoms is None else out.view(-1, self.n_actions, self.n_atoms)


def _keep_power_iteration(layer: nn.Module, args) -> None:
    # a forward pre-hook on the target network's normalised layers: whatever mode SB3 set, the
    # spectral-norm parametrisation itself stays in training mode and runs its power iteration
    for p in layer.parametrizations["weight"]:
        p.train(True)


def _keep_target_iterating(target: nn.Module) -> None:
    for name in spectral_norm_layers(target):
        target.get_submodule(name).register_forward_pre_hook(_keep_power_iteration)


def _sn_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    if kwargs.get("net_arch") is None:
        kwargs["net_arch"] = [512]
    return kwargs


class SpectralNormDQNPolicy(DQNCnnPolicy):
    """SB3 DQN ``CnnPolicy`` whose Q-network has spectral norm on ``spectral_norm_layers`` (default:
    the penultimate Linear; ``net_arch`` defaults to ``[512]``). Works with SB3's ``NatureCNN`` and
    with ``PretrainedFeaturesExtractor``."""

    def __init__(self, *args, spectral_norm_layers: str | Sequence[str] = PENULTIMATE,
                 n_power_iterations: int = 1, **kwargs):
        self.spectral_norm_layers, self.n_power_iterations = spectral_norm_layers, n_power_iterations
        super().__init__(*args, **_sn_kwargs(kwargs))

    def make_q_net(self) -> QNetwork:
        q_net = super().make_q_net()
        apply_spectral_norm(q_net, self.spectral_norm_layers, self.n_power_iterations)
        return q_net

    def _build(self, lr_schedule) -> None:
        super()._build(lr_schedule)
        _keep_target_iterating(self.q_net_target)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return {**super()._get_constructor_parameters(), "spectral_norm_layers": self.spectral_norm_layers,
                "n_power_iterations": self.n_power_iterations}


class SpectralNormQRDQNPolicy(QRDQNCnnPolicy):
    """sb3_contrib QR-DQN ``CnnPolicy`` with spectral norm on the quantile network's
    ``spectral_norm_layers`` (default: the penultimate Linear; ``net_arch`` defaults to ``[512]``)."""

    def __init__(self, *args, spectral_norm_layers: str | Sequence[str] = PENULTIMATE,
                 n_power_iterations: int = 1, **kwargs):
        self.spectral_norm_layers, self.n_power_iterations = spectral_norm_layers, n_power_iterations
        super().__init__(*args, **_sn_kwargs(kwargs))

    def make_quantile_net(self) -> QuantileNetwork:
        net = super().make_quantile_net()
        apply_spectral_norm(net, self.spectral_norm_layers, self.n_power_iterations)
        return net

    def _build(self, lr_schedule) -> None:
        super()._build(lr_schedule)
        _keep_target_iterating(self.quantile_net_target)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return {**super()._get_constructor_parameters(), "spectral_norm_layers": self.spectral_norm_layers,
                "n_power_iterations": self.n_power_iterations}
