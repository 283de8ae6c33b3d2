"""Write the example notebooks from the cell sources below (edit here, then run this script).

    .venv/bin/python notebooks/make_notebooks.py            # rewrites notebooks/*.ipynb
    .venv/bin/python notebooks/make_notebooks.py --out DIR  # writes them into DIR instead

The notebooks are written without outputs or execution counts and with minimal metadata, so what is
in git is only the code and the text; ``tests/test_notebooks.py`` executes them and checks both.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
METADATA = {
    "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
    "language_info": {"name": "python"},
}


def md(text: str) -> tuple[str, str]:
    return "markdown", text.strip("\n")


def code(text: str) -> tuple[str, str]:
    return "code", text.strip("\n")


# --------------------------------------------------------------------------------------------------
QUICKSTART = [
    md("""
# Quickstart: Atari frames → VICReg → exported encoder → AtariARI probe

The main job of the toolkit (what `ssl-toolkit demo` runs) at notebook size:

1. collect Atari frames from a seeded random agent,
2. pretrain VICReg on the DQN Nature CNN (84×84 grayscale) with Lightning,
3. look at the training curves the run wrote into its directory,
4. export the encoder as one `.safetensors` file,
5. probe it with the AtariARI protocol (Anand et al., NeurIPS 2019) on frames it was not trained on,
   beside an untrained network of the same architecture.

Everything is written under `runs/notebook_01/`. With the settings below it takes a few minutes on a
2-core CPU; the numbers it produces are a smoke test, not a result (see the knobs).
"""),
    code("""
from pathlib import Path

# Small settings for a CPU run of a few minutes. [In brackets: `ssl-toolkit demo` / the paper-scale
# benchmark `ssl-toolkit bench atariari`.]
GAME = "pong"
FRAMES = 2_000          # pretraining frames                      [demo 4,000; benchmark 100,000]
PRETRAIN_STEPS = 80     # VICReg optimiser steps                  [demo 300; configs/vicreg_atari.yaml: 100 epochs]
BATCH_SIZE = 32         # frames per step, two views each         [demo 64; config 128 per device]
PROBE_FRAMES = 4_000    # AtariARI probe frames; needs ≥ 4 games  [demo 10,000; paper 50,000]
SEED = 0
RUN_DIR = Path("runs/notebook_01")
"""),
    md("""
## 1. Collect frames

A uniformly random agent plays the game from the ROMs that ship with `ale-py`, with the AtariARI
environment semantics (frame skip 4 with max-pooling, up to 30 no-ops at reset). `noop=False` draws
actions from 1… only, as the paper's agent did: the probe below continues this very seeded stream, so
it can skip exactly the frames the encoder was pretrained on. Frames (210×160 grayscale PNG) and the
console RAM of the same moment go into webdataset shards.
"""),
    code("""
from ssl_toolkit.data.atari import collect_frames

frames_dir = RUN_DIR / "frames"
collect = collect_frames(GAME, FRAMES, frames_dir, seed=SEED, noop=False, progress=False)
print(f"{collect['frames']} frames of {collect['env_id']} in {collect['episodes']} games, "
      f"{collect['frames_per_second']:.0f} frames/s -> {frames_dir}/{collect['shards'][0]}")
"""),
    md("""
## 2. Pretrain VICReg

The same objects `ssl-toolkit pretrain --config configs/vicreg_atari.yaml` builds: an `SSLDataModule`
(random resized crops in the DataLoader workers, the `atari` preset's photometric augmentations batched
after transfer) and the `VICReg` LightningModule on `nature_cnn`. The expander is 1024-wide instead of
the paper's 8192 because the backbone has only 512 features. The `CSVLogger` writes `metrics.csv` into
the run directory, and the `RunArtifacts` callback draws the figures (`plots/*.png`) from it when fit
ends.
"""),
    code("""
import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger

from ssl_toolkit.data.datamodule import SSLDataModule
from ssl_toolkit.methods import VICReg
from ssl_toolkit.tracking import RunArtifacts

