"""WebDataset shards: find them, count them, stream them, write them.

A shard is a plain ``.tar`` whose members are grouped into samples by their key (the file name up to
the first dot): ``<key>.jpg|jpeg|png|webp`` holds the encoded image, an optional ``<key>.cls`` (an
integer as text) or ``<key>.json`` (with a ``"label"`` or ``"cls"`` entry) the label; a sample without
one gets label ``-1``. Other members (``.ram``, …) ride along untouched.

Reading goes through webdataset's pipeline stages: shards are dealt to ranks (``split_by_node``) and to
DataLoader workers (``split_by_worker``), samples pass a shuffle buffer, and the transform receives the
*encoded bytes* — nothing is decoded to PIL or float here, because the
:class:`~ssl_toolkit.augment.ViewSampler` decodes faster (reduced-size JPEG decode) than a generic
decoder would. Every shard is checked to exist before a worker starts, so a typo fails at once with
the path in the message, not minutes later inside a worker.

Writing (:func:`write_shards`) puts ``index.json`` next to the shards with each shard's sample count;
readers use it for the epoch length instead of scanning the tar files.
"""
from __future__ import annotations

import glob
import json
import math
import os
import tarfile
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import braceexpand
import webdataset as wds

INDEX_NAME = "index.json"
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
UNLABELED = -1


# ----------------------------------------------------------------------------------------- finding
def _is_remote(url: str) -> bool:
    return "://" in url or url.startswith("pipe:")


def looks_like_shards(spec: str | os.PathLike) -> bool:
    """Whether ``spec`` names shards (a ``.tar`` file, a brace/glob pattern, or a folder of ``.tar``)
    rather than an image folder."""
    spec = str(spec)
    if _is_remote(spec) or spec.endswith(".tar") or any(c in spec for c in "{*?["):
        return True
    return os.path.isdir(spec) and bool(glob.glob(os.path.join(glob.escape(spec), "*.tar")))


def expand_shards(spec: str | os.PathLike | Sequence[str]) -> list[str]:
    """Turn a shard spec into the list of shard paths, checking that each local one exists.

    Args:
        spec: a ``.tar`` path, a brace pattern (``train-{000000..000127}.tar``), a glob
            (``train-*.tar``), a folder (all ``*.tar`` in it, sorted), or a list of those.
            URLs (``s3://…``, ``pipe:…``) are passed through unchecked.

    Raises:
        FileNotFoundError: a named shard or folder does not exist.
        ValueError: the spec matches no shard.
    """
    if isinstance(spec, (list, tuple)):
        return [url for s in spec for url in expand_shards(s)]
    spec = str(spec)
    if _is_remote(spec):
        return list(braceexpand.braceexpand(spec))
    if os.path.isdir(spec):
        urls = sorted(glob.glob(os.path.join(glob.escape(spec), "*.tar")))
        if not urls:
            raise ValueError(f"no *.tar shards in directory {spec!r}; write some with `ssl-toolkit shards from-folder`")
        return urls
    urls = []
    for part in braceexpand.braceexpand(spec):
        urls.extend(sorted(glob.glob(part)) if any(c in part for c in "*?[") else [part])
    if not urls:
        raise ValueError(f"shard pattern {spec!r} matches no file; check the directory and the pattern")
    missing = [u for u in urls if not os.path.isfile(u)]
    if missing:
        more = f" (and {len(missing) - 1} more of {len(urls)})" if len(missing) > 1 else ""
        raise FileNotFoundError(f"shard {missing[0]!r} from {spec!r} does not exist{more}; check the path/pattern")
    return urls


# ---------------------------------------------------------------------------------------- counting
def read_index(directory: str | os.PathLike) -> dict | None:
    """The ``index.json`` of a shard folder, or ``None`` when there is none."""
    path = Path(directory) / INDEX_NAME
    if not path.is_file():
        return None
    with open(path) as f:
        return json.load(f)


def _count_tar(path: str) -> int:
    keys = set()
    with tarfile.open(path, "r:*") as tar:
        for member in tar:
            if member.isreg():
                head, base = os.path.split(member.name)
                keys.add((head, base.split(".", 1)[0]))
    return len(keys)


