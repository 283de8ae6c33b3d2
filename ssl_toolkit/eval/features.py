"""Frozen-encoder features, extracted once and cached on disk, for the linear probe and kNN.

The evaluation view is the usual one (resize the shorter side to ``size / 0.875``, center-crop
``size``; no augmentation), normalised with the encoder's own mean/std (ImageNet's when it records
none). Features are computed under bf16 autocast and channels_last memory when that is faster on
the machine (``precision="auto"`` times one batch each way), and stored as float32.

The cache key is a SHA-256 over three things, so a stale cache cannot be hit by accident:

* the encoder's weights (every tensor of its ``state_dict``: name, dtype, shape, bytes);
* the data's identity: for an image folder every file's relative path, label, size and mtime; for
  shards every shard's path, size and mtime;
* the preprocessing: crop size, image mode, crop fraction, mean, std, precision.

A hit loads ``<cache_dir>/<key>.safetensors`` and skips extraction (``FeatureSet.cached``).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ssl_toolkit.augment.views import center_view

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_FRACTION = 0.875
CACHE_VERSION = 1  # bump when the stored layout or the extraction itself changes
PRECISIONS = ("auto", "bf16", "fp32")


def default_cache_dir() -> Path:
    """``$SSL_TOOLKIT_CACHE/features``, else ``$XDG_CACHE_HOME/ssl_toolkit/features``, else ``~/.cache/…``."""
    root = os.environ.get("SSL_TOOLKIT_CACHE")
    if root:
        return Path(root) / "features"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ssl_toolkit" / "features"


# ------------------------------------------------------------------------------------ the encoder
def load_frozen_encoder(spec: str | os.PathLike, seed: int = 0, **overrides: Any) -> nn.Module:
    """``ssl_toolkit.export.load_encoder(spec, freeze=True)``; a ``random:<backbone>`` encoder is drawn
    from torch's generator seeded with ``seed``, so the same spec gives the same weights (and cache)."""
    from ssl_toolkit.export import load_encoder

    spec_text = str(spec)
    if spec_text.startswith("random:"):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return load_encoder(spec_text, freeze=True, **overrides)
    if not Path(spec_text).exists():
        raise FileNotFoundError(
            f"encoder {spec_text!r} does not exist; pass a .safetensors export, a pretrain .ckpt or random:<backbone>"
        )
    return load_encoder(spec_text, freeze=True, **overrides)


def encoder_meta(encoder: nn.Module) -> dict[str, Any]:
    """The encoder's recorded metadata (``{}`` when it has none)."""
    return dict(getattr(encoder, "encoder_meta", None) or {})


def encoder_in_chans(encoder: nn.Module) -> int:
    meta = encoder_meta(encoder)
    if meta.get("in_chans"):
        return int(meta["in_chans"])
    return int(getattr(encoder, "backbone_kwargs", {}).get("in_chans", 3))


