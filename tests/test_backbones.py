"""Contract tests for ssl_toolkit.backbones: one contract over every backbone we register plus a
few timm models, then the registry's extras (small-image stem, error messages, paper init)."""

import pytest
import timm
import torch
from torch import nn

from ssl_toolkit.backbones import ATARI_BACKBONES, atariari_init_, create_backbone

# timm models checked against the same contract, at small inputs to keep the suite fast
TIMM_BACKBONES = {"resnet18": (64, 64), "resnet50": (64, 64), "vit_small_patch16_224": (224, 224)}
BATCH = 2
# every (backbone, in_chans) pair, except ViT at 4: its patch embedding treats any in_chans alike, 1
# already covers it, and ViT-S at 224 px is the slowest case here
CASES = [(name, in_chans) for name in [*ATARI_BACKBONES, *TIMM_BACKBONES] for in_chans in (1, 3, 4)
         if not (name.startswith("vit") and in_chans == 4)]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize(("name", "in_chans"), CASES)
def test_backbone_contract(name, in_chans):
    model = create_backbone(name, in_chans=in_chans)
    assert model.backbone_name == name
    assert model.backbone_kwargs == {"in_chans": in_chans, "small_images": False}
    size = TIMM_BACKBONES.get(name) or model.pretrained_cfg["input_size"][1:]  # ours: their default
    x = torch.rand(BATCH, in_chans, *size)

    features = model.forward_features(x)
    assert features.dim() == (3 if "vit" in name else 4)  # (B, tokens, C) or (B, C, h, w)
    assert features.shape[0] == BATCH and features[0].numel() > model.num_features
    out = model.forward_head(features, pre_logits=True)
    assert out.shape == (BATCH, model.num_features)
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in model.parameters())

    with torch.no_grad():  # forward = forward_head(forward_features), up to float32 reassociation
        torch.testing.assert_close(model(x), out, rtol=1e-5, atol=1e-5)

    # timm's metadata names real modules: first_conv takes in_chans, classifier is get_classifier()
    cfg = model.pretrained_cfg
    assert model.get_submodule(cfg["first_conv"]).weight.shape[1] == in_chans
    assert model.get_submodule(cfg["classifier"]) is model.get_classifier()


@pytest.mark.parametrize("name", ATARI_BACKBONES)
def test_ours_are_timm_models(name):
    model = timm.create_model(name)
    cfg = model.default_cfg
    channels = cfg["input_size"][0]
    assert model.in_chans == channels and model.img_size == cfg["input_size"][1:]
    assert cfg["mean"] == (0.0,) * channels and cfg["std"] == (1.0,) * channels
    assert model.num_classes == 0 and isinstance(model.get_classifier(), nn.Identity)

    x = torch.rand(BATCH, *cfg["input_size"])
    model.reset_classifier(7)
    assert model(x).shape == (BATCH, 7)
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (BATCH, model.num_features)
    model.reset_classifier(0)
    assert model(x).shape == (BATCH, model.num_features)

    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model(name, pretrained=True)


def test_nature_cnn_geometry_follows_img_size():
    model = create_backbone("nature_cnn", in_chans=4, img_size=(64, 64))
    # 64 -> (64-8)//4+1 = 15 -> (15-4)//2+1 = 6 -> 6-3+1 = 4
    assert model.forward_features(torch.rand(BATCH, 4, 64, 64)).shape == (BATCH, 64, 4, 4)
    assert model(torch.rand(BATCH, 4, 64, 64)).shape == (BATCH, 512)
    assert model.backbone_kwargs["img_size"] == (64, 64)
    assert create_backbone("nature_cnn").hidden[1].in_features == 64 * 7 * 7  # the DQN figure at 84 px


def test_small_images_resnet_keeps_spatial_detail():
    x = torch.rand(BATCH, 1, 32, 32)
    imagenet_stem = create_backbone("resnet18", in_chans=1)
    small = create_backbone("resnet18", in_chans=1, small_images=True)
    assert imagenet_stem.forward_features(x).shape[-2:] == (1, 1)
    assert small.forward_features(x).shape[-2:] == (4, 4)
    assert small.conv1.in_channels == 1 and small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert small(x).shape == (BATCH, 512)

    rebuilt = create_backbone(small.backbone_name, **small.backbone_kwargs)
    shapes = {k: v.shape for k, v in small.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == shapes

    with pytest.raises(ValueError, match="conv1"):
        create_backbone("nature_cnn", small_images=True)


def test_unknown_name_lists_close_names():
    with pytest.raises(ValueError) as err:
        create_backbone("resnet181")
    message = str(err.value)
    assert "\n" not in message and "'resnet181'" in message
    assert "resnet18," in message and "list_backbones()" in message


def test_vit_takes_non_square_img_size_and_patch_size():
    model = create_backbone("vit_tiny_patch16_224", in_chans=1, img_size=(210, 160), patch_size=10)
    tokens = model.forward_features(torch.rand(BATCH, 1, 210, 160))
    assert tokens.shape == (BATCH, 1 + 21 * 16, model.num_features)  # class token + 21×16 patches


def test_atariari_paper_init_is_orthogonal_with_relu_gain():
    model = create_backbone("atariari_cnn", in_chans=1)
    gain = nn.init.calculate_gain("relu")
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(layers) == 5
    for layer in layers:
        w = layer.weight.flatten(1)
        assert w.shape[0] <= w.shape[1]  # rows orthonormal (times gain) in this case
        # float32 QR: deviations are ~1e-6 of gain² = 2
        torch.testing.assert_close(w @ w.T, gain**2 * torch.eye(w.shape[0]), rtol=0, atol=1e-4)
        assert torch.count_nonzero(layer.bias) == 0

    # the function works on any module, e.g. to give another encoder the same baseline init
    other = atariari_init_(nn.Conv2d(4, 8, 3))
    torch.testing.assert_close(other.weight.flatten(1) @ other.weight.flatten(1).T, gain**2 * torch.eye(8),
                               rtol=0, atol=1e-4)
    default = create_backbone("atariari_cnn", in_chans=1, init="default")
    assert torch.count_nonzero(default.convs[0].bias) > 0


def test_nature_cnn_uses_rl_init_and_keeps_the_signal():
    # CleanRL/SB3's orthogonal √2 init; PyTorch's default shrinks features far below what a probe can use
    torch.manual_seed(0)
    frames = torch.rand(16, 1, 84, 84)
    scale = {}
    for init in ("orthogonal", "default"):
        torch.manual_seed(0)
        model = create_backbone("nature_cnn", in_chans=1, img_size=[84, 84], init=init).eval()
        with torch.no_grad():
            scale[init] = float(model(frames).abs().mean())
        if init == "orthogonal":
            for layer in [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]:
                w = layer.weight.flatten(1)
                small = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
                torch.testing.assert_close(small, 2.0 * torch.eye(len(small)), rtol=0, atol=1e-4)
                assert torch.count_nonzero(layer.bias) == 0
    assert scale["orthogonal"] > 10 * scale["default"]
    with pytest.raises(ValueError, match="init must be"):
        create_backbone("nature_cnn", init="xavier")
