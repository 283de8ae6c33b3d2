"""Temporal view pairs for Atari frames: frames t and t+k of one episode as the two views.

Two frames a few steps apart show the same game state seen slightly later, a positive pair that
teaches what persists over time (as in ATC, Stooke et al. 2021, "Decoupling Representation Learning
from Reinforcement Learning", and ST-DIM's temporal objectives, Anand et al. 2019). Each frame is then
cut into its own view with its own view parameters (:class:`TemporalViews`).

:func:`temporal_pairs` is a stage on the raw sample stream *in shard order*, before the shuffle
buffer, reading ``episode`` and ``step`` from each frame's ``.json`` (the Atari collector's shards).
Every frame is the anchor of exactly one pair, so an epoch still holds each frame once:

* the partner is the frame ``k`` steps later in the same episode (``k`` fixed, or drawn uniformly
  from ``[lo, hi]`` for every anchor); a small window holds the last ``2·hi + 1`` frames of the
  current episode, so memory stays a few frames whatever the episode length;
* near an episode's end, where ``t + k`` does not exist, the partner is the frame ``k`` steps
  *earlier*, and failing that the farthest frame within ``[lo, hi]`` steps either way;
* the stage runs on one shard (one piece of it) at a time: windows never span two shards, since the
  next shard in a worker's stream is another part of the data; frames near a shard's edge pair
  inside it as at an episode end;
* a frame with no partner within ``[lo, hi]`` steps in its shard (an episode fragment shorter than
  ``lo + 1`` frames at a shard edge) is left out; the reader fills its slot with a repeat of another
  pair, so counts stay exact (see :mod:`ssl_toolkit.data.shards`).

A pair's views come out in time order: the earlier frame is view 0.
"""
from __future__ import annotations

import dataclasses
import json
import random
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch

from ssl_toolkit.augment.presets import AugmentPreset
from ssl_toolkit.augment.views import ViewSampler


def parse_offset(offset: int | Sequence[int] | None) -> tuple[int, int] | None:
    """``k`` → ``(k, k)``; ``[lo, hi]`` → ``(lo, hi)``; ``None`` stays ``None``."""
    if offset is None:
        return None
    lo, hi = (offset, offset) if isinstance(offset, int) else tuple(int(k) for k in offset)
    if not 1 <= lo <= hi:
        raise ValueError(f"temporal_offset must be k >= 1 or [lo, hi] with 1 <= lo <= hi, got {offset!r}")
    return lo, hi


def _episode_step(sample: dict[str, Any]) -> tuple[Any, int]:
    meta = json.loads(sample["json"]) if "json" in sample else None
    if not isinstance(meta, dict) or "episode" not in meta or "step" not in meta:
        raise ValueError(
            f"temporal pairs need <key>.json with 'episode' and 'step' (Atari collector shards); sample "
            f"{sample.get('__key__')!r} of {sample.get('__url__')!r} has none"
        )
    return (meta.get("game"), meta["episode"]), int(meta["step"])


def temporal_pairs(
    samples: Iterable[dict[str, Any]], offset: tuple[int, int], rng: random.Random
) -> Iterator[dict[str, Any]]:
    """Pair every frame of an in-order stream with a frame ``k`` steps away in its episode.

    Args:
        samples: raw samples of one shard in tar order, each with its encoded frame under
            ``"__image__"`` and a ``.json`` holding ``episode`` and ``step``.
        offset: ``(lo, hi)``; ``k`` is uniform in ``lo..hi`` per anchor.
        rng: draws ``k``.

    Yields:
        each anchor sample with ``"__pair__"``: (earlier frame, later frame) and ``"__partner__"``: the
        partner's key (see the module docstring for episode ends and shard edges).
    """
    lo, hi = offset
    window: dict[int, dict[str, Any]] = {}  # step -> sample, the current episode's recent frames
    order: deque[int] = deque()
    pending: deque[tuple[int, dict[str, Any], int]] = deque()  # anchors waiting for t + k
    episode = None

    def pair(anchor_step: int, anchor: dict[str, Any], partner_step: int) -> dict[str, Any]:
        partner = window[partner_step]
        first, second = (anchor, partner) if anchor_step < partner_step else (partner, anchor)
        return {**anchor, "__pair__": (first["__image__"], second["__image__"]), "__partner__": partner["__key__"]}

    def fallback(step: int, anchor: dict[str, Any], k: int) -> dict[str, Any] | None:
        for d in (-k, *(s * j for j in range(hi, lo - 1, -1) for s in (1, -1))):
            if step + d in window:
                return pair(step, anchor, step + d)
        return None

    def flush() -> Iterator[dict[str, Any]]:
        while pending:
            out = fallback(*pending.popleft())
            if out is not None:
                yield out

    for sample in samples:
        ep, step = _episode_step(sample)
        if ep != episode:
            yield from flush()
            window.clear()
            order.clear()
            episode = ep
        window[step] = sample
        order.append(step)
        while pending and pending[0][0] + pending[0][2] <= step:
            anchor_step, anchor, k = pending.popleft()
            if anchor_step + k in window:
                yield pair(anchor_step, anchor, anchor_step + k)
            else:  # a gap in the steps (a skipped frame)
                out = fallback(anchor_step, anchor, k)
                if out is not None:
                    yield out
        pending.append((step, sample, rng.randint(lo, hi)))
        # frames older than 2·hi steps can be no pending anchor's partner, either way
        while order and order[0] < step - 2 * hi:
            window.pop(order.popleft(), None)
    yield from flush()


class TemporalViews:
    """Cut view ``i`` of ``preset`` from frame ``i`` of a pair, each with its own view parameters.

    Called with two encoded frames, returns ``[view0 of the first, view1 of the second]`` (uint8
    ``(C, H, W)``), as :class:`~ssl_toolkit.augment.ViewSampler` does for one image.
    """

    def __init__(self, preset: AugmentPreset, mode: str | None = "RGB"):
        if preset.num_views != 2:
            raise ValueError(f"temporal pairs make 2 views; preset {preset.name!r} has {preset.num_views}")
        self.samplers = [ViewSampler(dataclasses.replace(preset, views=(view,)), mode=mode) for view in preset.views]

    def __call__(self, first: bytes, second: bytes) -> list[torch.Tensor]:
        return [self.samplers[0](first)[0], self.samplers[1](second)[0]]
