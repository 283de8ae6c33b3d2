"""The RL adapter: ``AtariEncoder``'s contract (scaling, per-frame encoding, resizing, freezing) and
``PretrainedFeaturesExtractor`` inside real Stable-Baselines3 agents on a real ALE game."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from ssl_toolkit import create_backbone, load_encoder, save_encoder
from ssl_toolkit.rl import AtariEncoder
from ssl_toolkit.rl.sb3 import LRMultOptimizer, PretrainedFeaturesExtractor, policy_kwargs

ATOL = 1e-5  # float32, the same ops in a different batch layout


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    """Exported nature_cnn encoders: one on single grayscale frames, one on 4-frame stacks."""
    out = tmp_path_factory.mktemp("encoders")
    torch.manual_seed(0)
    single, stacked = out / "single.safetensors", out / "stacked.safetensors"
    save_encoder(create_backbone("nature_cnn", in_chans=1), single, input_size=[84, 84], mean=[0.0], std=[1.0])
    save_encoder(create_backbone("nature_cnn", in_chans=4), stacked)
    return {"single": single, "stacked": stacked}


def frames(b=2, c=4, size=84, seed=0) -> torch.Tensor:
    return torch.randint(0, 256, (b, c, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def same_weights(module: torch.nn.Module, reference: dict) -> bool:
    state = module.state_dict()
    return state.keys() == reference.keys() and all(torch.equal(state[k], reference[k]) for k in reference)


# ---- AtariEncoder --------------------------------------------------------------------------------
def test_single_frame_encoder_sees_each_frame_with_shared_weights(encoders):
    atari = AtariEncoder(encoders["single"], frame_stack=4)
    x = frames()
    assert atari.per_frame and atari.in_chans == 4 and atari.num_features == 4 * 512
    with torch.no_grad():
        out = atari(x)
        per_frame = [atari.encoder(x[:, i:i + 1].float() / 255) for i in range(4)]
    assert out.shape == (2, 2048)
    torch.testing.assert_close(out, torch.cat(per_frame, dim=1), atol=ATOL, rtol=0)

    fused = AtariEncoder(encoders["single"], frame_stack=4, fuse="linear", out_features=64)
    assert fused.num_features == 64 and fused(x).shape == (2, 64)
    with pytest.raises(ValueError, match="out_features"):
        AtariEncoder(encoders["single"], out_features=64)


def test_stacked_encoder_passes_through_and_normalises(encoders, tmp_path):
    atari = AtariEncoder(encoders["stacked"], frame_stack=4)
    x = frames()
    assert not atari.per_frame and atari.num_features == 512
    with torch.no_grad():
        assert torch.equal(atari(x), atari.encoder(x.float() / 255))
        assert torch.equal(atari(x.float()), atari(x))  # float pixels 0..255, as SB3 hands them over
    with pytest.raises(ValueError, match=r"expects \(B, 4, H, W\)"):
        atari(frames(c=3))

    path = tmp_path / "norm.safetensors"
    save_encoder(load_encoder(encoders["stacked"]), path, mean=[0.5], std=[0.25])
    normed = AtariEncoder(path)
    with torch.no_grad():
        torch.testing.assert_close(normed(x), normed.encoder((x.float() / 255 - 0.5) / 0.25), atol=ATOL, rtol=0)


def test_resizes_to_the_training_size_with_one_warning(encoders):
    atari = AtariEncoder(encoders["single"], frame_stack=4)
    x = frames(size=96)
    with pytest.warns(UserWarning, match="96x96 but the encoder was trained on 84x84"):
        out = atari(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        atari(x)  # once only
    small = F.interpolate(x.float().view(8, 1, 96, 96) / 255, size=(84, 84), mode="bilinear", antialias=True)
    with torch.no_grad():
        torch.testing.assert_close(out, atari.encoder(small).view(2, -1), atol=ATOL, rtol=0)


def test_frozen_means_frozen_and_finetune_trains():
    torch.manual_seed(0)
    # BatchNorm and Dropout: the layers .train() would otherwise change
    backbone = create_backbone("resnet18", in_chans=1, small_images=True, drop_rate=0.5)
    x = frames(4, 4, 32)
    frozen = AtariEncoder(backbone, frame_stack=4, fuse="linear")
    stats = {k: v.clone() for k, v in backbone.state_dict().items()}
    frozen.train()
    assert frozen.training and frozen.fuse.training
    assert not any(m.training for m in frozen.encoder.modules())
    out = frozen(x)
    assert torch.equal(out, frozen(x))  # no dropout noise
    out.sum().backward()
    assert all(p.grad is None and not p.requires_grad for p in frozen.encoder.parameters())
    assert all(p.grad is not None for p in frozen.fuse.parameters())
    assert same_weights(backbone, stats)  # running statistics untouched
    assert [len(g["params"]) for g in frozen.param_groups(1e-3)] == [2]  # only the fusion layer

    tuned = AtariEncoder(backbone, frame_stack=4, freeze=False, lr_mult=0.1)
    tuned.train()
    assert all(m.training for m in tuned.encoder.modules())
    tuned(x).sum().backward()
    assert all(p.grad is not None for p in tuned.encoder.parameters())
    (group,) = tuned.param_groups(1e-3)
    assert group["lr"] == pytest.approx(1e-4) and len(group["params"]) == len(list(backbone.parameters()))


def test_lr_mult_optimizer_scales_only_during_step():
    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3))
    setattr(a, "ssl_toolkit_lr_mult", 0.1)
    opt = LRMultOptimizer(torch.optim.SGD)([a, b], lr=1.0)
    (a.sum() + b.sum()).backward()
    opt.step()
    assert torch.allclose(a, torch.full((3,), -0.1)) and torch.allclose(b, torch.full((3,), -1.0))
    assert [g["lr"] for g in opt.param_groups] == [1.0, 1.0]  # what SB3 sets and logs


# ---- Stable-Baselines3 on a real Atari game ------------------------------------------------------
def pong(n_stack: int = 4):
    """SB3's own Atari pipeline: 84×84 grayscale, VecFrameStack channels-last (84, 84, 4); SB3 then
    transposes to channels-first itself."""
    import ale_py
    import gymnasium as gym
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.vec_env import VecFrameStack

    gym.register_envs(ale_py)
    return VecFrameStack(make_atari_env("PongNoFrameskip-v4", n_envs=1, seed=0), n_stack)


def test_ppo_frozen_keeps_pretrained_weights_exactly(encoders):
    from stable_baselines3 import PPO

    reference = load_encoder(encoders["single"]).state_dict()
    model = PPO("CnnPolicy", pong(), n_steps=64, batch_size=64, n_epochs=1, seed=0, device="cpu",
                policy_kwargs=policy_kwargs(encoders["single"]))
    extractor = model.policy.features_extractor
    assert isinstance(extractor, PretrainedFeaturesExtractor) and extractor.features_dim == 2048
    assert model.policy.ortho_init  # SB3's init ran, and skipped the encoder
    heads_before = model.policy.action_net.weight.detach().clone()
    model.learn(256)
    assert model.num_timesteps == 256
    assert same_weights(extractor.atari.encoder, reference)
    assert not any(m.training for m in extractor.atari.encoder.modules())
    assert not torch.equal(model.policy.action_net.weight, heads_before)  # the agent did learn


def test_ppo_finetune_changes_the_encoder(encoders):
    from stable_baselines3 import PPO

    reference = load_encoder(encoders["single"]).state_dict()
    model = PPO("CnnPolicy", pong(), n_steps=32, batch_size=32, n_epochs=1, seed=0, device="cpu",
                policy_kwargs=policy_kwargs(encoders["single"], freeze=False, lr_mult=0.5))
    encoder = model.policy.features_extractor.atari.encoder
    assert same_weights(encoder, reference)  # pretrained, not orthogonally re-initialised
    assert sorted(g["lr_mult"] for g in model.policy.optimizer.param_groups) == [0.5, 1.0]
    model.learn(32)
    assert not same_weights(encoder, reference)


def test_double_scaling_is_refused(encoders):
    from stable_baselines3 import PPO

    kwargs = {**policy_kwargs(encoders["stacked"]), "normalize_images": True}
    model = PPO("CnnPolicy", pong(), n_steps=16, batch_size=16, n_epochs=1, seed=0, device="cpu", policy_kwargs=kwargs)
    with pytest.raises(ValueError, match="normalize_images=False"):
        model.learn(16)


@pytest.mark.parametrize("algo", ["dqn", "qrdqn"])
def test_dqn_online_and_target_keep_pretrained_weights(algo, encoders):
    from sb3_contrib import QRDQN
    from stable_baselines3 import DQN

    reference = load_encoder(encoders["stacked"]).state_dict()
    cls, extra = (DQN, {}) if algo == "dqn" else (QRDQN, {"n_quantiles": 8})
    # DQN's usual one update per 4 agent steps: 256 steps, 56 updates after the first 32 steps
    model = cls("CnnPolicy", pong(), buffer_size=300, learning_starts=32, batch_size=8, train_freq=4,
                target_update_interval=64, seed=0, device="cpu",
                policy_kwargs=policy_kwargs(encoders["stacked"], algo=algo, **extra))
    online, target = ((model.q_net, model.q_net_target) if algo == "dqn"
                      else (model.quantile_net, model.quantile_net_target))
    assert online.features_extractor is not target.features_extractor
    head_before = [p.detach().clone() for p in online.parameters() if p.requires_grad]
    model.learn(256)
    assert model.num_timesteps == 256 and model._n_updates == 56
    assert any(not torch.equal(a, b) for a, b in zip(head_before, (p for p in online.parameters() if p.requires_grad)))
    assert same_weights(online.features_extractor.atari.encoder, reference)
    assert same_weights(target.features_extractor.atari.encoder, reference)


def test_dqn_finetune_changes_online_and_the_target_follows(encoders):
    from stable_baselines3 import DQN

    reference = load_encoder(encoders["stacked"]).state_dict()
    model = DQN("CnnPolicy", pong(), buffer_size=100, learning_starts=4, batch_size=4, train_freq=1,
                target_update_interval=8, seed=0, device="cpu",
                policy_kwargs=policy_kwargs(encoders["stacked"], freeze=False, algo="dqn"))
    assert set(map(id, model.q_net.parameters())).isdisjoint(map(id, model.q_net_target.parameters()))
    model.learn(4 + 8)
    assert not same_weights(model.q_net.features_extractor.atari.encoder, reference)
    # the target was synced from the fine-tuned online net at step 8 (the update after it moved only the online one)
    assert not same_weights(model.q_net_target.features_extractor.atari.encoder, reference)