def normalisation(encoder: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` per channel: the encoder's, else ImageNet's (its channel average for 1 channel)."""
    meta = encoder_meta(encoder)
    channels = encoder_in_chans(encoder)
    if meta.get("mean") is not None and meta.get("std") is not None:
        mean, std = tuple(float(m) for m in meta["mean"]), tuple(float(s) for s in meta["std"])
    elif channels == 3:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        mean, std = (sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,)
    if len(mean) == 1 and channels > 1:
        mean, std = mean * channels, std * channels
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"encoder mean/std have {len(mean)}/{len(std)} entries for {channels} input channels; "
                         "re-export it with one entry per channel")
    return mean, std


def input_size(encoder: nn.Module, crop_size: int | None) -> tuple[int, int]:
    """The crop ``(H, W)``: ``crop_size`` when given, else the encoder's recorded ``input_size``, else 224."""
    if crop_size is not None:
        if crop_size < 1:
            raise ValueError(f"--crop-size must be a positive number of pixels, got {crop_size}")
        return crop_size, crop_size
    recorded = encoder_meta(encoder).get("input_size")
    if recorded:
        return int(recorded[0]), int(recorded[1])
    return 224, 224


def weights_sha256(encoder: nn.Module) -> str:
    """SHA-256 over every tensor of the encoder's ``state_dict`` (name, dtype, shape and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in encoder.state_dict().items():
        t = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{t.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------- the data
@dataclass
class EvalSource:
    """An evaluation split: an image folder or shards, listed once."""

    path: str
    kind: str  # "folder" | "shards"
    urls: list[str] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    num_samples: int = 0

    def identity(self) -> dict[str, Any]:
        """What the cache key depends on: every file (folder) or shard (shards) with size and mtime."""
        if self.kind == "folder":
            from ssl_toolkit.data.folder import list_image_folder

            samples, _ = list_image_folder(self.path)
            files = []
            for path, label in samples:
                st = os.stat(path)
                files.append([os.path.relpath(path, self.path), label, st.st_size, st.st_mtime_ns])
            return {"kind": "folder", "root": os.path.abspath(self.path), "files": files}
        shards = []
        for url in self.urls:
            st = os.stat(url) if os.path.exists(url) else None
            shards.append([os.path.abspath(url) if st else url, st.st_size if st else None,
                           st.st_mtime_ns if st else None])
        return {"kind": "shards", "shards": shards}


def open_source(path: str | os.PathLike) -> EvalSource:
    """List ``path``: an ImageFolder tree (labels from the subfolders) or shards (labels from ``.cls``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: it holds no images / matches no shard.
    """
    from ssl_toolkit.data.shards import count_samples, expand_shards, looks_like_shards, read_index

    text = str(path)
    if not looks_like_shards(text):
        if not os.path.exists(text):
            raise FileNotFoundError(
                f"data path {text!r} does not exist; pass an ImageFolder tree or shards (.tar, folder, pattern)")
        from ssl_toolkit.data.folder import list_image_folder

        samples, classes = list_image_folder(text)
        return EvalSource(text, "folder", classes=classes, num_samples=len(samples))
    urls = expand_shards(text)
    directory = os.path.dirname(urls[0])
    classes: list[str] = []
    classes_file = Path(directory) / "classes.json"
    if classes_file.is_file():  # name → index, as `shards from-folder` writes it
        mapping = json.loads(classes_file.read_text())
        classes = [name for name, _ in sorted(mapping.items(), key=lambda kv: kv[1])]
    else:
        classes = list((read_index(directory) or {}).get("classes") or [])
    return EvalSource(text, "shards", urls=urls, classes=classes, num_samples=count_samples(urls))


class CenterView:
    """Picklable DataLoader transform: encoded bytes → ``[uint8 (C, H, W)]``, the evaluation view."""

    def __init__(self, size: tuple[int, int], mode: str, crop_fraction: float = CROP_FRACTION):
        self.size, self.mode, self.crop_fraction = size, mode, crop_fraction

    def __call__(self, data: bytes) -> list[torch.Tensor]:
        return [center_view(data, self.size, self.mode, self.crop_fraction)]


def batches(
    source: EvalSource,
    transform: Callable[[bytes], list[torch.Tensor]],
    batch_size: int,
    num_workers: int,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(uint8 images (B, C, H, W), long labels (B,))`` of ``source`` through ``transform``.

    Without ``shuffle`` the order is the same on every call (folder order; shard file order).
    Unlabeled samples (label −1) and the stand-ins the shard reader puts in place of undecodable
    samples are dropped.
    """
    from torch.utils.data import DataLoader

    if source.kind == "folder":
        from ssl_toolkit.data.folder import ImageFolderDataset

        generator = torch.Generator().manual_seed(seed * 1000 + epoch)
        loader = DataLoader(ImageFolderDataset(source.path, transform=transform), batch_size=batch_size,
                            shuffle=shuffle, num_workers=num_workers, generator=generator,
                            persistent_workers=False)
    else:
        from ssl_toolkit.data.shards import ShardDataset, ShardLoader

        dataset = ShardDataset(source.urls, transform=transform, shuffle_buffer=1000 if shuffle else 0, seed=seed,
                               num_workers=num_workers, batch_size=batch_size)
        dataset.set_world(0, 1)  # evaluation reads every sample in this one process
        dataset.set_epoch(epoch)
        loader = ShardLoader(dataset, num_workers=num_workers)
    for batch in loader:
        images, labels = batch["views"][0], torch.as_tensor(batch["label"])
        keep = labels >= 0
        if "pad" in batch:
            keep &= ~batch["pad"]
        if not bool(keep.all()):
            images, labels = images[keep], labels[keep]
        if len(labels):
            yield images, labels


# ------------------------------------------------------------------------------------ the forward
class Normalize(nn.Module):
    """uint8 ``(B, C, H, W)`` → float ``(x / 255 − mean) / std``."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1) * 255, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std


def encode(encoder: nn.Module, x: torch.Tensor, bf16: bool) -> torch.Tensor:
    if bf16:
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return encoder(x).float()
    return encoder(x).float()


def precision_choices_file() -> Path:
    """Where ``"auto"`` remembers its choices: next to the feature cache (see :func:`default_cache_dir`)."""
    return default_cache_dir().parent / "precision_choices.json"


def pick_precision(encoder: nn.Module, x: torch.Tensor, precision: str) -> bool:
    """Whether to run bf16 autocast + channels_last: ``"bf16"``/``"fp32"`` as asked; ``"auto"`` times
    forwards of ``x`` each way (best of 3 after a warm-up) and takes the faster.

    bf16 changes the features slightly, enough to move a top-1 by a point, and for small encoders
    the two timings are close, so a fresh race could pick differently on every run. The first
    ``"auto"`` race for an (architecture, input shape, device, torch) is therefore remembered in
    :func:`precision_choices_file` and reused: results repeat on a machine.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision == "bf16"
    params = sum(p.numel() for p in encoder.parameters())
    key = f"{type(encoder).__name__}|{params}|{tuple(x.shape)}|{x.device.type}|torch {torch.__version__}"
    file = precision_choices_file()
    try:
        choices = json.loads(file.read_text())
    except (OSError, ValueError):
        choices = {}
    if key in choices:
        return bool(choices[key]["bf16"])
    with torch.inference_mode():
        seconds = {}
        for bf16 in (False, True):
            encode(encoder, x, bf16)
            times = []
            for _ in range(3):
                start = time.perf_counter()
                encode(encoder, x, bf16)
                times.append(time.perf_counter() - start)
            seconds[bf16] = min(times)
    choices[key] = {"bf16": seconds[True] < seconds[False], "seconds_fp32": seconds[False],
                    "seconds_bf16": seconds[True]}
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(f"{file.name}.{os.getpid()}.partial")
        tmp.write_text(json.dumps(choices, indent=1))
        os.replace(tmp, file)
    except OSError:
        pass  # a read-only cache only costs the race next time
    return choices[key]["bf16"]


def channels_last_encoder(encoder: nn.Module) -> nn.Module:
    """The encoder's conv weights in channels_last (a no-op for layers without 4-D weights)."""
    return encoder.to(memory_format=torch.channels_last)


# ---------------------------------------------------------------------------------------- the cache
@dataclass
class FeatureSet:
    """Features of one split: ``features`` float32 ``(N, D)``, ``labels`` long ``(N,)``."""

    features: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    cached: bool  # True: loaded from the cache, no image was read
    seconds: float  # extraction (or cache load) wall time
    key: str
    meta: dict[str, Any]

    @property
    def num_classes(self) -> int:
        top = int(self.labels.max()) + 1 if len(self.labels) else 0
        return max(len(self.classes), top)

    def summary(self) -> dict[str, Any]:
        return {"cached": self.cached, "seconds": self.seconds, "key": self.key, "num_samples": len(self.labels)}


def cache_key(weights: str, identity: dict[str, Any], preprocess: dict[str, Any]) -> str:
    payload = json.dumps({"version": CACHE_VERSION, "weights": weights, "data": identity, "preprocess": preprocess},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def extract_features(
    encoder: nn.Module,
    path: str | os.PathLike,
    crop_size: int | None = None,
    batch_size: int = 128,
    num_workers: int = 1,
    precision: str = "auto",
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    weights: str | None = None,
) -> FeatureSet:
    """Features of every labelled image under ``path`` (folder or shards), from the cache when there.

    Args:
        encoder: a frozen encoder, ``(B, C, H, W) -> (B, D)``.
        path: ImageFolder tree or shards.
        crop_size: evaluation crop (square); default the encoder's ``input_size``, else 224.
        batch_size, num_workers: of the decoding DataLoader.
        precision: ``"auto"`` (bf16 + channels_last when faster), ``"bf16"`` or ``"fp32"``.
        cache_dir: where features are stored (default :func:`default_cache_dir`).
        use_cache: read and write the cache (``False``: always extract, store nothing).
        weights: the encoder's :func:`weights_sha256` when already known.

    Returns:
        a :class:`FeatureSet`; ``cached`` tells whether extraction was skipped.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    source = open_source(path)
    size = input_size(encoder, crop_size)
    mode = "L" if encoder_in_chans(encoder) == 1 else "RGB"
    mean, std = normalisation(encoder)
    preprocess = {"size": list(size), "mode": mode, "crop_fraction": CROP_FRACTION, "mean": list(mean),
                  "std": list(std), "precision": precision}
    weights = weights or weights_sha256(encoder)
    key = cache_key(weights, source.identity(), preprocess)
    file = Path(cache_dir or default_cache_dir()) / f"{key}.safetensors"
    start = time.perf_counter()
    if use_cache and file.is_file():
        from safetensors.torch import load_file
        from safetensors import safe_open

        tensors = load_file(str(file))
        with safe_open(str(file), "pt") as f:
            meta = json.loads(f.metadata()["meta"])
        return FeatureSet(tensors["features"], tensors["labels"], meta.get("classes", []), True,
                          time.perf_counter() - start, key, meta)

    device = next((p.device for p in encoder.parameters()), torch.device("cpu"))
    normalize = Normalize(mean, std).to(device)
    encoder.eval()
    bf16: bool | None = None
    features, labels = [], []
    with torch.inference_mode():
        for images, y in batches(source, CenterView(size, mode), batch_size, num_workers):
            x = normalize(images.to(device))
            if bf16 is None:
                bf16 = pick_precision(encoder, x, precision)
                if bf16:
                    channels_last_encoder(encoder)
            features.append(encode(encoder, x, bf16).cpu())
            labels.append(y)
    if not features:
        raise ValueError(f"no labelled image under {str(path)!r}; the probes need class labels "
                         "(ImageFolder subfolders or .cls members)")
    feats, labels_t = torch.cat(features), torch.cat(labels)
    meta = {"path": str(path), "kind": source.kind, "classes": source.classes, "num_samples": len(labels_t),
            "num_features": feats.shape[1], "weights_sha256": weights, "bf16": bool(bf16), **preprocess}
    seconds = time.perf_counter() - start
    if use_cache:
        from safetensors.torch import save_file

        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(file.name + f".{os.getpid()}.partial")
        save_file({"features": feats.contiguous(), "labels": labels_t.contiguous()}, str(tmp),
                  metadata={"meta": json.dumps(meta)})
        os.replace(tmp, file)  # a crash mid-write never leaves a truncated cache entry
    return FeatureSet(feats, labels_t, source.classes, False, seconds, key, meta)


def extract_splits(encoder: nn.Module, train_path: str | os.PathLike, val_path: str | os.PathLike,
                   **kwargs: Any) -> tuple[FeatureSet, FeatureSet]:
    """:func:`extract_features` of a train and a val split (``kwargs`` as there), the weights hashed once."""
    kwargs.setdefault("weights", weights_sha256(encoder))
    return extract_features(encoder, train_path, **kwargs), extract_features(encoder, val_path, **kwargs)