def count_samples(urls: Sequence[str]) -> int:
    """Number of samples in ``urls``: from each folder's ``index.json`` where it lists the shard,
    else by reading the tar headers. Remote shards without an index cannot be counted (``ValueError``)."""
    total = 0
    counts_by_dir: dict[str, dict[str, int]] = {}
    for url in urls:
        directory, name = os.path.split(url)
        if directory not in counts_by_dir:
            index = read_index(directory) if not _is_remote(url) else None
            counts_by_dir[directory] = {s["name"]: int(s["count"]) for s in (index or {}).get("shards", [])}
        counts = counts_by_dir[directory]
        if name in counts:
            total += counts[name]
        elif _is_remote(url):
            raise ValueError(f"cannot count samples of remote shard {url!r}: it has no local {INDEX_NAME}")
        else:
            total += _count_tar(url)
    return total


# ----------------------------------------------------------------------------------------- reading
def sample_label(sample: dict[str, Any]) -> int:
    """Label of a raw webdataset sample: ``cls`` text, else ``json["label"]``/``json["cls"]``, else -1."""
    if "cls" in sample:
        return int(bytes(sample["cls"]).decode().strip())
    if "json" in sample:
        meta = json.loads(sample["json"])
        for name in ("label", "cls"):
            if isinstance(meta, dict) and meta.get(name) is not None:
                return int(meta[name])
    return UNLABELED


def sample_image(sample: dict[str, Any]) -> bytes:
    """The encoded image bytes of a raw webdataset sample."""
    for ext in IMAGE_KEYS:
        if ext in sample:
            return sample[ext]
    raise ValueError(
        f"sample {sample.get('__key__')!r} in {sample.get('__url__')!r} has no image member "
        f"({'/'.join(IMAGE_KEYS)}); it has {sorted(k for k in sample if not k.startswith('__'))}"
    )


def _to_item(sample: dict[str, Any], transform: Callable[[bytes], Any] | None) -> dict[str, Any]:
    image = sample_image(sample)
    views = transform(image) if transform is not None else image
    return {"views": views, "label": sample_label(sample), "key": sample["__key__"]}


def _world() -> tuple[int, int]:
    # the same source of rank and world size as webdataset's split_by_node (env RANK/WORLD_SIZE, else
    # torch.distributed), so the sizes computed here match the split it makes
    rank, world_size, _, _ = wds.utils.pytorch_worker_info()
    return rank, world_size


