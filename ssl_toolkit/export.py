"""Exported encoders: a backbone's weights as safetensors, with the metadata needed to rebuild it.

An exported encoder is one ``.safetensors`` file holding the backbone's ``state_dict`` (no heads, no
optimiser) and string metadata, each value JSON-encoded: the backbone's registry name and keyword
arguments (so ``create_backbone`` rebuilds the exact module), ``in_chans``, the training input size
``[H, W]``, the normalisation ``mean``/``std`` the data pipeline applied after scaling to ``[0, 1]``,
the method, its training steps, ``num_features``, the toolkit version and a SHA-256 of the weights.

Loading never unpickles: safetensors files are plain tensors plus a JSON header, and a Lightning
``.ckpt`` is read only through ``torch.load(weights_only=True)``, which refuses any pickle that
would import or call something (the attack surface of ``torch.load``). ``"random:<backbone>"``
builds an untrained backbone, the baseline every pretrained encoder should beat.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

FORMAT = "ssl_toolkit.encoder/1"
# what load_encoder puts in ``module.encoder_meta``; everything else in the file is kept as extra
META_KEYS = ("backbone", "backbone_kwargs", "in_chans", "input_size", "mean", "std", "method", "steps",
             "num_features", "sha256")


# ---- hashing ------------------------------------------------------------------------------------
def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors in key order: name, dtype, shape and raw bytes of each.

    The file's own bytes cannot be used, since its header holds this hash.
    """
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        # via uint8 so bfloat16 (which numpy lacks) hashes too
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# ---- reading checkpoints ------------------------------------------------------------------------
def _check_exists(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")


def read_checkpoint(path: str | os.PathLike) -> dict:
    """A Lightning ``.ckpt`` as plain containers of tensors, via ``torch.load(weights_only=True)``.

    Raises ValueError for a file that needs full unpickling (which could run arbitrary code).
    """
    path = Path(path)
    _check_exists(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message is a paragraph; the line that matters names the global the pickle wanted
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        why = next((ln for ln in lines if "GLOBAL" in ln or "Unsupported" in ln), lines[-1] if lines else "")
        raise ValueError(
            f"refusing to load {path}: it is not a plain weights checkpoint and unpickling it could run "
            f"code ({why.rstrip('.')}); export it where it is trusted with `ssl-toolkit export`") from None
    except (RuntimeError, EOFError) as err:
        raise ValueError(f"{path} is not a readable PyTorch checkpoint ({str(err).splitlines()[0]})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise ValueError(f"{path} is not a Lightning checkpoint from `ssl-toolkit pretrain` "
                         "(no state_dict/hyper_parameters); pass a .ckpt from a pretraining run")
    return ckpt


def _method_name(hparams: dict) -> str | None:
    """The method class whose own init arguments all appear in the saved hyperparameters."""
    class_path = hparams.get("_class_path")
    if isinstance(class_path, str):
        return class_path.rsplit(".", 1)[-1]
    from ssl_toolkit.methods import METHODS

    for cls in METHODS.values():
        own = [p for p in inspect.signature(cls.__init__).parameters.values()
               if p.kind is p.POSITIONAL_OR_KEYWORD and p.name != "self"]
        if own and all(p.name in hparams for p in own):
            return cls.__name__
    return None


def _data_meta(data_hparams: dict | None) -> dict:
    """``input_size`` and ``mean``/``std`` from an ``SSLDataModule``'s hyperparameters (the preset's
    values where the config left them null)."""
    if not data_hparams:
        return {}
    from ssl_toolkit.augment.presets import get_preset

    crop = data_hparams.get("crop_size")
    try:
        preset = get_preset(data_hparams.get("preset", "vicreg"),
                            crop_size=tuple(crop) if isinstance(crop, (list, tuple)) else crop)
    except ValueError:
        return {}
    mean = data_hparams.get("mean") or preset.mean
    std = data_hparams.get("std") or preset.std
    return {"input_size": list(preset.views[0].size_hw), "mean": [float(v) for v in mean],
            "std": [float(v) for v in std]}


def backbone_input_size(backbone: nn.Module) -> list[int] | None:
    """The fixed input size a backbone was built for, where it has one (our Atari CNNs, ViTs)."""
    size = getattr(backbone, "img_size", None)
    if size is None:
        size = getattr(getattr(backbone, "patch_embed", None), "img_size", None)
    if size is None:
        return None
    size = (size, size) if isinstance(size, int) else tuple(size)
    return [int(size[0]), int(size[1])]


def _strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _from_checkpoint(path: str | os.PathLike) -> tuple[dict, dict]:
    """``(backbone state_dict, metadata)`` of a pretraining checkpoint."""
    ckpt = read_checkpoint(path)
    hp = dict(ckpt["hyper_parameters"])
    if "backbone" not in hp:
        raise ValueError(f"{path}: hyper_parameters lack 'backbone'; is it a checkpoint of an SSLMethod?")
    state = _strip_prefix(ckpt["state_dict"], "backbone.")
    if not state:
        raise ValueError(f"{path}: its state_dict has no 'backbone.*' weights")
    kwargs = dict(hp.get("backbone_kwargs") or {})
    kwargs["in_chans"] = int(hp.get("in_chans", kwargs.get("in_chans", 3)))
    meta = {"backbone": hp["backbone"], "backbone_kwargs": kwargs, "method": _method_name(hp),
            "steps": int(ckpt.get("global_step", 0))}
    meta.update(_data_meta(ckpt.get("datamodule_hyper_parameters")))
    return state, meta


def _from_module(module: nn.Module) -> tuple[dict, dict, nn.Module]:
    """``(backbone state_dict, metadata, backbone)`` of an SSLMethod or a bare backbone."""
    backbone = getattr(module, "backbone", module)
    if not isinstance(backbone, nn.Module) or not hasattr(backbone, "backbone_name"):
        raise ValueError(f"cannot export a {type(module).__name__}: expected an SSLMethod or a backbone "
                         "built with ssl_toolkit.create_backbone (it records backbone_name/backbone_kwargs)")
    meta = {"backbone": backbone.backbone_name, "backbone_kwargs": dict(backbone.backbone_kwargs),
            "method": type(module).__name__ if backbone is not module else None, "steps": 0}
    trainer = getattr(module, "_trainer", None)
    if backbone is not module and trainer is not None:
        meta["steps"] = int(trainer.global_step)
        datamodule = getattr(trainer, "datamodule", None)
        meta.update(_data_meta(dict(getattr(datamodule, "hparams", {}) or {})))
    return backbone.state_dict(), meta, backbone


# ---- save ---------------------------------------------------------------------------------------
def save_encoder(module_or_ckpt: nn.Module | str | os.PathLike, path: str | os.PathLike, **meta: Any) -> dict:
    """Write the backbone of ``module_or_ckpt`` to ``path`` as safetensors with metadata.

    Args:
        module_or_ckpt: an SSLMethod (its ``.backbone`` is exported), a bare backbone from
            ``create_backbone``, or the path of a Lightning ``.ckpt`` from ``ssl-toolkit pretrain``.
        path: the ``.safetensors`` file to write (parents created; written to a temporary file and
            renamed, so a reader never sees half a file).
        **meta: values that replace or add to the inferred metadata, e.g. ``input_size=[84, 84]``,
            ``mean=[0.0], std=[1.0]``, ``method="VICReg"``, ``steps=1000``. JSON-serialisable.

    Returns:
        The metadata written, as Python values.
    """
    if isinstance(module_or_ckpt, (str, os.PathLike)):
        state, inferred = _from_checkpoint(module_or_ckpt)
        backbone = None
    else:
        state, inferred, backbone = _from_module(module_or_ckpt)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    if backbone is None:
        # rebuild once: checks the weights fit the recorded architecture before anything is written
        backbone = _build(inferred["backbone"], inferred["backbone_kwargs"])
        _check_state(backbone, state, str(module_or_ckpt))
    inferred.setdefault("input_size", backbone_input_size(backbone))
    inferred.setdefault("mean", None)
    inferred.setdefault("std", None)

    from ssl_toolkit import __version__

    info = {**inferred, **meta}
    info.update(in_chans=int(info["backbone_kwargs"].get("in_chans", 3)), num_features=int(backbone.num_features),
                version=__version__, sha256=weights_sha256(state), format=FORMAT)
    try:
        header = {k: json.dumps(v) for k, v in info.items()}
    except TypeError as err:
        raise ValueError(f"encoder metadata must be JSON-serialisable: {err}") from None

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=header)
    os.replace(tmp, path)
    return info


# ---- load ---------------------------------------------------------------------------------------
def _build(name: str, kwargs: dict) -> nn.Module:
    from ssl_toolkit.backbones import create_backbone

    return create_backbone(name, **kwargs)


def _check_state(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Every tensor of ``state`` matches ``module``'s in name and shape, or a one-line ValueError
    naming the first key that does not."""
    expected = module.state_dict()
    for key, tensor in state.items():
        if key not in expected:
            raise ValueError(f"{source}: weight {key!r} does not exist in the rebuilt "
                             f"{getattr(module, 'backbone_name', type(module).__name__)}; the metadata does not match the weights")
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise ValueError(f"{source}: shape mismatch at {key!r}: file has {tuple(tensor.shape)}, the rebuilt "
                             f"backbone expects {tuple(expected[key].shape)}; check in_chans/img_size overrides")
    missing = [k for k in expected if k not in state]
    if missing:
        raise ValueError(f"{source}: weight {missing[0]!r} is missing ({len(missing)} missing in all); "
                         "the file is not this backbone's full state_dict")


def read_encoder_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """``(state_dict, metadata)`` of an exported ``.safetensors`` file; no code runs while reading."""
    path = Path(path)
    _check_exists(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"{path} is not a readable safetensors file ({err})") from None
    try:
        meta = {k: json.loads(v) for k, v in header.items()}
    except json.JSONDecodeError:
        raise ValueError(f"{path}: metadata is not JSON-encoded; was it written by ssl_toolkit.save_encoder?") from None
    if "backbone" not in meta:
        raise ValueError(f"{path} has no 'backbone' metadata; export it with `ssl-toolkit export` or save_encoder")
    return state, meta


def _finish(module: nn.Module, meta: dict, freeze: bool) -> nn.Module:
    module.encoder_meta = {k: meta.get(k) for k in META_KEYS}
    module.encoder_meta.update({k: v for k, v in meta.items() if k not in META_KEYS})
    if freeze:
        module.requires_grad_(False)
        module.eval()
    return module


def load_encoder(spec: str | os.PathLike, freeze: bool = True, **overrides: Any) -> nn.Module:
    """Rebuild an encoder from an exported file, a checkpoint, or ``"random:<backbone>"``.

    Args:
        spec: a ``.safetensors`` file from ``save_encoder``/``ssl-toolkit export``; a Lightning ``.ckpt``
            (read with ``weights_only=True`` only); or ``"random:nature_cnn"``-style names for an
            untrained backbone.
        freeze: ``requires_grad=False`` on every parameter and ``eval()`` mode.
        **overrides: backbone keyword arguments that replace the recorded ones (e.g. ``in_chans=4``
            for ``random:``); the weights must still fit, or a ValueError names the first bad key.

    Returns:
        The backbone (``(B, in_chans, H, W) -> (B, num_features)``) with ``encoder_meta``: backbone,
        backbone_kwargs, in_chans, input_size (``[H, W]`` or None), mean, std (lists or None), method,
        steps, num_features, sha256 (plus version and format when read from a file).
    """
    if isinstance(spec, str) and spec.startswith("random:"):
        name = spec[len("random:"):]
        module = _build(name, overrides)
        meta = {"backbone": name, "backbone_kwargs": dict(module.backbone_kwargs),
                "in_chans": int(module.backbone_kwargs["in_chans"]), "input_size": backbone_input_size(module),
                "mean": None, "std": None, "method": "random", "steps": 0,
                "num_features": int(module.num_features), "sha256": weights_sha256(module.state_dict())}
        return _finish(module, meta, freeze)

    path = Path(spec)
    if path.suffix == ".ckpt":
        state, meta = _from_checkpoint(path)
    elif path.suffix == ".safetensors":
        state, meta = read_encoder_file(path)
        if meta.get("sha256") and weights_sha256(state) != meta["sha256"]:
            raise ValueError(f"{path}: the weights do not match the sha256 in its metadata; the file was altered")
    else:
        _check_exists(path)
        raise ValueError(f"cannot load {path}: expected a .safetensors file, a .ckpt or 'random:<backbone>'")

    kwargs = {**meta["backbone_kwargs"], **overrides}
    module = _build(meta["backbone"], kwargs)
    _check_state(module, state, str(path))
    module.load_state_dict(state)
    meta.update(backbone_kwargs=dict(module.backbone_kwargs), in_chans=int(module.backbone_kwargs["in_chans"]),
                num_features=int(module.num_features))
    meta.setdefault("input_size", backbone_input_size(module))
    meta.setdefault("sha256", weights_sha256(state))
    return _finish(module, meta, freeze)
