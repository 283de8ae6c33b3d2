"""The shard reader on real files and real processes: every sample exactly once per epoch over ranks ×
workers, reshuffled per epoch, ``len()`` exact, mid-epoch resume through Lightning checkpoints, bad data
skipped and counted, temporal pairs of Atari frames, and the CLI on written shards."""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import random
import subprocess
import sys
import tarfile
import threading
from collections import Counter
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image
from pytorch_lightning.callbacks import ModelCheckpoint

from ssl_toolkit.data import SSLDataModule, ShardDataset, ShardLoader, expand_shards, list_image_folder, write_shards

ROOT = Path(__file__).resolve().parents[1]
NUM_SAMPLES = 27  # 7 shards of 4, 4, 4, 4, 4, 4, 3


def _jpeg(i: int) -> bytes:
    rng = np.random.default_rng(i)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (10, 12, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def seven_shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("seven")
    records = ({"__key__": f"s{i:03d}", "jpg": _jpeg(i), "cls": i % 3} for i in range(NUM_SAMPLES))
    assert len(write_shards(records, out, prefix="train", max_count=4)) == 7
    return out


def _all_keys() -> Counter:
    return Counter(f"s{i:03d}" for i in range(NUM_SAMPLES))


def _data(path, **kw) -> SSLDataModule:
    args = dict(train_path=str(path), batch_size=4, num_workers=2, preset="simclr", crop_size=8, drop_last=False,
                shuffle_buffer=8, seed=3)
    return SSLDataModule(**{**args, **kw})


def _epoch_keys(data: SSLDataModule, loader, limit: int | None = None) -> list[list[str]]:
    """Batches of one epoch as the model sees them (through the data module's host hook)."""
    out = []
    for batch in loader:
        out.append(data.on_before_batch_transfer(batch, 0)["key"])
        if limit is not None and len(out) == limit:
            break
    return out


# --------------------------------------------------------------------------------------- the plan
def test_plan_deals_every_sample_once_with_equal_steps():
    """Random shard counts × ranks × workers × batch sizes: the ranks' plans cover every sample once
    (drop_last: all but < one global batch), with len() batches of 1…batch_size on every rank."""
    rng = random.Random(0)
    checked = 0
    for trial in range(300):
        counts = [rng.randint(0, 12) for _ in range(rng.randint(1, 9))]
        if sum(counts) == 0:
            continue
        ranks, workers, batch, drop = rng.randint(1, 4), rng.randint(1, 4), rng.randint(1, 6), rng.random() < 0.3
        slots: Counter = Counter()
        try:
            dataset = ShardDataset([f"s{i}.tar" for i in range(len(counts))], counts=counts, num_workers=workers,
                                   batch_size=batch, drop_last=drop, shuffle_buffer=8, seed=trial)
            dataset.set_epoch(trial % 3)
            for rank in range(ranks):
                dataset.set_world(rank, ranks)
                plans = dataset.plans()
                sizes = [s for plan in plans for s in plan.batch_sizes]
                assert len(sizes) == len(dataset) and all(1 <= s <= batch for s in sizes)
                for plan in plans:
                    assert sum(plan.batch_sizes) == plan.count == sum(p.size() for p in plan.pieces)
                    slots.update((p.shard, i) for p in plan.pieces for i in range(p.start, p.stop))
        except ValueError as error:  # too few samples for the ranks: refused up front, with the reason
            assert "samples" in str(error)
            continue
        assert set(slots.values()) <= {1}
        dropped = sum(counts) - len(slots)
        assert dropped == 0 if not drop else 0 <= dropped < ranks * batch
        checked += 1
    assert checked > 200


# ------------------------------------------------------------------------- real ranks and workers
def _rank_main(rank: int, world_size: int, shard_dir: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/rendezvous", rank=rank, world_size=world_size)
    try:
        data = _data(shard_dir)
        loader = data.train_dataloader()  # each iteration is the next epoch (no Trainer here)
        record = {"len": len(loader), "epoch0": _epoch_keys(data, loader), "epoch1": _epoch_keys(data, loader)}
        record["replay0"] = _epoch_keys(data, _data(shard_dir).train_dataloader())  # same (seed, epoch)
        # epoch 2: two batches, then a checkpoint's data state (merged over ranks) and a resumed reader
        record["before"] = _epoch_keys(data, loader, limit=2)
        state = data.state_dict()
        resumed = _data(shard_dir)
        resumed.load_state_dict(state)
        record["after"] = _epoch_keys(resumed, resumed.train_dataloader())
        record["skipped"] = data.skipped
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(record))
    finally:
        dist.destroy_process_group()


def test_two_ranks_two_workers_each_key_once_per_epoch_and_resume(seven_shards, tmp_path):
    # forked like the ranks torchrun or Lightning start (their DataLoader workers fork too)
    mp.start_processes(_rank_main, args=(2, str(seven_shards), str(tmp_path)), nprocs=2, start_method="fork")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    length = ranks[0]["len"]
    assert length == ranks[1]["len"] == 4  # ceil(27 / (2 ranks × 4))
    for name in ("epoch0", "epoch1", "replay0"):
        assert [len(r[name]) for r in ranks] == [length, length], name  # len() is what each rank yields
        assert Counter(k for r in ranks for batch in r[name] for k in batch) == _all_keys(), name
    for r in ranks:
        assert r["epoch1"] != r["epoch0"]  # reshuffled: another shard order and buffer draw
        assert r["replay0"] == r["epoch0"]  # the same (seed, epoch) replays the same order
        assert len(r["after"]) == length - 2 and r["skipped"] == 0
    resumed = Counter(k for r in ranks for batch in r["before"] + r["after"] for k in batch)
    assert resumed == _all_keys()  # before + after the resume: the epoch, each sample exactly once


# ------------------------------------------------------------------------ resume through Lightning
class KeyRecorder(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.keys: list[tuple[int, list[str]]] = []

    def training_step(self, batch, batch_idx):
        self.keys.append((self.current_epoch, list(batch["key"])))
        return self.w * batch["views"][0].float().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _fit(data, root, max_epochs, callbacks, ckpt_path=None):
    model = KeyRecorder()
    trainer = pl.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False, callbacks=callbacks,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=root)
    trainer.fit(model, data, ckpt_path=ckpt_path)
    return model, trainer


def test_resume_mid_epoch_and_from_epoch_end_through_trainer(seven_shards, tmp_path, crash_at):
    batches = 7  # ceil(27 / 4) in one process
    steps = ModelCheckpoint(dirpath=tmp_path / "steps", every_n_train_steps=2, save_top_k=-1, filename="{step}")
    model = KeyRecorder()
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, callbacks=[steps, crash_at(3)],
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    data = _data(seven_shards)
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer.fit(model, data)
    assert len(data.train_dataloader()) == batches
    before = [k for _, keys in model.keys[:2] for k in keys]  # the checkpoint at step 2 holds batches 0 and 1

    end = ModelCheckpoint(dirpath=tmp_path / "end", filename="end", save_on_train_epoch_end=True)
    model, trainer = _fit(_data(seven_shards), tmp_path, 1, [end], ckpt_path=tmp_path / "steps" / "step=2.ckpt")
    assert len(model.keys) == batches - 2  # what the epoch has left, as Lightning expects
    assert Counter(before + [k for _, keys in model.keys for k in keys]) == _all_keys()

    # from the end-of-epoch checkpoint: epoch 1 is whole again, newly shuffled
    model, trainer = _fit(_data(seven_shards), tmp_path, 2, [], ckpt_path=tmp_path / "end" / "end.ckpt")
    assert {epoch for epoch, _ in model.keys} == {1} and len(model.keys) == batches
    assert Counter(k for _, keys in model.keys for k in keys) == _all_keys()


# --------------------------------------------------------------------------------------- bad data
def _bad_shards(out: Path) -> tuple[list[str], int]:
    """4 shards of 5: a corrupt JPEG (s006), a sample without an image member (s012), shard 3 cut inside
    its third image; returns the urls and the number of samples to be skipped."""
    def records():
        for i in range(20):
            key = f"s{i:03d}"
            if i == 6:
                yield {"__key__": key, "jpg": b"\xff\xd8 not really a jpeg"}
            elif i == 12:
                yield {"__key__": key, "txt": "an image stored under the wrong extension"}
            else:
                yield {"__key__": key, "jpg": _jpeg(i)}

    urls = write_shards(records(), out, prefix="train", max_count=5)
    with tarfile.open(urls[3]) as tar:
        third = tar.getmembers()[2]
    data = Path(urls[3]).read_bytes()
    Path(urls[3]).write_bytes(data[: third.offset_data + third.size // 2])
    return urls, 1 + 1 + 3  # s017 torn, s018 and s019 never read


def test_bad_data_is_skipped_warned_once_counted_and_keeps_counts(tmp_path, caplog):
    urls, expected = _bad_shards(tmp_path)
    for workers in (0, 2):
        data = _data(tmp_path, num_workers=workers)
        loader = data.train_dataloader()
        with caplog.at_level(logging.WARNING, logger="ssl_toolkit.data.shards"):
            caplog.clear()
            epoch = _epoch_keys(data, loader)
        assert len(epoch) == len(loader) == 5 and sum(map(len, epoch)) == 20  # skipped slots are filled
        assert data.skipped == expected
        keys = Counter(k for batch in epoch for k in batch)
        assert not {"s006", "s012", "s017", "s018", "s019"} & set(keys)
        if workers == 0:  # (worker processes log to their own stderr)
            messages = [r.getMessage() for r in caplog.records]
            assert len(messages) == 3
            assert sum("'s006'" in m and "train-000001.tar" in m for m in messages) == 1
            assert sum("'s012'" in m and "train-000002.tar" in m and "no image" in m for m in messages) == 1
            assert sum("3 sample(s)" in m and "train-000003.tar" in m for m in messages) == 1


# ------------------------------------------------------------------------------- other sources
def test_resample_fixed_epoch_length_and_pipe_urls(seven_shards):
    urls = expand_shards(seven_shards)
    dataset = ShardDataset(urls, resample=True, epoch_length=10, batch_size=4, num_workers=2, shuffle_buffer=4)
    loader = ShardLoader(dataset, num_workers=2)
    batches = list(loader)
    assert len(loader) == 3 and sorted(len(b["key"]) for b in batches) == [2, 4, 4]
    assert set(k for b in batches for k in b["key"]) <= set(_all_keys())
    dataset.set_world(1, 2)
    assert len(dataset) == 2  # 5 samples per rank
    remote = ShardDataset(["https://example.invalid/a.tar"], resample=True, epoch_length=8, batch_size=4)
    assert len(remote) == 2  # drawn with replacement: no counts needed
    piped = ShardDataset([f"pipe:cat {u}" for u in urls], counts=[4] * 6 + [3], shuffle_buffer=0)
    assert Counter(item["key"] for item in piped) == _all_keys()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_http_shards_with_their_index_stream_exactly_once(seven_shards):
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(seven_shards)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/train-{{000000..000006}}.tar"
        data = _data(url)  # counted from the index.json served next to the shards, read through curl
        assert data.num_samples == NUM_SAMPLES
        loader = data.train_dataloader()
        epoch = _epoch_keys(data, loader)
        assert len(epoch) == len(loader) and Counter(k for batch in epoch for k in batch) == _all_keys()
        with pytest.raises(ValueError, match="resample"):
            _data(url.replace("train-", "other-"))
    finally:
        server.shutdown()


# ---------------------------------------------------------------------------------- temporal pairs
def _episode_step(key: str) -> tuple[int, int]:
    episode, step = key.split("_")
    return int(episode[2:]), int(step[1:])


@pytest.mark.parametrize("offset,workers", [([1, 4], 0), ([1, 4], 2), (3, 2)])
def test_temporal_pairs_on_collected_frames(atari_shards, offset, workers):
    lo, hi = (offset, offset) if isinstance(offset, int) else offset
    urls = expand_shards(atari_shards)
    dataset = ShardDataset(urls, temporal_offset=offset, shuffle_buffer=16, num_workers=workers, batch_size=8)
    batches = list(ShardLoader(dataset, num_workers=workers))
    assert len(batches) == len(dataset)
    anchors, deltas = Counter(), Counter()
    for batch in batches:
        assert len(batch["views"]) == len(batch["key"]) and all(len(pair) == 2 for pair in batch["views"])
        for key, partner, pad in zip(batch["key"], batch["partner"], batch["pad"].tolist()):
            (ep_a, t_a), (ep_b, t_b) = _episode_step(key), _episode_step(partner)
            assert ep_a == ep_b and lo <= abs(t_a - t_b) <= hi
            deltas[abs(t_a - t_b)] += 1
            anchors[key] += not pad
    assert set(anchors.values()) == {1} and sum(anchors.values()) >= 300 - 2 * workers
    assert set(deltas) == set(range(lo, hi + 1))  # k is drawn over the whole range


def test_temporal_pairs_at_episode_ends_and_short_episodes(tmp_path):
    png = io.BytesIO()
    Image.new("L", (8, 8)).save(png, "PNG")
    records = [{"__key__": f"ep{ep:06d}_t{t:06d}", "png": png.getvalue(), "json": {"episode": ep, "step": t}}
               for ep, length in enumerate([1, 3, 9]) for t in range(length)]
    write_shards(records, tmp_path, prefix="f", max_count=100)
    dataset = ShardDataset(expand_shards(tmp_path), temporal_offset=[2, 3], shuffle_buffer=0, batch_size=13)
    (batch,) = list(dataset)
    pairs = list(zip(batch["key"], batch["partner"], batch["pad"].tolist()))
    assert len(pairs) == 13
    for key, partner, _ in pairs:
        (ep_a, t_a), (ep_b, t_b) = _episode_step(key), _episode_step(partner)
        assert ep_a == ep_b and 2 <= abs(t_a - t_b) <= 3
    # the 1-frame episode and the middle frame of the 3-frame one have no partner 2-3 steps away:
    # their slots hold repeats of other pairs; every other frame is an anchor once
    unpairable = {"ep000000_t000000", "ep000001_t000001"}
    assert sorted(k for k, _, pad in pairs if not pad) == sorted({r["__key__"] for r in records} - unpairable)
    # the views come out in time order; with a transform each frame gets its own view
    data = SSLDataModule(train_path=str(tmp_path), batch_size=4, num_workers=0, preset="atari", image_mode="L",
                         crop_size=[8, 8], temporal_offset=[2, 3], drop_last=True)
    views = data.on_after_batch_transfer(data.on_before_batch_transfer(next(iter(data.train_dataloader())), 0), 0)
    assert [tuple(v.shape) for v in views["views"]] == [(4, 1, 8, 8)] * 2


# ------------------------------------------------------------------------------------------- CLI
def _cli(*args) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "ssl-toolkit"
    env = {**os.environ, "WANDB_MODE": "disabled"}
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)


def _pretrain(shards: Path, runs: Path, steps: int) -> subprocess.CompletedProcess:
    proc = _cli("pretrain", "--config", "configs/vicreg_imagenet.yaml",
                "--data.train_path", str(shards / "train-{000000..000003}.tar"), "--data.val_path", "null",
                "--trainer.max_steps", steps, "--model.init_args.backbone", "resnet18",
                "--model.init_args.projector", "64-64", "--data.batch_size", 4, "--data.num_workers", 0,
                "--data.crop_size", 32, "--trainer.accelerator", "cpu", "--trainer.devices", 1,
                "--trainer.precision", 32, "--trainer.log_every_n_steps", 1, "--trainer.enable_progress_bar", "false",
                "--runs_dir", runs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _metric(run_dir: Path, name: str) -> list[float]:
    with open(run_dir / "metrics.csv") as f:
        return [float(row[name]) for row in csv.DictReader(f) if row.get(name)]


def test_cli_pretrains_on_written_shards_and_on_bad_ones(jpeg_folder, tmp_path):
    samples, classes = list_image_folder(jpeg_folder)  # 24 real JPEGs

    def records(corrupt: str | None = None):
        for path, label in samples:
            key = f"{Path(path).parent.name}_{Path(path).stem}"
            yield {"__key__": key, "jpg": b"garbage" if key == corrupt else Path(path).read_bytes(), "cls": label}

    good = tmp_path / "good"
    write_shards(records(), good, prefix="train", max_count=6, metadata={"classes": classes})
    _pretrain(good, tmp_path / "runs_good", steps=3)
    run = tmp_path / "runs_good" / "vicreg_imagenet"
    assert torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 3
    assert _metric(run, "data/skipped") == [0.0, 0.0, 0.0]

    bad = tmp_path / "bad"
    urls = write_shards(records(corrupt="cat_img_002"), bad, prefix="train", max_count=6, metadata={"classes": classes})
    with tarfile.open(urls[3]) as tar:
        members = tar.getmembers()  # .cls and .jpg per sample
    torn = next(m for m in members[4:] if m.name.endswith(".jpg"))  # the third sample's image
    Path(urls[3]).write_bytes(Path(urls[3]).read_bytes()[: torn.offset_data + torn.size // 2])
    proc = _pretrain(bad, tmp_path / "runs_bad", steps=6)  # the whole epoch: 24 samples / 4
    skipped = _metric(tmp_path / "runs_bad" / "vicreg_imagenet", "data/skipped")
    assert len(skipped) == 6 and skipped[-1] == 1 + 4  # the corrupt JPEG + the third to sixth of shard 3
    # one warning each in the training epoch; the end-of-fit embedding figure (RunArtifacts) reads
    # the data once more and reports what it skips again
    assert 1 <= proc.stderr.count("skipped sample 'cat_img_002' of shard") <= 2
    assert 1 <= proc.stderr.count("train-000003.tar from position 2") <= 2
