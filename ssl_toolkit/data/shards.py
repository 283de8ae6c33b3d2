"""WebDataset shards: find them, count them, deal each epoch to ranks and workers, stream them, write them.

A shard is a plain ``.tar`` whose members are grouped into samples by their key (the file name up to
the first dot): ``<key>.jpg|jpeg|png|webp`` holds the encoded image, an optional ``<key>.cls`` (an
integer as text) or ``<key>.json`` (with a ``"label"`` or ``"cls"`` entry) the label; a sample without
one gets label ``-1``. Other members (``.ram``, …) ride along untouched. Shards are read through
webdataset (``tarfile_samples``: local paths, ``pipe:`` commands, ``http(s)://`` URLs) and the transform
receives the *encoded bytes*: the :class:`~ssl_toolkit.augment.ViewSampler` decodes faster (reduced-size
JPEG decode) than a generic decoder would.

**The epoch plan.** Every rank and every DataLoader worker computes the same plan from the per-shard
sample counts (``index.json``, else a pass over the tar headers), the seed and the epoch number:

1. the shards are put in an order drawn from ``(seed, epoch)`` (file order when shuffling is off);
2. that order is one sequence of N samples, and rank r takes a contiguous run of it: ⌊N/R⌋ or
   ⌈N/R⌉ samples. A shard that straddles two runs is read by both ranks, each keeping its own
   positions, so the split is exact to the sample whatever the shard count;
3. each rank cuts its run into B = ⌈N / (R·batch_size)⌉ batches, full but for the last (with
   N mod R ≠ 0 the ranks' last batches differ by one sample; in the rare case where a rank would lack
   a sample for its last batch, its last full batch is split in two instead). Every rank therefore
   runs the same number of steps — DDP would hang otherwise — and every sample is read exactly once;
4. a rank's batches go to its W DataLoader workers in contiguous blocks of ⌊B/W⌋ or ⌈B/W⌉ batches;
   each worker reads exactly the samples of its block and forms those batches itself.

Why not deal whole shards round-robin: the ranks would hold up to a shard (~1,000 samples) more or
less than each other, and equal step counts would then need either dropping those samples or repeating
others. The price of the exact split is I/O: a shard that straddles two runs has its first part read
(not decoded) twice, at most R·W − 1 shards per epoch (≈ 2 % of ImageNet's 1,282 shards at 8 × 8).

``drop_last=True`` is the one alternative: B = ⌊N / (R·batch_size)⌋ full batches per rank, and the
samples past R·B·batch_size in that epoch's order — fewer than one global batch, a different set each
epoch when shuffling — are not read. ``resample=True`` draws shards with replacement instead (as
webdataset's ``ResampledShards``), each worker from its own seeded stream, until it has its share of
``epoch_length`` samples; no sample is then "once", but no split can be uneven.

**Shuffling.** Shards are reshuffled each epoch from ``(seed, epoch)`` and samples pass a shuffle buffer
seeded by ``(seed, epoch, rank, worker)``, so an epoch's order is the same whenever it is replayed.
The epoch number comes from the caller (:meth:`ShardDataset.set_epoch`; :class:`ShardLoader` sets it
right before each epoch's workers start, and its workers are not persistent so that they receive it).

**Resuming mid-epoch.** Every item carries its *slot* (shard index, position in the shard). A
:class:`StreamProgress` records the slots a rank has trained on as one bitmap per shard; merged over
the ranks it goes into the checkpoint, and :meth:`ShardDataset.resume_from` replans the same epoch
without those slots: the remaining samples of every rank, each exactly once, cut into exactly the
batches the epoch still has.

**Bad data** never stops a run and is never silent: a sample without an image member, an image that
does not decode, and the samples lost to a truncated or unreadable tar are skipped with one warning
each (naming shard and key) and counted; every batch carries ``skipped``, the number its worker
skipped since its previous batch. So that counts stay exact (ranks must agree on the step count),
each skipped slot is filled with a repeat of the worker's previous good sample, freshly augmented,
marked ``pad``.

Writing (:func:`write_shards`) puts ``index.json`` next to the shards with each shard's sample count.
"""
from __future__ import annotations