pl.seed_everything(SEED, workers=True)
data = SSLDataModule(
    train_path=str(frames_dir), batch_size=BATCH_SIZE, num_workers=1,
    preset="atari", crop_size=[84, 84], image_mode="L", seed=SEED,
)
model = VICReg(
    backbone="nature_cnn", backbone_kwargs={"img_size": [84, 84]}, in_chans=data.in_chans,
    projector="1024-1024-1024", base_lr=0.2, warmup_fraction=0.05, monitor_every_n_steps=10,
)
# metrics.csv and plots/ go into RUN_DIR itself. Lightning warns that the folder is not empty (it holds
# the frames); all it replaces is an old metrics.csv.
trainer = pl.Trainer(
    max_steps=PRETRAIN_STEPS, precision="bf16-mixed", accelerator="auto", devices=1,
    logger=CSVLogger(save_dir=str(RUN_DIR), name="", version=""),
    callbacks=[ModelCheckpoint(dirpath=RUN_DIR / "checkpoints", save_last=True, save_top_k=0), RunArtifacts()],
    log_every_n_steps=1, enable_model_summary=False, enable_progress_bar=False,
)
trainer.fit(model, data)
print(f"trained {trainer.global_step} steps; run directory: {RUN_DIR}")
"""),
    md("""
## 3. Training curves

`plots/loss.png` has one panel per loss term (VICReg's invariance, variance and covariance terms live
on different scales); `plots/collapse.png` tracks the per-dimension standard deviation of the
normalised embeddings and their effective rank (RankMe): values falling towards 0 / 1 would mean the
representation is collapsing. `ssl-toolkit plot runs/notebook_01` redraws them at any time.
"""),
    code("""
from IPython.display import Image, display

from ssl_toolkit.plots import read_metrics