class ShardDataset(wds.DataPipeline):
    """Stream shards as ``{"views": transform(image_bytes), "label": int, "key": str}`` items.

    A webdataset :class:`~webdataset.DataPipeline` (an ``IterableDataset``) with a ``len()``, so
    Lightning knows the epoch length and can size schedules.

    Args:
        urls: shard paths (see :func:`expand_shards`).
        transform: applied to the encoded image bytes (the ``ViewSampler``); ``None`` keeps the bytes.
        shuffle_buffer: samples held in the shuffle buffer; ``0`` or ``1`` reads in shard order
            (and then shards are not shuffled either).
        seed: seeds the shard order (the same on every rank and worker, reshuffled each epoch) and the
            sample buffer.
        num_samples: total samples in ``urls``; counted with :func:`count_samples` when ``None``.
        num_workers, batch_size, drop_last: how the DataLoader batches (each worker batches its own
            stream). They size ``len()``: under ``torch.distributed`` every worker yields exactly
            ``ceil(num_samples / (world_size · max(num_workers, 1)))`` samples (re-reading its shards
            when it runs dry; after the first pass workers no longer agree on the shard order, which makes
            later refills random subsets) so all ranks run the same number of steps, and ``len()`` is exact; in one
            process every sample is read exactly once per epoch and, as the workers' last partial
            batches depend on how shards fall to workers, ``len()`` is padded so that the DataLoader's
            length is an upper bound (the epoch ends when the stream runs dry).

    Raises:
        ValueError: under ``torch.distributed``, fewer shards than ranks × workers.
    """

    def __init__(
        self,
        urls: Sequence[str],
        transform: Callable[[bytes], Any] | None = None,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        num_samples: int | None = None,
        num_workers: int = 0,
        batch_size: int = 1,
        drop_last: bool = False,
    ):
        urls = list(urls)
        _, world_size = _world()
        workers = max(num_workers, 1)
        if world_size > 1 and len(urls) < world_size * workers:
            raise ValueError(
                f"{len(urls)} shard(s) for {world_size} ranks × {workers} workers: every worker needs at least "
                "one shard; write smaller shards (shards from-folder --max-count) or use fewer workers"
            )
        shuffle = shuffle_buffer > 1
        super().__init__(
            wds.SimpleShardList(urls),
            # same seed and epoch counter on every rank and worker, so they agree on the order they split
            wds.detshuffle(len(urls), initial=len(urls), seed=seed) if shuffle else None,
            wds.split_by_node,
            wds.split_by_worker,
            wds.tarfile_to_samples(),
            wds.detshuffle(shuffle_buffer, initial=min(shuffle_buffer, 100), seed=seed + 1) if shuffle else None,
            wds.map(partial(_to_item, transform=transform)),
        )
        self.urls = urls
        self.num_samples = count_samples(urls) if num_samples is None else num_samples
        if world_size > 1:
            per_worker = math.ceil(self.num_samples / (world_size * workers))
            self.with_epoch(per_worker)
            batches = per_worker // batch_size if drop_last else math.ceil(per_worker / batch_size)
            self.size = workers * batches * batch_size
        else:
            self.size = self.num_samples + (0 if drop_last else (workers - 1) * (batch_size - 1))

    def __len__(self) -> int:
        return self.size


# ----------------------------------------------------------------------------------------- writing
def _check_key(key: Any) -> str:
    if not isinstance(key, str) or not key or "." in os.path.basename(key):
        raise ValueError(f"sample key {key!r} must be a non-empty string without '.' (webdataset splits keys at the first dot)")
    return key


def write_shards(
    samples: Iterable[dict[str, Any]],
    out_dir: str | os.PathLike,
    prefix: str = "shard",
    max_count: int = 10000,
    metadata: dict[str, Any] | None = None,
) -> list[str]:
    """Write samples into ``OUT/<prefix>-000000.tar, …`` and ``OUT/index.json``.

    Args:
        samples: dicts with ``"__key__"`` (unique, no dot) and one entry per member, named by its
            extension: ``bytes`` are stored as they are, ``str`` as UTF-8, ``"cls"`` ints as text,
            ``"json"`` dicts as JSON, numpy/PIL images under ``"png"``/``"jpg"`` encoded by webdataset.
        out_dir: created if missing.
        prefix: shard file prefix.
        max_count: samples per shard.
        metadata: extra entries stored in ``index.json`` (e.g. how the data was made).

    Returns:
        the shard paths, in order. ``index.json`` holds ``{"shards": [{"name", "count"}], "num_samples",
        …metadata}``; it describes one shard set per folder (a later write replaces it).
    """
    if max_count < 1:
        raise ValueError(f"max_count must be >= 1, got {max_count}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, Any]] = []
    paths: list[str] = []
    writer = None

    def close_current() -> None:
        # written under a temporary name and renamed when complete, so a crash leaves no truncated .tar
        writer.close()
        os.replace(paths[-1] + ".partial", paths[-1])

    try:
        for sample in samples:
            _check_key(sample.get("__key__"))
            if writer is None or shards[-1]["count"] >= max_count:
                if writer is not None:
                    close_current()
                name = f"{prefix}-{len(shards):06d}.tar"
                paths.append(str(out_dir / name))
                shards.append({"name": name, "count": 0})
                writer = wds.TarWriter(paths[-1] + ".partial")
            writer.write(sample)
            shards[-1]["count"] += 1
        if writer is not None:
            close_current()
            writer = None
    finally:
        if writer is not None:
            writer.close()
    index = {"shards": shards, "num_samples": sum(s["count"] for s in shards), **(metadata or {})}
    with open(out_dir / INDEX_NAME, "w") as f:
        json.dump(index, f, indent=1)
    return paths