import glob
import itertools
import json
import logging
import math
import os
import random
import tarfile
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import braceexpand
import torch
import webdataset as wds

from ssl_toolkit.data.ustar import UstarWriter
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

INDEX_NAME = "index.json"
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
UNLABELED = -1
# a worker whose first this-many decodes all fail has a broken transform, not bad data
_MAX_FAILURES_WITHOUT_SUCCESS = 50

log = logging.getLogger(__name__)


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
            URLs (``https://…``, ``pipe:…``) are passed through unchecked.

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
    """The ``index.json`` of a shard folder (or of a URL's folder, ``https://host/data``), or ``None`` when
    there is none."""
    if _is_remote(str(directory)):
        return _read_remote_index(str(directory))
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


def _read_remote_index(directory: str) -> dict | None:
    """``<directory>/index.json`` of a URL (``https://…``), fetched through webdataset's ``gopen``."""
    if directory.startswith("pipe:") or "://" not in directory:
        return None
    url = f"{directory}/{INDEX_NAME}"
    try:
        if url.startswith(("http://", "https://")):  # one request, not gopen's curl with 30 retries
            with urllib.request.urlopen(url, timeout=30) as response:
                return json.loads(response.read())
        with wds.gopen(url, "rb") as stream:
            return json.loads(stream.read())
    except Exception:  # no index there: 404, no such host, not JSON, the tool's exit status, …
        return None


def shard_counts(urls: Sequence[str]) -> list[int]:
    """Samples in each of ``urls``: from its folder's ``index.json`` where that lists the shard (for URLs,
    the ``index.json`` next to them), else by reading the tar headers of local shards. Remote shards
    without an index cannot be counted (``ValueError``)."""
    out = []
    counts_by_dir: dict[str, dict[str, int]] = {}
    for url in urls:
        directory, name = url.rsplit("/", 1) if "/" in url else ("", url)
        if directory not in counts_by_dir:
            index = read_index(directory or ".")
            counts_by_dir[directory] = {s["name"]: int(s["count"]) for s in (index or {}).get("shards", [])}
        counts = counts_by_dir[directory]
        if name in counts:
            out.append(counts[name])
        elif _is_remote(url):
            raise ValueError(
                f"cannot count samples of remote shard {url!r}: no {INDEX_NAME} next to it lists it; "
                "read it with resample=True and an epoch_length"
            )
        else:
            out.append(_count_tar(url))
    return out


def count_samples(urls: Sequence[str]) -> int:
    """Total samples in ``urls`` (see :func:`shard_counts`)."""
    return sum(shard_counts(urls))


# ------------------------------------------------------------------------------------ sample fields
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


def _find_image(sample: dict[str, Any]) -> bytes | None:
    for ext in IMAGE_KEYS:
        if ext in sample:
            return sample[ext]
    return None


def _members(sample: dict[str, Any]) -> list[str]:
    return sorted(k for k in sample if not k.startswith("__"))


def sample_image(sample: dict[str, Any]) -> bytes:
    """The encoded image bytes of a raw webdataset sample."""
    image = _find_image(sample)
    if image is None:
        raise ValueError(
            f"sample {sample.get('__key__')!r} in {sample.get('__url__')!r} has no image member "
            f"({'/'.join(IMAGE_KEYS)}); it has {_members(sample)}"
        )
    return image


# ---------------------------------------------------------------------------------------- planning
def _balanced(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` integers differing by at most one, larger ones first."""
    return [total // parts + (i < total % parts) for i in range(parts)]


def steps_per_epoch(num_samples: int, world_size: int, batch_size: int, drop_last: bool) -> int:
    """Batches every rank yields per epoch (see the module docstring).

    Raises:
        ValueError: too few samples to give every rank a batch (or, with ``batch_size=1`` and no
            ``drop_last``, a sample count that does not divide by the ranks).
    """
    if drop_last:
        steps = num_samples // (world_size * batch_size)
        if steps == 0:
            raise ValueError(
                f"{num_samples} samples make no full batch of {batch_size} on each of {world_size} rank(s)"
            )
        return steps
    steps = math.ceil(num_samples / (world_size * batch_size))
    if num_samples // world_size < steps:
        raise ValueError(
            f"{num_samples} samples cannot give each of {world_size} ranks {steps} non-empty batches of "
            f"≤ {batch_size}; use drop_last or fewer ranks"
        )
    return steps


def _batch_sizes(num_items: int, num_batches: int, batch_size: int) -> list[int]:
    """``num_items`` in ``num_batches`` batches of 1…batch_size, as many full ones as possible, first."""
    if num_batches == 0:
        return []
    if batch_size == 1:
        return [1] * num_batches
    full = min(num_batches, (num_items - num_batches) // (batch_size - 1))
    rest, left = num_batches - full, num_items - full * batch_size
    return [batch_size] * full + ([left - (rest - 1)] + [1] * (rest - 1) if rest else [])


def shard_order(num_shards: int, seed: int, epoch: int, shuffle: bool) -> list[int]:
    """The epoch's shard order: a permutation drawn from ``(seed, epoch)``, or file order."""
    order = list(range(num_shards))
    if shuffle:
        random.Random(f"shards:{seed}:{epoch}").shuffle(order)  # str seeds hash the same in every process
    return order


def _is_set(bits: bytes | None, i: int) -> bool:
    return bits is not None and i >> 3 < len(bits) and bool(bits[i >> 3] >> (i & 7) & 1)


@dataclass(frozen=True)
class Piece:
    """Positions ``start ≤ i < stop`` (tar order) of shard ``shard`` (an index into the urls); positions
    set in ``delivered`` (a bitmap over the shard, from a resumed epoch) are left out. ``stop=None``: to
    the end of the shard."""

    shard: int
    start: int
    stop: int | None
    delivered: bytes | None = None

    def wanted(self, i: int) -> bool:
        return not _is_set(self.delivered, i)

    def positions(self) -> list[int]:
        assert self.stop is not None
        return [i for i in range(self.start, self.stop) if self.wanted(i)]

    def size(self) -> int:
        return self.stop - self.start if self.delivered is None else len(self.positions())


@dataclass
class WorkerPlan:
    """What one worker reads (``pieces``, or with resampling ``count`` samples of random shards) and how
    it batches them (``batch_sizes``; ``None`` yields single items)."""

    count: int
    batch_sizes: list[int] | None
    pieces: list[Piece] = field(default_factory=list)


def _take(piece: Piece, n: int) -> tuple[Piece, Piece | None]:
    """The first ``n`` wanted positions of ``piece`` as a piece, and the rest (or None)."""
    if piece.delivered is None:
        cut = piece.start + n
    else:
        cut = piece.positions()[n - 1] + 1 if n else piece.start
    rest = Piece(piece.shard, cut, piece.stop, piece.delivered) if cut < piece.stop else None
    return Piece(piece.shard, piece.start, cut, piece.delivered), rest


def _split_workers(pieces: list[Piece], counts: list[int]) -> list[list[Piece]]:
    """Cut the run ``pieces`` (sizes summing to ``sum(counts)``) into consecutive parts of ``counts``."""
    out: list[list[Piece]] = []
    queue = [(p, p.size()) for p in pieces]
    queue.reverse()
    for need in counts:
        part: list[Piece] = []
        while need > 0 and queue:
            piece, size = queue.pop()
            if size <= need:
                part.append(piece)
                need -= size
            else:
                head, rest = _take(piece, need)
                part.append(head)
                queue.append((rest, size - need))
                need = 0
        out.append(part)
    return out


# -------------------------------------------------------------------------------------- progress
class StreamProgress:
    """What one rank has trained on of one epoch's stream, for checkpoints.

    :meth:`update` takes every training batch (its ``slot`` column: shard index and position); the
    state holds the epoch, the plan's key (what must match to resume it), the batches taken, the items
    taken per rank and, per shard, a bitmap of the positions delivered. :meth:`merge` combines the
    ranks' states (bitwise or): positions belong to one rank each.
    """

    def __init__(self, epoch: int, plan: dict, rank: int, resume: dict | None = None):
        self.epoch, self.plan, self.rank = epoch, plan, rank
        self.batches = int(resume["batches"]) if resume else 0
        self.items = {int(r): int(n) for r, n in (resume or {}).get("items", {}).items()}
        self.items.setdefault(rank, 0)
        self.bits = {int(s): bytearray(b) for s, b in (resume or {}).get("delivered", {}).items()}

    def update(self, slots: torch.Tensor) -> None:
        self.batches += 1
        self.items[self.rank] += len(slots)
        for shard, i in slots.tolist():
            bits = self.bits.get(shard)
            if bits is None:
                bits = self.bits[shard] = bytearray()
            if i >> 3 >= len(bits):
                bits.extend(bytes((i >> 3) + 1 - len(bits)))
            bits[i >> 3] |= 1 << (i & 7)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "plan": dict(self.plan), "batches": self.batches, "items": dict(self.items),
                "delivered": {s: bytes(b) for s, b in self.bits.items()}}

    @staticmethod
    def merge(states: Sequence[dict]) -> dict:
        """One state from every rank's (same epoch and plan)."""
        first = states[0]
        delivered: dict[int, bytearray] = {}
        items: dict[int, int] = {}
        for state in states:
            if (state["epoch"], state["plan"]) != (first["epoch"], first["plan"]):
                raise ValueError("cannot merge stream progress of different epochs or plans")
            for r, n in state["items"].items():
                items[r] = max(items.get(r, 0), n)
            for s, b in state["delivered"].items():
                acc = delivered.setdefault(s, bytearray())
                if len(acc) < len(b):
                    acc.extend(bytes(len(b) - len(acc)))
                for j, byte in enumerate(b):
                    acc[j] |= byte
        return {"epoch": first["epoch"], "plan": first["plan"], "batches": max(s["batches"] for s in states),
                "items": items, "delivered": {s: bytes(b) for s, b in delivered.items()}}


# ----------------------------------------------------------------------------------------- reading
def _world() -> tuple[int, int]:
    """(rank, world size): torch.distributed when initialised, else env ``RANK``/``WORLD_SIZE`` (as
    webdataset's ``pytorch_worker_info`` reads them), else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    rank, world_size, _, _ = wds.utils.pytorch_worker_info()
    return rank, world_size


class _Skips:
    """A worker's skipped-sample count since its previous batch."""

    def __init__(self):
        self.count = 0

    def add(self, n: int = 1) -> None:
        self.count += n

    def take(self) -> int:
        n, self.count = self.count, 0
        return n


class ShardDataset(IterableDataset):
    """Stream shards as items ``{"views", "label", "key", "url"}`` or, with ``batch_size``, as batches
    formed in the workers (see the module docstring for how an epoch is dealt).

    A batch is ``{"views": [stacked per view] (or lists of bytes without a transform), "label": long (B,),
    "key": [str], "url": [str], "slot": long (B, 2) (shard index, position), "pad": bool (B,),
    "skipped": int}`` (plus ``"partner": [str]`` with temporal pairs); :class:`SSLDataModule` consumes the
    last three. Iterate it through :class:`ShardLoader` (or a ``DataLoader(batch_size=None,
    num_workers=num_workers)`` after :meth:`set_epoch`); iterated in the main process it reads every
    worker's share in turn.

    Args:
        urls: shard paths or URLs (see :func:`expand_shards`).
        transform: applied to the encoded image bytes (the ``ViewSampler``) — or, with
            ``temporal_offset``, to the two frames of a pair (``TemporalViews``); ``None`` keeps bytes.
        shuffle_buffer: samples in each worker's shuffle buffer; ``0`` or ``1`` reads in shard order and
            does not shuffle the shards either.
        seed: seeds the shard order and the shuffle buffers, with the epoch.
        num_workers: the DataLoader's workers (0 = the main process); the plan is made for them.
        batch_size: form batches of this size in the workers; ``None`` yields items.
        drop_last: only full batches; the end of each epoch's order (< one global batch) is not read.
        resample: draw shards with replacement, ``epoch_length`` samples per epoch in total.
        epoch_length: samples per epoch over all ranks with ``resample`` (default: the shards' total);
            without it, only the first ``epoch_length`` samples of each epoch's shard order are read.
        temporal_offset: pair every frame with the frame ``k`` steps later in its episode (see
            :mod:`ssl_toolkit.data.temporal`): ``k`` fixed (int) or uniform in ``[lo, hi]``.
        counts: samples per shard, when known; else :func:`shard_counts`.

    Raises:
        ValueError: the shards cannot be counted (remote, no index, no ``resample``/``counts``), or
            there are too few samples for one batch per rank (see :func:`steps_per_epoch`).
    """

    def __init__(
        self,
        urls: Sequence[str],
        transform: Callable[..., Any] | None = None,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        num_workers: int = 0,
        batch_size: int | None = None,
        drop_last: bool = False,
        resample: bool = False,
        epoch_length: int | None = None,
        temporal_offset: int | Sequence[int] | None = None,
        counts: Sequence[int] | None = None,
    ):
        from ssl_toolkit.data.temporal import parse_offset

        self.urls = list(urls)
        if not self.urls:
            raise ValueError("no shards to read")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if epoch_length is not None and epoch_length < 1:
            raise ValueError(f"epoch_length must be >= 1, got {epoch_length}")
        self.transform = transform
        self.shuffle = shuffle_buffer > 1
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.num_workers = max(num_workers, 1)
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.resample = resample
        self.temporal = parse_offset(temporal_offset)
        if counts is not None:
            self.counts: list[int] | None = [int(c) for c in counts]
        elif resample and epoch_length is not None:
            # drawn with replacement, shards need no counts; local ones are counted for exact skip counts
            self.counts = None if any(_is_remote(u) for u in self.urls) else shard_counts(self.urls)
        else:
            self.counts = shard_counts(self.urls)
        total = sum(self.counts) if self.counts is not None else None
        if resample:
            self.epoch_length = epoch_length if epoch_length is not None else total
        else:
            self.epoch_length = min(epoch_length, total) if epoch_length is not None else total
        self.num_samples = self.epoch_length
        self.epoch = 0
        self.resume: dict | None = None
        self.rank, self.world_size = _world()
        len(self)  # fail now, not in a worker, when the samples cannot be dealt

    # ---- the plan --------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """The epoch whose order to read (reshuffles); set before iterating."""
        self.epoch = int(epoch)

    def set_world(self, rank: int, world_size: int) -> None:
        """This process's rank and the number of ranks (default: from torch.distributed or env)."""
        self.rank, self.world_size = int(rank), int(world_size)

    def plan_key(self) -> dict:
        """What a checkpointed epoch's plan depends on; a resume needs all of it unchanged."""
        return {"shards": len(self.urls), "samples": self.epoch_length, "world_size": self.world_size,
                "batch_size": self.batch_size, "drop_last": self.drop_last, "seed": self.seed,
                "shuffle": self.shuffle, "resample": self.resample}

    def resume_from(self, state: dict | None) -> bool:
        """Read only what ``state`` (a merged :class:`StreamProgress` state) has not delivered, when it is
        of this dataset's epoch and plan; returns whether it applies (``None`` clears it)."""
        self.resume = None
        if state is None or int(state["epoch"]) != self.epoch:
            return False
        if dict(state["plan"]) != self.plan_key():
            log.warning("not resuming the data stream mid-epoch: its layout changed (%s, now %s); this epoch's "
                        "samples are read from the start again", state["plan"], self.plan_key())
            return False
        self.resume = state
        return True

    def _rank_sizes(self) -> list[int]:
        if self.batch_size is not None and self.drop_last:
            steps = steps_per_epoch(self.epoch_length, self.world_size, self.batch_size, True)
            return [steps * self.batch_size] * self.world_size
        return _balanced(self.epoch_length, self.world_size)

    def __len__(self) -> int:
        """Batches (or items, without ``batch_size``) this rank yields in a full epoch."""
        if self.epoch_length is None:
            raise ValueError("cannot size an epoch of uncounted shards; give resample=True an epoch_length")
        if self.batch_size is None:
            return self._rank_sizes()[self.rank]
        return steps_per_epoch(self.epoch_length, self.world_size, self.batch_size, self.drop_last)

    def plans(self) -> list[WorkerPlan]:
        """This rank's plan for the current epoch (and resume point), one entry per worker."""
        sizes = self._rank_sizes()
        own = sizes[self.rank]
        pieces: list[Piece] = []
        resume = self.resume
        if resume is not None and self.resample:
            own -= int(resume["items"].get(self.rank, 0))
        elif not self.resample:
            delivered = {int(s): b for s, b in resume["delivered"].items()} if resume else {}
            start, offset = sum(sizes[: self.rank]), 0
            stop = start + own
            for shard in shard_order(len(self.urls), self.seed, self.epoch, self.shuffle):
                count = self.counts[shard]
                lo, hi = max(start, offset) - offset, min(stop, offset + count) - offset
                if lo < hi:
                    piece = Piece(shard, lo, hi, delivered.get(shard))
                    if piece.delivered is None or piece.size():
                        pieces.append(piece)
                offset += count
                if offset >= stop:
                    break
            own = sum(p.size() for p in pieces)
        if self.batch_size is None:
            per_worker, sizes_w = _balanced(own, self.num_workers), [None] * self.num_workers
        else:
            steps = len(self) - (int(resume["batches"]) if resume else 0)
            if not steps <= own <= steps * self.batch_size:
                log.warning("resume point of epoch %d does not fit its plan (%d samples left for %d batches); "
                            "batching what is left", self.epoch, own, steps)
                steps = math.ceil(own / self.batch_size)
            batch_sizes = _batch_sizes(own, steps, self.batch_size)
            sizes_w, at = [], 0
            for n in _balanced(steps, self.num_workers):
                sizes_w.append(batch_sizes[at : at + n])
                at += n
            per_worker = [sum(s) for s in sizes_w]
        parts = _split_workers(pieces, per_worker) if pieces else [[] for _ in per_worker]
        return [WorkerPlan(c, s, p) for c, s, p in zip(per_worker, sizes_w, parts)]

    # ---- the stream ------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        plans = self.plans()
        if info is None:
            workers = range(self.num_workers)
        else:
            if info.num_workers != self.num_workers:
                raise ValueError(f"ShardDataset planned for {self.num_workers} worker(s) runs in a DataLoader with "
                                 f"{info.num_workers}; pass num_workers to both")
            workers = [info.id]
        for worker in workers:
            yield from self._worker_stream(plans[worker], worker)

    def _worker_stream(self, plan: WorkerPlan, worker: int) -> Iterator[dict[str, Any]]:
        tag = f"{self.seed}:{self.epoch}:{self.rank}:{worker}" + (":resumed" if self.resume else "")
        rng = random.Random(tag)
        skips = _Skips()
        samples = self._resampled(plan, rng, skips) if self.resample else self._planned(plan, rng, skips)
        if self.shuffle:
            samples = wds.shuffle(self.shuffle_buffer, initial=min(self.shuffle_buffer, 100), rng=rng)(samples)
        items = self._decoded(samples, skips)
        if self.batch_size is None:
            for item in items:
                skips.take()
                yield {k: v for k, v in item.items() if not k.startswith("__")}
            return
        for size in plan.batch_sizes:
            chunk = list(itertools.islice(items, size))
            if not chunk:
                break
            yield _collate(chunk, skips.take())

    def _piece_samples(self, piece: Piece, rng: random.Random, skips: _Skips) -> Iterator[dict[str, Any]]:
        """The readable samples of ``piece`` with an image, paired when temporal, not yet delivered."""
        url = self.urls[piece.shard]
        errors: list[Exception] = []

        def handler(exn: Exception) -> bool:  # webdataset's hook: note the error, go on with the next shard
            errors.append(exn)
            return True

        raw = wds.tarfile_samples([{"url": url}], handler=handler)
        seen: set[int] = set()
        last = {"index": piece.start - 1, "key": None}

        def positioned() -> Iterator[dict[str, Any]]:
            for index, sample in enumerate(raw):
                if index < piece.start:
                    continue
                if piece.stop is not None and index >= piece.stop:
                    break
                image = _find_image(sample)
                if image is None and errors:  # the torn last sample of a truncated tar: counted with it
                    break
                last["index"], last["key"] = index, sample.get("__key__")
                if image is None:
                    seen.add(index)
                    if piece.wanted(index):
                        skips.add()
                        log.warning("skipped sample %r of shard %s: no image member (%s); it has %s",
                                    sample.get("__key__"), url, "/".join(IMAGE_KEYS), _members(sample))
                    continue
                seen.add(index)
                sample["__image__"], sample["__slot__"] = image, (piece.shard, index)
                yield sample

        stream: Iterator[dict[str, Any]] = positioned()
        if self.temporal is not None:
            from ssl_toolkit.data.temporal import temporal_pairs

            stream = temporal_pairs(stream, self.temporal, rng)
        try:
            for sample in stream:
                if piece.wanted(sample["__slot__"][1]):
                    yield sample
        finally:
            stream.close()
            raw.close()
        if errors:
            if piece.stop is None:  # an uncounted shard: at least the sample the error tore
                lost = 1
            else:
                lost = sum(1 for i in range(piece.start, piece.stop) if i not in seen and piece.wanted(i))
            skips.add(lost)
            log.warning("skipped %d sample(s) of shard %s from position %d on (after key %r): %s",
                        lost, url, last["index"] + 1, last["key"], errors[0])

    def _planned(self, plan: WorkerPlan, rng: random.Random, skips: _Skips) -> Iterator[dict[str, Any]]:
        """The worker's pieces in order, every wanted position exactly once: a slot whose sample was
        skipped (or, with temporal pairs, has no partner) gets a repeat of the previous good sample."""
        previous: dict[str, Any] | None = None
        owed: list[tuple[int, int]] = []
        for piece in plan.pieces:
            got: set[int] = set()
            for sample in self._piece_samples(piece, rng, skips):
                got.add(sample["__slot__"][1])
                yield sample
                previous = sample
                while owed:
                    yield {**previous, "__slot__": owed.pop(), "__pad__": True}
            for i in piece.positions():
                if i not in got:
                    if previous is None:
                        owed.append((piece.shard, i))
                    else:
                        yield {**previous, "__slot__": (piece.shard, i), "__pad__": True}
        if owed:
            log.error("a data worker found no readable sample to stand in for %d skipped one(s); "
                      "its rank yields fewer batches this epoch", len(owed))

    def _resampled(self, plan: WorkerPlan, rng: random.Random, skips: _Skips) -> Iterator[dict[str, Any]]:
        """``plan.count`` samples from shards drawn with replacement."""
        produced = empty_draws = 0
        while produced < plan.count:
            shard = rng.randrange(len(self.urls))
            stop = self.counts[shard] if self.counts is not None else None
            samples = self._piece_samples(Piece(shard, 0, stop), rng, skips)
            got = 0
            for sample in itertools.islice(samples, plan.count - produced):
                got += 1
                yield sample
            samples.close()
            produced += got
            empty_draws = 0 if got else empty_draws + 1
            if empty_draws > max(10, 2 * len(self.urls)):
                raise RuntimeError(f"{empty_draws} shard draws in a row gave no readable sample; check the shards")

    def _item(self, sample: dict[str, Any], slot: tuple[int, int] | None = None) -> dict[str, Any]:
        pair = sample.get("__pair__")
        if pair is not None:
            views = self.transform(*pair) if self.transform is not None else list(pair)
        else:
            image = sample["__image__"]
            views = self.transform(image) if self.transform is not None else image
        item = {"views": views, "label": sample_label(sample), "key": sample["__key__"], "url": sample["__url__"],
                "__slot__": slot or sample["__slot__"], "__pad__": slot is not None or sample.get("__pad__", False)}
        if pair is not None:
            item["partner"] = sample["__partner__"]
        return item

    def _decoded(self, samples: Iterable[dict[str, Any]], skips: _Skips) -> Iterator[dict[str, Any]]:
        """Items through the transform; an image that fails is skipped and its slot gets a repeat."""
        previous: dict[str, Any] | None = None
        owed: list[tuple[int, int]] = []
        failures = successes = 0
        for sample in samples:
            try:
                item = self._item(sample)
            except Exception as exn:  # any decoder error: bad bytes raise many kinds
                if sample.get("__pad__") and previous is not None:  # stands in for a slot already counted
                    yield self._item(previous, slot=sample["__slot__"])
                    continue
                failures += 1
                skips.add()
                log.warning("skipped sample %r of shard %s: cannot decode its image: %s",
                            sample["__key__"], sample["__url__"], exn)
                if successes == 0 and failures >= _MAX_FAILURES_WITHOUT_SUCCESS:
                    raise RuntimeError(f"the first {failures} images all failed to decode; is the transform "
                                       "broken rather than the data?") from exn
                if previous is None:
                    owed.append(sample["__slot__"])
                    continue
                item = self._item(previous, slot=sample["__slot__"])
            else:
                previous = sample
                successes += 1
            yield item
            while owed:
                yield self._item(previous, slot=owed.pop())


def _collate(items: list[dict[str, Any]], skipped: int) -> dict[str, Any]:
    views = items[0]["views"]
    if isinstance(views, (list, tuple)) and views and isinstance(views[0], torch.Tensor):
        views = [torch.stack([item["views"][v] for item in items]) for v in range(len(views))]
    else:
        views = [item["views"] for item in items]
    batch = {
        "views": views,
        "label": torch.tensor([item["label"] for item in items], dtype=torch.long),
        "key": [item["key"] for item in items],
        "url": [item["url"] for item in items],
        "slot": torch.tensor([item["__slot__"] for item in items], dtype=torch.long),
        "pad": torch.tensor([item["__pad__"] for item in items], dtype=torch.bool),
        "skipped": skipped,
    }
    if "partner" in items[0]:
        batch["partner"] = [item["partner"] for item in items]
    return batch


def _as_is(batch: Any) -> Any:
    return batch


class ShardLoader(DataLoader):
    """The DataLoader for a :class:`ShardDataset`: its batches come formed from the workers
    (``batch_size=None``), and ``on_iter(dataset)`` runs in the main process right before each epoch's
    iterator starts — where the epoch number and a resume point are set.

    Workers are not persistent: each epoch's workers receive the dataset as it is at that moment
    (epoch, resume point). Re-forking them costs well under a second per epoch, against an ImageNet
    epoch of minutes; persistent workers would instead need the epoch passed through shared memory.
    """

    def __init__(self, dataset: ShardDataset, num_workers: int = 0, pin_memory: bool = False,
                 on_iter: Callable[[ShardDataset], None] | None = None, **kwargs: Any):
        super().__init__(dataset, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                         persistent_workers=False, collate_fn=_as_is, **kwargs)
        self.on_iter = on_iter

    def __iter__(self):
        if self.on_iter is not None:
            self.on_iter(self.dataset)
        return super().__iter__()

    # Lightning asks loaders for these to tell whether a mid-epoch resume is safe; the resume point of a
    # shard stream is kept by the data module (see SSLDataModule.state_dict), which sees every rank's batches
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state_dict: dict) -> None:
        pass


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
            ``"json"`` dicts as JSON, numpy/PIL images under ``"png"``/``"jpg"`` encoded with PIL
            (see :mod:`ssl_toolkit.data.ustar`).
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
    mtime = int(time.time())

    def close_current() -> None:
        # written under a temporary name and renamed when complete, so a crash leaves no truncated .tar
        writer.close()
        writer.fileobj.close()
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
                writer = UstarWriter(open(paths[-1] + ".partial", "wb", buffering=1 << 20), mtime=mtime)
            writer.write(sample)
            shards[-1]["count"] += 1
        if writer is not None:
            close_current()
            writer = None
    finally:
        if writer is not None:
            writer.fileobj.close()
    index = {"shards": shards, "num_samples": sum(s["count"] for s in shards), **(metadata or {})}
    with open(out_dir / INDEX_NAME, "w") as f:
        json.dump(index, f, indent=1)
    return paths
