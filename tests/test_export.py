"""Exported encoders: safetensors round trip, metadata, shape checks, weights-only checkpoint loading,
a malicious pickle refused, and `ssl-toolkit export` through the real entry point."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ssl_toolkit import create_backbone, load_encoder, save_encoder
from ssl_toolkit.export import weights_sha256

EXE = Path(sys.executable).parent / "ssl-toolkit"


@pytest.fixture(scope="module")
def pretrained(vicreg_checkpoint):
    return vicreg_checkpoint


def frames(n: int = 3, chans: int = 1, size: int = 84) -> torch.Tensor:
    return torch.rand(n, chans, size, size, generator=torch.Generator().manual_seed(0))


def test_round_trip_from_checkpoint_keeps_outputs_and_metadata(pretrained, tmp_path):
    model, ckpt = pretrained
    out = tmp_path / "enc.safetensors"
    info = save_encoder(ckpt, out)
    assert out.exists() and not list(tmp_path.glob("*.tmp"))  # renamed into place

    enc = load_encoder(out)
    meta = enc.encoder_meta
    assert meta["backbone"] == "nature_cnn" and meta["in_chans"] == 1 and meta["num_features"] == 512
    assert meta["backbone_kwargs"]["img_size"] == [84, 84]
    assert meta["input_size"] == [84, 84]                # from the data module's crop
    assert meta["mean"] == [0.0] and meta["std"] == [1.0]  # the atari preset's normalisation
    assert meta["method"] == "VICReg" and meta["steps"] == 2
    assert meta["sha256"] == info["sha256"] == weights_sha256(model.backbone.state_dict())

    x = frames()
    model.backbone.eval()
    with torch.no_grad():
        assert torch.equal(enc(x), model.backbone(x))
    # frozen by default
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())
    assert all(p.requires_grad for p in load_encoder(out, freeze=False).parameters())


def test_round_trip_from_module_and_bare_backbone(pretrained, tmp_path):
    model, _ = pretrained
    info = save_encoder(model, tmp_path / "m.safetensors")
    assert info["method"] == "VICReg" and info["backbone"] == "nature_cnn"

    torch.manual_seed(0)
    resnet = create_backbone("resnet18", in_chans=3, small_images=True).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics must survive the trip too
        for m in resnet.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    save_encoder(resnet, tmp_path / "r.safetensors", input_size=[32, 32], mean=[0.5] * 3, std=[0.25] * 3)
    back = load_encoder(tmp_path / "r.safetensors")
    x = frames(2, chans=3, size=32)
    with torch.no_grad():
        assert torch.equal(back(x), resnet(x))
    assert back.encoder_meta["input_size"] == [32, 32] and back.encoder_meta["mean"] == [0.5] * 3
    assert back.encoder_meta["backbone_kwargs"]["small_images"] is True
    assert back.encoder_meta["method"] is None


def test_checkpoint_is_read_weights_only(pretrained, monkeypatch):
    model, ckpt = pretrained
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    enc = load_encoder(ckpt)
    assert calls == [True]
    with torch.no_grad():
        assert torch.equal(enc(frames()), model.backbone.eval()(frames()))
    assert enc.encoder_meta["steps"] == 2


class _CreatesFile:
    """A pickle payload: unpickling it calls ``open(path, "w")``, creating a file."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("kind", ["torch_save", "raw_pickle"])
def test_malicious_pickle_is_refused(kind, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    payload = {"state_dict": {}, "hyper_parameters": {"backbone": _CreatesFile(marker)}}
    if kind == "torch_save":
        torch.save(payload, evil)
    else:
        evil.write_bytes(pickle.dumps(payload, protocol=2))

    with pytest.raises(ValueError, match="refusing to load .*could run code"):
        load_encoder(evil)
    with pytest.raises(ValueError, match="refusing to load"):
        save_encoder(evil, tmp_path / "out.safetensors")
    assert not marker.exists()
    assert not (tmp_path / "out.safetensors").exists()

    # the payload is real: a full unpickle does run it
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_CreatesFile(control), protocol=2)).close()
    assert control.exists()


def test_shape_mismatch_names_the_first_bad_key(tmp_path):
    enc = create_backbone("nature_cnn", in_chans=1)
    path = tmp_path / "enc.safetensors"
    # metadata that claims a 4-channel input: the rebuilt conv does not fit the 1-channel weights
    save_encoder(enc, path, backbone_kwargs={**enc.backbone_kwargs, "in_chans": 4})
    with pytest.raises(ValueError, match=r"shape mismatch at 'convs\.0\.weight'.*\(32, 1, 8, 8\).*\(32, 4, 8, 8\)"):
        load_encoder(path)
    save_encoder(enc, path)
    with pytest.raises(ValueError, match=r"shape mismatch at 'convs\.0\.weight'"):
        load_encoder(path, in_chans=3)
    with pytest.raises(ValueError, match=r"shape mismatch at 'hidden\.1\.weight'"):
        load_encoder(path, img_size=64)


def test_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_encoder(tmp_path / "nope.safetensors")
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        load_encoder(tmp_path / "nope.ckpt")
    with pytest.raises(ValueError, match="unknown backbone"):
        load_encoder("random:nature_cnnn")

    path = tmp_path / "enc.safetensors"
    save_encoder(create_backbone("nature_cnn", in_chans=1), path)
    # flip one weight byte: the stored hash no longer matches
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="sha256"):
        load_encoder(path)


def test_random_encoder():
    enc = load_encoder("random:nature_cnn", in_chans=4)
    meta = enc.encoder_meta
    assert meta["method"] == "random" and meta["in_chans"] == 4 and meta["input_size"] == [84, 84]
    assert meta["mean"] is None and meta["steps"] == 0
    assert enc(torch.zeros(2, 4, 84, 84)).shape == (2, 512)


def run_cli(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([str(EXE), *map(str, args)], capture_output=True, text=True, env=env, timeout=300)


def test_cli_export(pretrained, tmp_path):
    model, ckpt = pretrained
    out = tmp_path / "cli.safetensors"
    proc = run_cli("export", ckpt, out, "--output", tmp_path / "meta.json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert '"method": "VICReg"' in (tmp_path / "meta.json").read_text()
    enc = load_encoder(out)
    with torch.no_grad():
        assert torch.equal(enc(frames()), model.backbone.eval()(frames()))

    marker = tmp_path / "pwned"
    torch.save({"state_dict": {}, "hyper_parameters": _CreatesFile(marker)}, tmp_path / "evil.ckpt")
    proc = run_cli("export", tmp_path / "evil.ckpt", tmp_path / "x.safetensors")
    assert proc.returncode == 2
    assert "refusing to load" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "x.safetensors").exists()