losses = [value for _, value in read_metrics(RUN_DIR / "metrics.csv")["train/loss"]]
k = max(1, len(losses) // 10)
print(f"VICReg loss: {sum(losses[:k]) / k:.2f} (first {k} steps) -> {sum(losses[-k:]) / k:.2f} (last {k} steps)")
print("written:", sorted(p.name for p in (RUN_DIR / "plots").glob("*.png")))
display(Image(filename=str(RUN_DIR / "plots" / "loss.png")))
display(Image(filename=str(RUN_DIR / "plots" / "collapse.png")))
"""),
    md("""
## 4. Export the encoder

`save_encoder` writes the backbone alone (no projector, no optimiser) as safetensors, with JSON
metadata: the backbone name and arguments to rebuild it, input size, normalisation, method, steps and a
SHA-256 of the weights. `load_encoder` rebuilds it without unpickling anything. The CLI equivalent from
the checkpoint is `ssl-toolkit export runs/notebook_01/checkpoints/last.ckpt runs/notebook_01/encoder.safetensors`.
"""),
    code("""
import torch

import ssl_toolkit

encoder_path = RUN_DIR / "encoder.safetensors"
meta = ssl_toolkit.save_encoder(model, encoder_path)
print({k: meta[k] for k in ("backbone", "method", "steps", "input_size", "in_chans", "num_features")})

encoder = ssl_toolkit.load_encoder(encoder_path, freeze=True)   # eval mode, no gradients
print("features:", tuple(encoder(torch.rand(2, 1, 84, 84)).shape))
"""),
    md("""
## 5. AtariARI probe

What does the frozen encoder know about the game state? The protocol trains one linear probe per RAM
variable (paddle and ball positions, scores) on the encoder's features and reports the weighted F1 per
variable, per category and for the game. The probe frames are the ones the same seeded agent plays
*after* the `FRAMES` pretraining frames (`skip=FRAMES`), and `pretrain_frames=FRAMES` drops every test
frame identical to a pretraining frame, so the probe never scores memorised frames. Episodes are split
70/10/20 into train/val/test.

Two baselines on the same frames: the untrained Nature CNN (what pretraining has to beat) and the
majority classifier (each variable's most frequent training value, no encoder at all). Expect all
three to score about the same here: the encoder works on 84×84 frames, so the probe resizes the
210×160 screens (the result records this as a protocol deviation), the ball shrinks to about a pixel,
and after this few frames and steps the features hardly vary with the game state, so the probes fall
back to the majority value. The README's demo section reports the same at 300 steps. Separating the
encoders takes the real scale (first cell) or an encoder trained on full-size frames.
"""),
    code("""
import json

from ssl_toolkit.eval.atariari import collect_probe_frames, format_table, run_atariari_probe
from ssl_toolkit.eval.features import load_frozen_encoder

probe_data = collect_probe_frames(GAME, PROBE_FRAMES, seed=SEED, skip=FRAMES)
random_encoder = load_frozen_encoder("random:nature_cnn", seed=SEED, in_chans=1, img_size=[84, 84])

encoders = {"pretrained": encoder, "random": random_encoder, "majority": "majority"}
labels = {"pretrained": f"VICReg, {PRETRAIN_STEPS} steps", "random": "untrained nature_cnn", "majority": "majority"}
results = {}
for name, enc in encoders.items():
    results[name] = run_atariari_probe(enc, GAME, seed=SEED, data=probe_data, quiet=True, pretrain_frames=FRAMES)
    results[name]["label"] = labels[name]
    (RUN_DIR / f"atariari_{name}.json").write_text(json.dumps(results[name], indent=1, default=float))

print(format_table(results["pretrained"]))
print("game F1:", ", ".join(f"{labels[name]} {r['score_f1']:.3f}" for name, r in results.items()),
      f"(paper, 50k full-size frames: random CNN {results['pretrained']['published']['f1']['random-cnn']:.2f})")
"""),
    md("""
Per-category F1, our encoder beside the paper's columns for this game (its random CNN, its best
self-supervised method ST-DIM, and a supervised encoder as the upper bound):
"""),
    code("""
from ssl_toolkit.plots import plot_atariari

for name in ("pretrained", "random"):
    png = plot_atariari(results[name], RUN_DIR / "plots" / f"atariari_{name}.png")
    display(Image(filename=str(png)))
"""),
    md("""
## Where to go from here

The same steps at real scale from the command line, into a run directory of the same layout (the
config also makes the two views frames *t* and *t+k* of one episode, k from 1 to 4):
```bash
ssl-toolkit atari collect --game pong --frames 100000 --out data/atari/pong --seed 0 --no-noop
ssl-toolkit pretrain --config configs/vicreg_atari.yaml --data.train_path data/atari/pong --name vicreg_pong
ssl-toolkit export runs/vicreg_pong/checkpoints/last.ckpt runs/vicreg_pong/encoder.safetensors
ssl-toolkit probe atariari --encoder runs/vicreg_pong/encoder.safetensors --game pong --pretrain-frames 100000 \\
    --output runs/vicreg_pong/atariari.json
ssl-toolkit plot runs/vicreg_pong
```
To put the encoder into an agent, see `03_rl_adapter.ipynb`.
"""),
]

# --------------------------------------------------------------------------------------------------
LINEAR_PROBE = [
    md("""
# Linear and kNN probes on a frozen encoder

The standard way to compare self-supervised encoders on labelled images: freeze the encoder, extract
one feature vector per image (a center crop, no augmentation), and fit a linear classifier
(`cached_linear_eval`: L-BFGS logistic regression with a weight-decay sweep picked on held-out train
images) or classify by nearest neighbours (`knn_eval`: temperature-weighted cosine kNN). Features are
cached on disk, keyed by the encoder's weights, the files and the preprocessing, so a second probe of
the same encoder on the same data skips the encoder entirely.

To be self-contained the notebook first builds a small ImageFolder of real JPEGs: screens of six Atari
games, the class being the game. Everything is written under `runs/notebook_02/`.
"""),
    code("""
from pathlib import Path

GAMES = ["pong", "breakout", "space_invaders", "mspacman", "seaquest", "boxing"]
TRAIN_PER_GAME = 60      # images per class in train/  [a real probe: ImageNet ~1,300 per class]
VAL_PER_GAME = 20        # images per class in val/    [ImageNet 50 per class]
FRAME_STRIDE = 4         # keep every 4th agent step: neighbouring frames are near-duplicates
ENCODER = "random:resnet18"   # or an export, e.g. "runs/notebook_01/encoder.safetensors" (then CROP_SIZE = None)
CROP_SIZE = 96           # evaluation crop in pixels   [224 for ImageNet encoders; None: the encoder's input size]
SEED = 0
RUN_DIR = Path("runs/notebook_02")
CACHE_DIR = RUN_DIR / "feature_cache"   # default: ~/.cache/ssl_toolkit/features (or $SSL_TOOLKIT_CACHE)
"""),
    md("""
## 1. A small ImageFolder of JPEGs

`play_random` yields the screens of a seeded random agent. The train split comes from seed 0 and the
validation split from seed 1 (other games, other no-op starts); a validation screen identical to a
training screen (e.g. a game's first frame) is left out, so the probe is scored on unseen images. The
layout is the usual `split/class/image.jpg`, which is what the probes and `ssl-toolkit shards
from-folder` read.
"""),
    code("""
import hashlib

from PIL import Image

from ssl_toolkit.data.atari import play_random

data_dir = RUN_DIR / "data"
seen = set()   # hashes of the screens written so far
for split, seed, per_game in (("train", SEED, TRAIN_PER_GAME), ("val", SEED + 1, VAL_PER_GAME)):
    for game in GAMES:
        folder = data_dir / split / game
        folder.mkdir(parents=True, exist_ok=True)
        written = 0
        max_steps = 4 * per_game * FRAME_STRIDE   # room for the skipped duplicates; stops once enough are written
        for i, (frame, _, _) in enumerate(play_random(game, max_steps, seed=seed, grayscale=False)):
            if written == per_game:
                break
            digest = hashlib.sha1(frame.tobytes()).hexdigest()
            if i % FRAME_STRIDE or (split == "val" and digest in seen):
                continue
            seen.add(digest)
            Image.fromarray(frame).save(folder / f"{game}_seed{seed}_{i:05d}.jpg", quality=90)
            written += 1
for split in ("train", "val"):
    counts = {game: len(list((data_dir / split / game).glob("*.jpg"))) for game in GAMES}
    print(split, counts)
"""),
    code("""
import matplotlib.pyplot as plt

fig, axes = plt.subplots(1, len(GAMES), figsize=(2 * len(GAMES), 2.6))
for ax, game in zip(axes, GAMES):
    ax.imshow(Image.open(sorted((data_dir / "val" / game).glob("*.jpg"))[-1]))
    ax.set_title(game, fontsize=9)
    ax.axis("off")
plt.show()
"""),
    md("""
## 2. The frozen encoder

`load_frozen_encoder` takes what `ssl-toolkit probe --encoder` takes: an exported `.safetensors`, a
pretraining `.ckpt` (read weights-only) or `random:<backbone>`. A random encoder is drawn from a
generator seeded with `seed`, so the same spec gives the same weights, and the same cache entries.
An untrained ResNet-18 is the baseline here; swap in your own export to compare.
"""),
    code("""
from ssl_toolkit.eval.features import load_frozen_encoder

encoder = load_frozen_encoder(ENCODER, seed=SEED)
meta = encoder.encoder_meta
print(f"{meta['backbone']} ({meta['method']}), {meta['num_features']} features, {meta['in_chans']} input channels")
"""),
    md("""
## 3. Linear probe

Features of every train and val image are extracted once (center crop of `CROP_SIZE`, normalised with
the encoder's own mean/std, ImageNet's for a random encoder; bf16 when that is faster on this CPU) and
stored in `CACHE_DIR`. The classifier is fit with L-BFGS on standardised features; the weight decay is
picked on 10 % of train held out (never on val), then the model is refit on all of train and scored on
val. Chance is 1 / number of classes.
"""),
    code("""
from ssl_toolkit.eval.linear_probe import cached_linear_eval

train_dir, val_dir = str(data_dir / "train"), str(data_dir / "val")
linear = cached_linear_eval(encoder, train_dir, val_dir, crop_size=CROP_SIZE, cache_dir=str(CACHE_DIR), seed=SEED)

print(f"top-1 {linear['top1']:.1f} %, top-5 {linear['top5']:.1f} % on {linear['num_val']} val images "
      f"({linear['num_classes']} classes, chance {100 / linear['num_classes']:.1f} %)")
print("weight-decay sweep (held-out train top-1):",
      ", ".join(f"{row['weight_decay']:g}: {row['holdout_top1']:.1f}" for row in linear["sweep"]),
      f"-> picked {linear['weight_decay']:g}")
print(f"features extracted in {linear['features']['train']['seconds'] + linear['features']['val']['seconds']:.1f} s, "
      f"probe fit in {linear['fit_seconds']:.2f} s")
"""),
    md("""
Telling games apart is easy: each has its own palette and layout, so even an untrained network
separates them. The point here is the pipeline; on ImageNet or CIFAR folders the same call compares
encoders the way papers do (`--protocol standard` on the CLI runs the published 100-epoch SGD protocol
instead, for numbers comparable with papers' tables).

## 4. The feature cache

The same call again: both splits hit the cache (the key covers every weight, every file's path, size
and modification time, and the preprocessing), so only the logistic regression runs.
"""),
    code("""
again = cached_linear_eval(encoder, train_dir, val_dir, crop_size=CROP_SIZE, cache_dir=str(CACHE_DIR), seed=SEED)
print("from cache:", {split: again["features"][split]["cached"] for split in ("train", "val")})
print(f"first run {linear['seconds']:.1f} s, second run {again['seconds']:.2f} s; top-1 {again['top1']:.1f} %")
"""),
    md("""
## 5. kNN

Weighted cosine kNN (Wu et al., CVPR 2018): each val image takes its k most similar train images, each
voting for its class with weight exp(similarity / T). The usual grid k ∈ {20, 200}, T ∈ {0.07, 0.1} is
scored from one similarity pass, on the same cached features.
"""),
    code("""
from ssl_toolkit.eval.knn import knn_eval

knn = knn_eval(encoder, train_dir, val_dir, crop_size=CROP_SIZE, cache_dir=str(CACHE_DIR))
for row in knn["results"]:
    print(f"k={row['k']:>3}  T={row['temperature']:<5g} top-1 {row['top1']:5.1f} %  top-5 {row['top5']:5.1f} %")
print(f"({knn['seconds']:.2f} s, features from cache: {knn['features']['val']['cached']})")
"""),
    md("""
## 6. Embeddings

The val features projected to the plane (PCA, `project_2d`; `method="tsne"` with scikit-learn), one
colour per class: a quick look at what the linear probe is separating.
"""),
    code("""
from IPython.display import Image as ShowImage

from ssl_toolkit.eval.features import extract_features
from ssl_toolkit.plots import plot_embeddings

val = extract_features(encoder, val_dir, crop_size=CROP_SIZE, cache_dir=str(CACHE_DIR))   # a cache hit
print(f"{tuple(val.features.shape)} val features, from cache: {val.cached}")
png = plot_embeddings(val.features, val.labels, RUN_DIR / "embeddings.png", class_names=val.classes,
                      title=f"{ENCODER}: val features (PCA)")
display(ShowImage(filename=str(png)))
"""),
    md("""
## 7. The same from the command line

```bash
ssl-toolkit probe linear --encoder random:resnet18 --train runs/notebook_02/data/train --val runs/notebook_02/data/val \\
    --crop-size 96 --cache-dir runs/notebook_02/feature_cache --output runs/notebook_02/cli_linear.json
ssl-toolkit probe knn --encoder random:resnet18 --train runs/notebook_02/data/train --val runs/notebook_02/data/val \\
    --crop-size 96 --cache-dir runs/notebook_02/feature_cache
```

The CLI draws the random encoder with the same seed (`--seed 0`) and reads the same cache, so it finds
the features computed above. The first line, run from here:
"""),
    code("""
import json
import subprocess
import sys

command = [sys.executable, "-m", "ssl_toolkit", "probe", "linear", "--encoder", ENCODER,
           "--train", train_dir, "--val", val_dir, "--seed", str(SEED), "--cache-dir", str(CACHE_DIR),
           "--output", str(RUN_DIR / "cli_linear.json")]
if CROP_SIZE is not None:
    command += ["--crop-size", str(CROP_SIZE)]
print(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
"""),
    md("""
The results of this notebook, for later comparison with other encoders:
"""),
    code("""
summary = {"encoder": ENCODER, "crop_size": CROP_SIZE, "linear": linear, "linear_again": again, "knn": knn}
(RUN_DIR / "probe.json").write_text(json.dumps(summary, indent=1, default=float))
print(f"written: {RUN_DIR / 'probe.json'}")
"""),
]

# --------------------------------------------------------------------------------------------------
RL_ADAPTER = [
    md("""
# The RL adapter: a pretrained encoder in an Atari agent

An encoder leaves the toolkit as one `encoder.safetensors` file and enters an agent through one module
with CleanRL's trunk contract: **uint8 frame stacks `(B, 4, 84, 84)` in, features `(B, num_features)`
out, scaling inside**. This notebook

1. makes an encoder with a very short VICReg run (so it is self-contained; use
   `runs/notebook_01/encoder.safetensors` or your own export instead),
2. puts it into a plain PyTorch network (`AtariEncoder`),
3. trains a Stable-Baselines3 PPO agent on it, frozen, for a few thousand steps,
4. plots the game scores of the episodes played during training.

Everything is written under `runs/notebook_03/`. See `docs/rl_adapter.md` for the full story.
"""),
    code("""
from pathlib import Path

GAME = "ALE/Pong-v5"
PRETRAIN_FRAMES = 1_000   # frames for the short VICReg run      [ssl-toolkit bench rl: 4,000]
PRETRAIN_STEPS = 30       # VICReg steps                          [bench rl: 300; a real run: many epochs]
PPO_STEPS = 2_048         # agent steps (4 emulator frames each)  [Atari-100k: 100,000 per game, ≥ 5 seeds]
N_ENVS = 2                # parallel environments                 [8 in the PPO Atari setting]
SEED = 0
RUN_DIR = Path("runs/notebook_03")
"""),
    md("""
## 1. An encoder to load

A short VICReg run on `nature_cnn` (the recipe of `01_quickstart.ipynb`, without plots), exported
with `save_encoder`. The weights barely move in this many steps; the point is the file and what loads
it. `ssl_toolkit.load_encoder("random:nature_cnn")` gives an untrained one of the same kind, the
baseline a pretrained encoder should beat.
"""),
    code("""
import pytorch_lightning as pl
from pytorch_lightning.loggers import CSVLogger

import ssl_toolkit
from ssl_toolkit.data.atari import collect_frames
from ssl_toolkit.data.datamodule import SSLDataModule
from ssl_toolkit.methods import VICReg

collect_frames(GAME, PRETRAIN_FRAMES, RUN_DIR / "frames", seed=SEED, noop=False, progress=False)
pl.seed_everything(SEED, workers=True)
data = SSLDataModule(train_path=str(RUN_DIR / "frames"), batch_size=32, num_workers=1,
                     preset="atari", crop_size=[84, 84], image_mode="L", seed=SEED)
vicreg = VICReg(backbone="nature_cnn", backbone_kwargs={"img_size": [84, 84]}, in_chans=data.in_chans,
                projector="1024-1024-1024", base_lr=0.2, warmup_fraction=0.05)
trainer = pl.Trainer(max_steps=PRETRAIN_STEPS, precision="bf16-mixed", accelerator="auto", devices=1,
                     logger=CSVLogger(save_dir=str(RUN_DIR / "pretrain"), name="", version=""),
                     enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False)
trainer.fit(vicreg, data)

encoder_path = RUN_DIR / "encoder.safetensors"
meta = ssl_toolkit.save_encoder(vicreg, encoder_path)
print(f"{encoder_path}: {meta['backbone']}, {meta['method']} {meta['steps']} steps, input {meta['input_size']}, "
      f"{meta['in_chans']} channel(s), {meta['num_features']} features")
"""),
    md("""
## 2. Plain PyTorch: `AtariEncoder`

`make_atari_env` gives a gymnasium vector env with the Atari-100k conventions (frame skip 4 with
max-pool, up to 30 no-ops, 84×84 grayscale, 4-frame stack, no sticky actions). `AtariEncoder` takes its
uint8 observations as they are: it scales them to [0, 1], applies the pretraining normalisation, and,
since this encoder was pretrained on single frames, encodes each of the 4 frames and concatenates the
features (`fuse="concat"`; `fuse="linear"` learns a projection instead). Loaded with `freeze=True` the
encoder gets no gradients and stays in eval mode. In a CleanRL agent it replaces the `nn.Sequential` of
convolutions.
"""),
    code("""
import torch
from torch import nn

from ssl_toolkit.rl import AtariEncoder, make_atari_env

trunk = AtariEncoder(ssl_toolkit.load_encoder(encoder_path, freeze=True), frame_stack=4)
envs = make_atari_env(GAME, n_envs=N_ENVS, seed=SEED)
obs, _ = envs.reset(seed=SEED)
actor = nn.Linear(trunk.num_features, envs.single_action_space.n)
logits = actor(trunk(torch.as_tensor(obs)))
envs.close()
print(f"observations {obs.dtype} {obs.shape} -> features {trunk.num_features} -> logits {tuple(logits.shape)}")
print("trainable encoder parameters:", sum(p.numel() for p in trunk.parameters() if p.requires_grad))
"""),
    md("""
## 3. Stable-Baselines3 PPO on the frozen encoder

`policy_kwargs` plugs the encoder in as SB3's features extractor and avoids its traps: SB3 would scale
the frames a second time, and PPO's orthogonal initialisation would overwrite the pretrained weights.
`make_sb3_atari_env` wraps the same environment as an SB3 `VecEnv`: a lost life ends the agent's
episode while the game goes on, rewards are clipped to their sign, and the raw game score of every
finished game is reported in `info["episode"]` (so SB3's `ep_info_buffer` holds game scores). A small
callback records those scores with the step at which each game ended.

The hyperparameters are the PPO Atari settings (Schulman et al. 2017; `ssl_toolkit.rl.train.hyperparameters`
has them): 128 steps per env per rollout, 4 epochs of 4 minibatches, clip 0.1, entropy 0.01, learning
rate 2.5e-4 (annealed to 0 over training in the paper, constant here).
"""),
    code("""
import time

import numpy as np
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback

from ssl_toolkit.rl.envs import make_sb3_atari_env
from ssl_toolkit.rl.sb3 import policy_kwargs


class GameScores(BaseCallback):
    \"\"\"Records, after every step, each env's (clipped) rewards summed over the game in progress, and
    (agent step, env, raw score, length) of every game that ends.\"\"\"

    def __init__(self, n_envs: int):
        super().__init__()
        self.in_progress = np.zeros(n_envs)
        self.trace = []   # (agent step, score so far of env 0, env 1, ...)
        self.games = []   # (agent step, env, score, length)

    def _on_step(self) -> bool:
        self.in_progress += self.locals["rewards"]
        self.trace.append((self.num_timesteps, *self.in_progress))
        for env_index, info in enumerate(self.locals["infos"]):
            if "episode" in info:   # a whole game ended (not just a life)
                self.games.append((self.num_timesteps, env_index, info["episode"]["r"], info["episode"]["l"]))
                self.in_progress[env_index] = 0
        return True


env = make_sb3_atari_env(GAME, n_envs=N_ENVS, seed=SEED)
agent = PPO("CnnPolicy", env, policy_kwargs=policy_kwargs(encoder_path, freeze=True, algo="ppo"),
            n_steps=128, batch_size=128 * N_ENVS // 4, n_epochs=4, learning_rate=2.5e-4, clip_range=0.1,
            ent_coef=0.01, seed=SEED, verbose=0)
trainable = sum(p.numel() for p in agent.policy.parameters() if p.requires_grad)
total = sum(p.numel() for p in agent.policy.parameters())
print(f"policy: {trainable:,} trainable of {total:,} parameters (the encoder is frozen)")

scores = GameScores(N_ENVS)
start = time.perf_counter()
agent.learn(total_timesteps=PPO_STEPS, callback=scores)
seconds = time.perf_counter() - start
env.close()
agent.save(RUN_DIR / "ppo_agent.zip")
print(f"{agent.num_timesteps} agent steps in {seconds:.0f} s ({agent.num_timesteps / seconds:.0f} steps/s), "
      f"{len(scores.games)} games finished")
"""),
    md("""
## 4. Game scores

Each line is the score of the game in progress in one env (the clipped rewards summed since the game
began; in Pong every reward is ±1, so clipping changes nothing), and each dot the raw score of a game
at the step it ended, from `info["episode"]`. A random Pong player loses 0–21, and a few thousand
steps of PPO are far too few to change that: this is a smoke check that the pieces fit, not a learning
curve. For a real comparison, train 100k steps per game on several games and seeds with
the pretrained, a random and a from-scratch encoder, and aggregate with IQM and bootstrap intervals
(`ssl-toolkit bench rl`).
"""),
    code("""
import csv
import json

import matplotlib.pyplot as plt

with open(RUN_DIR / "episodes.csv", "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["agent_step", "env", "score", "length"])
    writer.writerows(scores.games)
summary = {"game": GAME, "steps_requested": PPO_STEPS, "steps_trained": agent.num_timesteps,
           "n_envs": N_ENVS, "games_finished": len(scores.games), "seconds": round(seconds, 1),
           "trainable_parameters": trainable, "encoder": str(encoder_path)}
(RUN_DIR / "summary.json").write_text(json.dumps(summary, indent=1))

trace = np.array(scores.trace)
fig, ax = plt.subplots(figsize=(7, 3.5))
for env_index in range(N_ENVS):
    line, = ax.plot(trace[:, 0], trace[:, 1 + env_index], lw=1, label=f"env {env_index}: game in progress")
    ended = [game for game in scores.games if game[1] == env_index]
    ax.plot([game[0] for game in ended], [game[2] for game in ended], "o", color=line.get_color(),
            label=f"env {env_index}: finished games")
ax.set_xlim(0, PPO_STEPS)
ax.set_xlabel("agent steps (all envs)")
ax.set_ylabel("game score")
ax.set_title(f"PPO on {GAME}, frozen VICReg encoder")
ax.grid(alpha=0.3)
ax.legend(fontsize=8)
fig.savefig(RUN_DIR / "scores.png", dpi=110, bbox_inches="tight")
plt.show()
"""),
    md("""
## The same in one call, or from the command line

`ssl_toolkit.rl.train.train_agent` does all of section 3 with the published hyperparameters, then
plays whole evaluation games and reports raw and human-normalised scores (`summary.json`, TensorBoard
logs and `agent.zip` in `out_dir`):

```python
from ssl_toolkit.rl.train import train_agent
result = train_agent("ALE/Pong-v5", encoder="runs/notebook_03/encoder.safetensors", algo="ppo",
                     steps=100_000, seed=0, out_dir="runs/notebook_03/ppo")
```

```bash
ssl-toolkit rl train --env ALE/Pong-v5 --encoder runs/notebook_03/encoder.safetensors --algo ppo --steps 100000 --seed 0
ssl-toolkit rl train --env ALE/Pong-v5 --encoder random:nature_cnn --algo dqn --steps 100000
ssl-toolkit rl eval runs/rl/agent.zip --episodes 10
```
"""),
]

NOTEBOOKS = {
    "01_quickstart.ipynb": QUICKSTART,
    "02_linear_probe.ipynb": LINEAR_PROBE,
    "03_rl_adapter.ipynb": RL_ADAPTER,
}


def build(cells: list[tuple[str, str]], prefix: str) -> nbformat.NotebookNode:
    """A notebook of ``cells`` without outputs; cell ids are stable (``<prefix>-<index>``) so that
    rewriting a notebook changes only what was edited."""
    nb = new_notebook(metadata=METADATA)
    for i, (kind, source) in enumerate(cells):
        cell = new_markdown_cell(source) if kind == "markdown" else new_code_cell(source)
        cell.id = f"{prefix}-{i:02d}"
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def render(name: str) -> str:
    """The text of notebook ``name`` as it is stored in git."""
    return nbformat.writes(build(NOTEBOOKS[name], prefix=name[:2]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(HERE), help="where to write the notebooks (default: next to this script)")
    out = Path(parser.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    for name in NOTEBOOKS:
        (out / name).write_text(render(name))
        print(out / name)


if __name__ == "__main__":
    main()
