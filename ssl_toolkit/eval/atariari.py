"""AtariARI: can a linear classifier read an Atari game's state off a frozen encoder's features?

Implements the probing benchmark of Anand, Racah, Ozair, Bengio, Côté, Hjelm, "Unsupervised State
Representation Learning in Atari", NeurIPS 2019 (arXiv:1906.08226), as the project's
``benchmarks/atariari/PROTOCOL.md`` states it:

1. **collect** — a seeded random agent that never chooses NOOP plays the game with the paper's env
   semantics (:func:`ssl_toolkit.data.atari.play_random`); frames are full-size 210×160 grayscale, each
   paired with the RAM of the same moment (also the first frame after a reset, which the original got
   wrong). An episode is one life: it ends at every life loss. Episodes of ≤ 64 frames are dropped.
2. **label** — each annotated RAM byte is a 256-way class; variables whose value distribution over the
   probe data has entropy < 0.6 nats are left out.
3. **split** — by episode, 70 / 10 / 20 % train / val / test; test frames identical to a train or val
   frame (or to one of the encoder's pre-training frames) are removed.
4. **encode** — every frame once through the frozen encoder (bf16 autocast on CPU, batched).
5. **probe** — one linear classifier per variable, all trained at once as one layer on the cached
   features (Adam 3e-4, batch 64, ≤ 100 epochs, lr ×0.2 after 5 epochs without a better validation
   accuracy, early stopping with patience 15), each variable with its own schedule and stop.
6. **score** — weighted F1 and accuracy per variable on the test set, the mean per category
   (:func:`variable_categories`), and the game score: the mean over its categories.

The ``majority`` baseline predicts every variable's most frequent training value.
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ssl_toolkit.data.atari import game_key, play_random, resolve_env_id

DATA_DIR = "atariari_data"
ANNOTATIONS = ("paper", "current")
# The five categories, named as in the paper's tables (and published_results.json), in its order.
CATEGORIES = ("Small Loc.", "Agent Loc.", "Other Loc.", "Score/Clock/Lives/Display", "Misc.")
FRAME_SHAPE = (210, 160)
MIN_EPISODE_LENGTH = 64
ENTROPY_THRESHOLD = 0.6
SPLIT = (0.7, 0.1, 0.2)
# the paper's columns shown beside ours
PAPER_COLUMNS = ("maj-clf", "random-cnn", "st-dim", "supervised")


# ---- the package data: annotations, categories, published numbers --------------------------------
def _data(name: str) -> dict:
    return json.loads(resources.files(__package__).joinpath(DATA_DIR, name).read_text())


def load_annotations(version: str = "paper") -> dict[str, dict[str, int]]:
    """``{game: {variable: RAM byte}}`` for annotation ``version`` (``paper``: the 22 games of the
    published tables; ``current``: the authors' later fixes). List entries become one variable per
    byte, named ``<name>_<i>`` as in the original."""
    if version not in ANNOTATIONS:
        raise ValueError(f"unknown annotation version {version!r}; choose one of {list(ANNOTATIONS)}")
    games = _data(f"ram_annotations_{version}.json")["games"]
    table = {}
    for game, variables in games.items():
        flat = {}
        for name, byte in variables.items():
            if isinstance(byte, list):
                flat.update({f"{name}_{i}": b for i, b in enumerate(byte)})
            else:
                flat[name] = byte
        table[game] = flat
    return table


def game_variables(game: str, version: str = "paper") -> tuple[str, dict[str, int]]:
    """``(key, {variable: RAM byte})`` for ``game`` (a short name or Gymnasium id; ``key`` is
    AtariARI's name for it, e.g. ``spaceinvaders``)."""
    key = game_key(resolve_env_id(game))
    table = load_annotations(version)
    if key not in table:
        raise ValueError(f"game {game!r} has no AtariARI RAM annotations ({version} version); "
                         f"use one of {sorted(table)}")
    return key, table[key]


def variable_categories(name: str) -> list[str]:
    """The categories of variable ``name``, by the substring rules of the original code (a name
    may fall in two, e.g. none of the localization ones and both score and count)."""
    categories = []
    if any(s in name for s in ("_x", "_y", "_z", "_column")):
        if any(s in name for s in ("ball", "missile")):
            categories.append("Small Loc.")
        elif any(s in name for s in ("agent", "player")):
            categories.append("Agent Loc.")
        else:
            categories.append("Other Loc.")
    if any(s in name for s in ("score", "clock", "lives", "lifes", "meter", "display")):
        categories.append("Score/Clock/Lives/Display")
    if any(s in name for s in ("count", "bit_map", "existence", "level", "room", "game_state", "direction")):
        categories.append("Misc.")
    return categories


def published_scores(game_key_: str) -> dict[str, Any]:
    """The paper's random-agent numbers for one game: ``{"f1": {column: value}, "accuracy": …,
    "variables": {variable: {column: F1}}}`` (empty dicts for games not in the paper)."""
    table = _data("published_results.json")
    per_var = table["fine_grained_random_agent_f1"].get(game_key_, {}).get("rows", {})
    return {
        "f1": table["table2_random_agent_f1_per_game"]["rows"].get(game_key_, {}),
        "accuracy": table["table11_random_agent_accuracy_per_game"]["rows"].get(game_key_, {}),
        "variables": per_var,
    }


# ---- 1. collect -------------------------------------------------------------------------------------
@dataclass
class ProbeFrames:
    """Random-agent frames of one game, in play order.

    ``frames``: uint8 ``(N, 210, 160)`` (None when not kept); ``ram``: uint8 ``(N, 128)``, the RAM of the
    same moment as each frame; ``episode``: int64 ``(N,)``, one id per life (a new id at every life
    loss and every new game); ``digest``: ``(N,)`` 16-byte hashes of the frames (for de-duplication);
    ``skipped_digests``: hashes of the frames played before these (the encoder's pre-training frames).
    """

    frames: np.ndarray | None
    ram: np.ndarray
    episode: np.ndarray
    digest: np.ndarray
    skipped_digests: set = field(default_factory=set)
    seconds: float = 0.0


def _digest(frame: np.ndarray) -> bytes:
    return hashlib.blake2b(frame.tobytes(), digest_size=16).digest()


def collect_probe_frames(game: str, frames: int, seed: int = 0, skip: int = 0,
                         keep_frames: bool = True) -> ProbeFrames:
    """Play ``skip + frames`` agent steps of ``game`` (random agent, never NOOP, seeded by ``seed``)
    and keep the last ``frames``; the first ``skip`` are the encoder's pre-training frames (the ones
    ``ssl-toolkit atari collect --seed SEED --frames SKIP --no-noop`` writes), only hashed."""
    if frames < 1 or skip < 0:
        raise ValueError(f"need frames >= 1 and pretrain frames >= 0, got {frames} and {skip}")
    start = time.perf_counter()
    stored = np.empty((frames, *FRAME_SHAPE), np.uint8) if keep_frames else None
    ram = np.empty((frames, 128), np.uint8)
    episode = np.empty(frames, np.int64)
    digest = np.empty(frames, "S16")
    skipped: set = set()
    life, lives, game_id = -1, None, -1
    for i, (frame, info, step) in enumerate(play_random(game, skip + frames, seed=seed, noop=False)):
        # a new life-episode at every new game and at every life loss (AtariARI's EpisodicLifeEnv);
        # the frame that shows the loss already belongs to the next life
        if step["episode"] != game_id or (lives is not None and info["lives"] < lives):
            life += 1
        game_id, lives = step["episode"], info["lives"]
        if i < skip:
            skipped.add(_digest(frame))
            continue
        j = i - skip
        if stored is not None:
            stored[j] = frame
        ram[j], episode[j], digest[j] = info["ram"], life, _digest(frame)
    # episode ids from 0 in the kept part
    episode -= episode[0]
    return ProbeFrames(stored, ram, episode, digest, skipped, time.perf_counter() - start)


# ---- 2.–3. label, filter, split ---------------------------------------------------------------------
def entropy_nats(values: np.ndarray) -> np.ndarray:
    """Entropy (natural log) of each column's value distribution: ``(N, V)`` uint8 → ``(V,)``."""
    out = np.empty(values.shape[1])
    for v in range(values.shape[1]):
        p = np.bincount(values[:, v], minlength=256) / len(values)
        p = p[p > 0]
        out[v] = float(-(p * np.log(p)).sum())
    return out


@dataclass
class ProbeSplit:
    """Indices into a :class:`ProbeFrames` and the labels of the kept variables.

    ``labels``: uint8 ``(N, V)`` raw RAM values of the ``variables`` that passed the entropy filter,
    for all N frames; ``train``/``val``/``test``: int64 frame indices (test de-duplicated).
    """

    variables: list[str]
    labels: np.ndarray
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    info: dict


def split_probe_data(data: ProbeFrames, variables: dict[str, int], seed: int = 0,
                     min_episode_length: int = MIN_EPISODE_LENGTH,
                     entropy_threshold: float = ENTROPY_THRESHOLD) -> ProbeSplit:
    """Drop short episodes, filter low-entropy variables, split by episode, de-duplicate the test set."""
    ids, lengths = np.unique(data.episode, return_counts=True)
    kept_eps = ids[lengths > min_episode_length]
    if len(kept_eps) < 4:
        raise ValueError(f"only {len(kept_eps)} episodes longer than {min_episode_length} frames in "
                         f"{len(data.episode)} frames; need at least 4 for a train/val/test split: raise --frames")
    kept = np.isin(data.episode, kept_eps)
    names = list(variables)
    raw = data.ram[:, [variables[n] for n in names]]
    entropy = entropy_nats(raw[kept])
    keep_var = entropy >= entropy_threshold
    if not keep_var.any():
        raise ValueError(f"every variable has entropy below {entropy_threshold} nats on these frames; raise --frames")

    order = np.random.default_rng(seed).permutation(kept_eps)
    # the paper's int() cut points, but never an empty validation part (int(0.8·6) = int(0.7·6))
    n_train = int(SPLIT[0] * len(order))
    n_val = max(int((SPLIT[0] + SPLIT[1]) * len(order)), n_train + 1)
    parts = order[:n_train], order[n_train:n_val], order[n_val:]
    train, val, test = (np.flatnonzero(np.isin(data.episode, p)) for p in parts)
    # a test frame seen in training (by the probe or the encoder) would measure memory, not reading
    seen = set(data.digest[train].tolist()) | set(data.digest[val].tolist()) | data.skipped_digests
    unique = np.array([d not in seen for d in data.digest[test].tolist()], bool)
    info = {
        "episodes": int(len(ids)), "episodes_kept": int(len(kept_eps)),
        "frames_kept": int(kept.sum()), "min_episode_length": min_episode_length,
        "split_episodes": {"train": len(parts[0]), "val": len(parts[1]), "test": len(parts[2])},
        "split_frames": {"train": int(len(train)), "val": int(len(val)), "test": int(unique.sum())},
        "test_duplicates_removed": int((~unique).sum()),
        "entropy_threshold": entropy_threshold,
        "entropy": {n: round(float(e), 4) for n, e in zip(names, entropy)},
        "dropped_low_entropy": [n for n, k in zip(names, keep_var) if not k],
    }
    return ProbeSplit([n for n, k in zip(names, keep_var) if k], raw[:, keep_var], train, val, test[unique], info)


# ---- 4. encode ----------------------------------------------------------------------------------------
@torch.no_grad()
def encode_frames(encoder: nn.Module, frames: np.ndarray, batch_size: int = 256, bf16: bool = True,
                  mean: float = 0.0, std: float = 1.0, device: str | torch.device = "cpu",
                  size: tuple[int, int] | None = None) -> torch.Tensor:
    """Features of uint8 frames ``(N, H, W)`` → float32 ``(N, num_features)``.

    Frames are resized to ``size`` when given and different (antialiased bilinear), scaled to [0, 1],
    then ``(x - mean) / std``. Runs channels-last, and with ``bf16`` under
    bfloat16 autocast: for ``atariari_cnn`` on this 2-core CPU 1.6× (channels-last) × 1.6× (bf16)
    faster than plain float32.
    """
    encoder = encoder.eval().to(device, memory_format=torch.channels_last)
    out = []
    for i in range(0, len(frames), batch_size):
        x = torch.from_numpy(frames[i:i + batch_size]).to(device).unsqueeze(1).float()
        if size is not None and tuple(x.shape[-2:]) != tuple(size):
            # an encoder trained at another size (e.g. 84×84 RL frames); the result flags the deviation
            x = torch.nn.functional.interpolate(x, size=tuple(size), mode="bilinear", antialias=True)
        x = ((x / 255.0 - mean) / std).contiguous(memory_format=torch.channels_last)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            out.append(encoder(x).float())
    return torch.cat(out)


# ---- 5. probe -------------------------------------------------------------------------------------------
@dataclass
class ProbeConfig:
    """The paper's probe recipe (Adam eps 1e-5 and the 1e-5 lr floor are from its code)."""

    lr: float = 3e-4
    batch_size: int = 64
    max_epochs: int = 100
    patience: int = 15
    lr_patience: int = 5
    lr_factor: float = 0.2
    min_lr: float = 1e-5
    eps: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.999)


class LinearProbes:
    """``V`` linear classifiers on one feature vector, held as one ``(D, ΣK)`` layer.

    Variable ``v`` owns the ``K_v`` columns of the RAM values it takes in the training data (a value
    never seen in training can't win a softmax probe after training, so the paper's 256-way layer
    and this one predict alike at a fraction of the cost). ``index``: ``(V, K_max)`` column of each
    (variable, class slot) with ``ΣK`` = a padding column fixed at −inf; ``values``: ``(V, K_max)`` the
    RAM value of each slot (−1 for padding).
    """

    def __init__(self, classes: list[np.ndarray], num_features: int, generator: torch.Generator):
        sizes = [len(c) for c in classes]
        total, k_max = sum(sizes), max(sizes)
        # nn.Linear's default init, U(±1/√D), drawn from a seeded generator
        bound = 1.0 / math.sqrt(num_features)
        self.weight = (torch.rand(num_features, total, generator=generator) * 2 - 1) * bound
        self.bias = (torch.rand(total, generator=generator) * 2 - 1) * bound
        self.index = torch.full((len(classes), k_max), total, dtype=torch.long)
        self.values = torch.full((len(classes), k_max), -1, dtype=torch.long)
        self.column_var = torch.empty(total, dtype=torch.long)
        start = 0
        for v, c in enumerate(classes):
            self.index[v, :len(c)] = torch.arange(start, start + len(c))
            self.values[v, :len(c)] = torch.as_tensor(c, dtype=torch.long)
            self.column_var[start:start + len(c)] = v
            start += len(c)
        # where column j sits in a flattened (V·K_max) row (columns run in row-major slot order), and
        # where variable v's slots start in it
        self._column_pos = (self.index < total).flatten().nonzero().squeeze(1)
        self._slot_offset = torch.arange(len(classes)) * k_max

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` features → ``(B, V, K_max)`` logits, −inf at padding slots."""
        flat = torch.addmm(self.bias, x, self.weight)
        flat = torch.cat([flat, flat.new_full((len(x), 1), -math.inf)], dim=1)
        return flat.index_select(1, self.index.flatten()).view(len(x), *self.index.shape)

    def loss_grads(self, x: torch.Tensor, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sum over variables of each one's mean cross-entropy on ``(B, D)`` features and their
        ``(B, V)`` target slots, and its gradients for ``weight`` ``(D, ΣK)`` and ``bias`` ``(ΣK,)``.

        Written out (softmax − one-hot) because autograd through the padded gather costs 3× more here.
        """
        log_p = self.logits(x).log_softmax(-1)  # (B, V, K)
        loss = -log_p.gather(-1, slots[..., None]).sum() / len(x)
        g = log_p.exp_().view(len(x), -1)  # softmax, (B, V·K_max)
        g.scatter_add_(1, self._slot_offset + slots, g.new_full(slots.shape, -1.0))
        g = g.index_select(1, self._column_pos).div_(len(x))  # (B, ΣK): each column's own gradient
        return loss, x.T @ g, g.sum(0)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 8192) -> torch.Tensor:
        """``(N, D)`` → predicted RAM values ``(N, V)``."""
        slots = torch.cat([self.logits(x[i:i + batch_size]).argmax(-1) for i in range(0, len(x), batch_size)])
        return self.values.gather(1, slots.T).T

    def slots_of(self, values: torch.Tensor) -> torch.Tensor:
        """RAM values ``(N, V)`` → class slots ``(N, V)``; −1 where a value has no slot."""
        table = torch.full((len(self.values), 257), -1, dtype=torch.long)
        rows = torch.arange(len(self.values))[:, None].expand_as(self.values)
        real = self.values >= 0
        table[rows[real], self.values[real]] = torch.arange(self.values.shape[1]).expand_as(self.values)[real]
        return table[torch.arange(values.shape[1])[None, :], values.long()]


def train_probes(x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor,
                 seed: int = 0, config: ProbeConfig | None = None) -> tuple[LinearProbes, dict]:
    """Train one linear probe per variable, all at once, each with its own lr schedule and early stop.

    Args:
        x_train: float ``(N, D)`` features; y_train: uint8/long ``(N, V)`` RAM values.
        x_val, y_val: the same for validation ``(M, D)``, ``(M, V)``.

    Every variable sees the same shuffled batches and its loss only moves its own columns, so this
    is exactly ``V`` independent trainings (Adam per variable, ``ReduceLROnPlateau(mode="max")`` on
    validation accuracy, early stopping on it); each probe ends at its best validation epoch.

    Returns:
        the probes (best weights) and ``{"epochs", "best_val_accuracy", "final_lr"}`` per variable.
    """
    cfg = config or ProbeConfig()
    gen = torch.Generator().manual_seed(seed)
    y_train, y_val = y_train.long(), y_val.long()
    num_vars = y_train.shape[1]
    probes = LinearProbes([np.unique(y_train[:, v].numpy()) for v in range(num_vars)], x_train.shape[1], gen)
    target = probes.slots_of(y_train)  # every training value has a slot
    params = [probes.weight, probes.bias]
    moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
    best = [p.clone() for p in params]

    lr = torch.full((num_vars,), cfg.lr)
    active = torch.ones(num_vars, dtype=torch.bool)
    stop_best = torch.full((num_vars,), -math.inf)  # early stopping: best val accuracy, epochs since
    stop_count = torch.zeros(num_vars, dtype=torch.long)
    sched_best = torch.full((num_vars,), -math.inf)  # the lr scheduler's own best and bad-epoch count
    sched_bad = torch.zeros(num_vars, dtype=torch.long)
    epochs = torch.zeros(num_vars, dtype=torch.long)
    step = 0
    beta1, beta2 = cfg.betas
    threads = torch.get_num_threads()
    # the steps are small: one thread avoids the barrier waits of two on a busy 2-core machine
    torch.set_num_threads(1)
    try:
        for _ in range(cfg.max_epochs):
            if not active.any():
                break
            col_lr = (lr * active)[probes.column_var]  # a stopped probe's columns stay where they are
            order = torch.randperm(len(x_train), generator=gen)
            # shuffled once per epoch, so each batch is a contiguous slice
            for x, t in zip(x_train[order].split(cfg.batch_size), target[order].split(cfg.batch_size)):
                _, *grads = probes.loss_grads(x, t)
                step += 1
                # torch.optim.Adam's update, with a per-column learning rate
                step_lr = col_lr / (1 - beta1 ** step)
                for p, g, (m, v) in zip(params, grads, moments):
                    m.lerp_(g, 1 - beta1)
                    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                    update = m / v.sqrt().div_(math.sqrt(1 - beta2 ** step)).add_(cfg.eps)
                    p.sub_(update.mul_(step_lr))
            epochs += active.long()

            acc = (probes.predict(x_val) == y_val).float().mean(0)
            # early stopping (the original's: the first epoch sets the best; a tie is no better)
            improved = active & (acc > stop_best)
            stop_count = torch.where(improved, 0, stop_count + active.long())
            stop_best = torch.where(improved, acc, stop_best)
            for kept, p in zip(best, params):
                kept.copy_(torch.where(improved[probes.column_var], p, kept))
            active = active & (stop_count < cfg.patience)
            # ReduceLROnPlateau(mode="max", threshold=1e-4 relative, cooldown 0), stepped while the probe runs
            better = acc > sched_best * (1 + 1e-4)
            sched_bad = torch.where(active, torch.where(better, 0, sched_bad + 1), sched_bad)
            sched_best = torch.where(active & better, acc, sched_best)
            cut = active & (sched_bad > cfg.lr_patience)
            new_lr = torch.clamp(lr * cfg.lr_factor, min=cfg.min_lr)
            lr = torch.where(cut & (lr - new_lr > 1e-8), new_lr, lr)
            sched_bad = torch.where(cut, 0, sched_bad)
    finally:
        torch.set_num_threads(threads)

    probes.weight, probes.bias = best
    return probes, {"epochs": epochs.tolist(), "best_val_accuracy": stop_best.tolist(), "final_lr": lr.tolist()}


# ---- 6. score ---------------------------------------------------------------------------------------------
def weighted_f1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per column, the support-weighted mean over classes of F1 (scikit-learn's ``average="weighted"``).

    ``pred``, ``target``: integer ``(N, V)`` with values in 0..255 → ``(V,)``. F1 of class c is
    ``2·TP / (2·TP + FP + FN)`` (0 when that is 0/0); its weight is c's share of ``target``.
    """
    n, num_vars = target.shape
    offset = torch.arange(num_vars) * 256
    t, p = (target.long() + offset).flatten(), (pred.long() + offset).flatten()
    size = num_vars * 256
    tp = torch.bincount(t[t == p], minlength=size).double()
    support = torch.bincount(t, minlength=size).double()
    predicted = torch.bincount(p, minlength=size).double()
    denom = support + predicted  # (TP + FN) + (TP + FP) = 2·TP + FP + FN
    f1 = torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.zeros_like(tp))
    return ((f1 * support).view(num_vars, 256).sum(1) / n).float()


def game_scores(f1: dict[str, float], accuracy: dict[str, float]) -> dict[str, Any]:
    """Category means and the game score (mean over the categories present) from per-variable
    metrics; variables in no category count in ``mean_all_variables`` only, as in the original."""
    cats_f1, cats_acc = {}, {}
    for cat in CATEGORIES:
        names = [n for n in f1 if cat in variable_categories(n)]
        if names:
            cats_f1[cat] = float(np.mean([f1[n] for n in names]))
            cats_acc[cat] = float(np.mean([accuracy[n] for n in names]))
    return {
        "categories_f1": cats_f1, "categories_accuracy": cats_acc,
        "f1": float(np.mean(list(cats_f1.values()))) if cats_f1 else float("nan"),
        "accuracy": float(np.mean(list(cats_acc.values()))) if cats_acc else float("nan"),
        "mean_all_variables_f1": float(np.mean(list(f1.values()))),
    }


# ---- the whole protocol -------------------------------------------------------------------------------------
def build_encoder(spec: str | nn.Module, seed: int = 0) -> tuple[nn.Module | None, dict]:
    """The frozen encoder for ``spec``: ``majority`` (None), ``random:<backbone>`` (the backbone's own
    init, e.g. the paper's orthogonal init for ``atariari_cnn``, seeded by ``seed``), a path to an
    exported ``.safetensors`` encoder or a pretraining ``.ckpt``, or a module (``(B, 1, 210, 160)`` →
    ``(B, D)``). Returns ``(encoder, meta)``."""
    if isinstance(spec, nn.Module):
        encoder, meta = spec, dict(getattr(spec, "encoder_meta", None) or {"method": type(spec).__name__})
    elif spec == "majority":
        return None, {"method": "majority"}
    elif spec.startswith("random:"):
        torch.manual_seed(seed)
        from ssl_toolkit.backbones import create_backbone

        name = spec.split(":", 1)[1]
        encoder = create_backbone(name, in_chans=1, img_size=FRAME_SHAPE)
        meta = {"backbone": name, "in_chans": 1, "input_size": list(FRAME_SHAPE), "mean": [0.0], "std": [1.0],
                "method": "random", "steps": 0, "num_features": encoder.num_features}
    else:
        if not Path(spec).is_file():
            raise FileNotFoundError(f"encoder {spec!r} not found; give an exported .safetensors, a pretraining "
                                    ".ckpt, random:<backbone> (e.g. random:atariari_cnn) or majority")
        try:
            from ssl_toolkit.export import load_encoder
        except ImportError as err:
            raise ValueError(f"loading {spec!r} needs ssl_toolkit.export ({err})") from None
        encoder = load_encoder(spec)
        meta = dict(getattr(encoder, "encoder_meta", None) or {})
    if meta.get("in_chans", 1) != 1:
        raise ValueError(f"encoder {spec!r} takes {meta['in_chans']} channels; AtariARI frames are grayscale: "
                         "pretrain on 1-channel frames")
    size = meta.get("input_size")
    if size is not None and tuple(size) != FRAME_SHAPE:
        # e.g. an RL encoder trained on 84×84 frames: probed on resized frames, and the result says so
        meta["protocol_deviation"] = (f"frames resized from {FRAME_SHAPE[0]}x{FRAME_SHAPE[1]} to {size[0]}x{size[1]} "
                                      "for this encoder; the paper probes full-size frames, where small objects "
                                      "stay visible")
    for p in encoder.parameters():
        p.requires_grad_(False)
    return encoder.eval(), meta


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(f"[atariari] {msg}", file=sys.stderr, flush=True)


def run_atariari_probe(
    encoder: str | nn.Module, game: str, seed: int = 0, frames: int = 50_000, pretrain_frames: int = 0,
    annotations: str = "paper", bf16: bool = True, config: ProbeConfig | None = None, quiet: bool = False,
    data: ProbeFrames | None = None,
) -> dict[str, Any]:
    """The AtariARI protocol end to end for one encoder and game; returns the result dict.

    Args:
        encoder: ``majority``, ``random:<backbone>``, a path or a module (see :func:`build_encoder`).
        game: short name (``pong``) or Gymnasium id.
        seed: seeds the agent, the emulator, the split, the random encoder and the probes.
        frames: probe frames (the paper: 50k).
        pretrain_frames: the first this many frames of the seed's stream were the encoder's
            pre-training frames: the probe uses the ones after them and drops test frames equal to any.
        annotations: ``paper`` (the published tables' version) or ``current``.
        bf16: encode under bfloat16 autocast.
        data: frames collected before (:func:`collect_probe_data`) to reuse, e.g. for several encoders.
    """
    t0 = time.perf_counter()
    if data is None and (frames < 1 or pretrain_frames < 0):
        raise ValueError(f"need --frames >= 1 and --pretrain-frames >= 0, got {frames} and {pretrain_frames}")
    key, variables = game_variables(game, annotations)
    enc, meta = build_encoder(encoder, seed)
    collected_before = data is not None
    if data is None:
        _log(f"{key}: collecting {frames} frames (seed {seed}, after {pretrain_frames} pre-training frames)", quiet)
        data = collect_probe_frames(game, frames, seed=seed, skip=pretrain_frames, keep_frames=enc is not None)
    split = split_probe_data(data, variables, seed=seed)
    labels = torch.from_numpy(split.labels).long()
    y_train, y_val, y_test = labels[split.train], labels[split.val], labels[split.test]
    t_encode = t_probe = 0.0
    history: dict = {}
    if enc is None:
        # majority: every variable's most frequent training value (the smallest on ties)
        mode = torch.tensor([int(np.bincount(split.labels[split.train, v], minlength=256).argmax())
                             for v in range(labels.shape[1])])
        pred = mode.expand_as(y_test)
    else:
        if data.frames is None:
            raise ValueError("these probe frames were collected without pixels; collect with keep_frames=True")
        _log(f"{key}: encoding {len(data.frames)} frames ({'bf16' if bf16 else 'fp32'})", quiet)
        t = time.perf_counter()
        mean, std = (meta.get("mean") or [0.0])[0], (meta.get("std") or [1.0])[0]
        feats = encode_frames(enc, data.frames, bf16=bf16, mean=mean, std=std, size=meta.get("input_size"))
        t_encode = time.perf_counter() - t
        _log(f"{key}: training {len(split.variables)} probes on {len(split.train)} frames", quiet)
        t = time.perf_counter()
        probes, history = train_probes(feats[split.train], y_train, feats[split.val], y_val, seed=seed, config=config)
        pred = probes.predict(feats[split.test])
        t_probe = time.perf_counter() - t
    f1 = dict(zip(split.variables, weighted_f1(pred, y_test).tolist()))
    acc = dict(zip(split.variables, (pred == y_test).float().mean(0).tolist()))
    scores = game_scores(f1, acc)
    per_var = {}
    for i, name in enumerate(split.variables):
        per_var[name] = {"byte": variables[name], "categories": variable_categories(name), "f1": f1[name],
                         "accuracy": acc[name], "entropy": split.info["entropy"][name],
                         "train_values": int(len(np.unique(split.labels[split.train, i])))}
        if history:
            per_var[name].update(epochs=history["epochs"][i], best_val_accuracy=history["best_val_accuracy"][i])
    published = published_scores(key)
    if annotations != "paper":
        published["note"] = "the paper's numbers used the paper annotations"
    return {
        "benchmark": "AtariARI (Anand et al. 2019)", "game": key, "env_id": resolve_env_id(game),
        "encoder": encoder if isinstance(encoder, str) else meta.get("method", "module"), "encoder_meta": {k: v for k, v in meta.items() if k != "backbone_kwargs"},
        "annotations": annotations, "seed": seed, "frames": int(len(data.ram)), "pretrain_frames": pretrain_frames,
        "score_f1": scores["f1"], "score_accuracy": scores["accuracy"],
        "categories_f1": scores["categories_f1"], "categories_accuracy": scores["categories_accuracy"],
        "mean_all_variables_f1": scores["mean_all_variables_f1"],
        "variables": per_var, "data": split.info,
        "probe": {**vars(config or ProbeConfig()), "encode_precision": "bf16" if bf16 else "fp32"},
        "protocol_deviation": meta.get("protocol_deviation"),
        "published": published,
        "seconds": {"collect": round(data.seconds, 1), "encode": round(t_encode, 1), "probe": round(t_probe, 1),
                    "total": round(time.perf_counter() - t0 + (data.seconds if collected_before else 0.0), 1)},
        "threads": torch.get_num_threads(),
    }


def format_table(result: dict[str, Any]) -> str:
    """Per-variable, per-category and game F1 beside the paper's columns for that game."""
    pub = result["published"]
    head = f"{'':34s} {'F1':>6s} {'acc':>6s}  " + " ".join(f"{c:>10s}" for c in PAPER_COLUMNS)
    lines = [f"AtariARI {result['game']} · encoder {result['encoder']} · seed {result['seed']} · "
             f"{result['frames']} frames ({result['annotations']} annotations) · paper columns: F1", head]

    def row(name, f1, acc, paper):
        cols = " ".join(f"{paper[c]:10.2f}" if c in paper else f"{'':>10s}" for c in PAPER_COLUMNS)
        lines.append(f"{name:34s} {f1:6.3f} {acc:6.3f}  {cols}")

    for name, v in result["variables"].items():
        row(f"  {name}", v["f1"], v["accuracy"], pub["variables"].get(name, {}))
    for cat, f1 in result["categories_f1"].items():
        row(cat, f1, result["categories_accuracy"][cat], {})
    row("game score (mean of categories)", result["score_f1"], result["score_accuracy"], pub["f1"])
    if result.get("protocol_deviation"):
        lines.append(f"protocol deviation: {result['protocol_deviation']}")
    dropped = result["data"]["dropped_low_entropy"]
    if dropped:
        lines.append(f"left out (entropy < {result['data']['entropy_threshold']} nats): {', '.join(dropped)}")
    s = result["data"]["split_frames"]
    lines.append(f"episodes {result['data']['episodes_kept']} kept of {result['data']['episodes']}; frames "
                 f"train {s['train']} / val {s['val']} / test {s['test']} ({result['data']['test_duplicates_removed']} "
                 f"duplicate test frames removed); time {result['seconds']}")
    return "\n".join(lines)
