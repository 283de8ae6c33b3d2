"""Image folders, webdataset shards and the data module, on real files."""
from __future__ import annotations

import json
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torchvision
from PIL import Image

from ssl_toolkit.data import (
    ImageFolderDataset,
    SSLDataModule,
    ShardDataset,
    count_samples,
    expand_shards,
    list_image_folder,
    write_shards,
)

from conftest import IMAGES_PER_CLASS, JPEG_CLASSES

NUM_IMAGES = len(JPEG_CLASSES) * IMAGES_PER_CLASS


# ------------------------------------------------------------------------------------------ folders
def test_folder_listing_matches_torchvision_imagefolder(jpeg_folder):
    samples, classes = list_image_folder(jpeg_folder)
    assert classes == sorted(JPEG_CLASSES) == ["bird", "cat", "dog"]
    reference = torchvision.datasets.ImageFolder(str(jpeg_folder))
    assert classes == reference.classes
    assert samples == reference.samples
    assert Counter(label for _, label in samples) == {0: 8, 1: 8, 2: 8}
    assert sum(p.endswith(".JPEG") for p, _ in samples) == 3  # upper-case extensions are listed


def test_flat_folder_is_unlabeled_and_extensions_are_case_insensitive(tmp_path):
    pixel = Image.new("RGB", (8, 8), (10, 20, 30))
    for name, fmt in [("a.PNG", "PNG"), ("b.webp", "WEBP"), ("c.Jpeg", "JPEG"), ("d.jpg", "JPEG")]:
        pixel.save(tmp_path / name, format=fmt)
    (tmp_path / "notes.txt").write_text("not an image")
    samples, classes = list_image_folder(tmp_path)
    assert classes == []
    assert [Path(p).name for p, _ in samples] == ["a.PNG", "b.webp", "c.Jpeg", "d.jpg"]
    assert {label for _, label in samples} == {-1}


def test_folder_errors_name_the_path(tmp_path):
    missing = tmp_path / "no_such_dir"
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        list_image_folder(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match=r"empty.*no images"):
        list_image_folder(empty)


def test_folder_dataset_reads_bytes_and_applies_the_transform(jpeg_folder):
    dataset = ImageFolderDataset(jpeg_folder, transform=len)
    item = dataset[0]
    path, label = dataset.samples[0]
    assert item == {"views": Path(path).stat().st_size, "label": label, "key": "bird/img_000"}


# ------------------------------------------------------------------------------------------- shards
def _raw_items(urls) -> list[dict]:
    return list(ShardDataset(urls, transform=None, shuffle_buffer=0))


def test_shards_round_trip_keys_bytes_labels(jpeg_folder, jpeg_shards):
    samples, classes = list_image_folder(jpeg_folder)
    expected = {f"{Path(p).parent.name}_{Path(p).stem}": (Path(p).read_bytes(), label) for p, label in samples}
    urls = expand_shards(jpeg_shards)
    assert [Path(u).name for u in urls] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    index = json.loads((jpeg_shards / "index.json").read_text())
    assert [s["count"] for s in index["shards"]] == [10, 10, 4]
    assert index["num_samples"] == NUM_IMAGES and index["classes"] == classes
    items = _raw_items(urls)
    assert len(items) == NUM_IMAGES
    assert {it["key"]: (it["views"], it["label"]) for it in items} == expected


def test_json_labels_and_missing_labels(tmp_path):
    png = Image.new("L", (4, 4)).tobytes()  # any bytes: transform=None does not decode
    records = [
        {"__key__": "a", "png": png, "json": {"label": 3}},
        {"__key__": "b", "png": png, "json": {"cls": 5, "other": 1}},
        {"__key__": "c", "png": png, "json": {"episode": 0}},
        {"__key__": "d", "webp": png},
    ]
    write_shards(records, tmp_path, prefix="x", max_count=100)
    assert {it["key"]: it["label"] for it in _raw_items(expand_shards(tmp_path))} == {"a": 3, "b": 5, "c": -1, "d": -1}


def test_expand_shards_patterns_and_counts(jpeg_shards, tmp_path):
    by_dir = expand_shards(jpeg_shards)
    assert expand_shards(str(jpeg_shards / "train-{000000..000002}.tar")) == by_dir
    assert expand_shards(str(jpeg_shards / "train-*.tar")) == by_dir
    assert expand_shards(by_dir[1]) == [by_dir[1]]
    assert count_samples(by_dir) == NUM_IMAGES  # from index.json
    for url in by_dir:  # without an index the tar headers are counted
        shutil.copy(url, tmp_path)
    assert count_samples(expand_shards(tmp_path)) == NUM_IMAGES


def test_shard_errors_name_the_path_or_pattern(jpeg_shards, tmp_path):
    with pytest.raises(FileNotFoundError, match="train-000003.tar"):
        expand_shards(str(jpeg_shards / "train-{000000..000003}.tar"))
    with pytest.raises(ValueError, match="nothing-"):
        expand_shards(str(tmp_path / "nothing-*.tar"))
    with pytest.raises(FileNotFoundError, match="missing.tar"):
        expand_shards(str(tmp_path / "missing.tar"))
    with pytest.raises(ValueError, match="key"):
        write_shards([{"__key__": "a.b", "png": b"x"}], tmp_path / "bad")


def test_writer_splits_into_max_count_shards(tmp_path):
    records = ({"__key__": f"s{i:03d}", "txt": str(i)} for i in range(7))
    paths = write_shards(records, tmp_path, prefix="p", max_count=3)
    assert [Path(p).name for p in paths] == ["p-000000.tar", "p-000001.tar", "p-000002.tar"]
    with tarfile.open(paths[2]) as tar:
        assert tar.getnames() == ["s006.txt"]
    assert not list(tmp_path.glob("*.partial"))


# -------------------------------------------------------------------------------------- data module
class Recorder(pl.LightningModule):
    """Keeps what the model would receive."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.train_batches: list[dict] = []
        self.val_batches: list[dict] = []
        self.epoch_keys: list[list[str]] = []

    def on_train_epoch_start(self):
        self.epoch_keys.append([])

    def training_step(self, batch, batch_idx):
        self.train_batches.append(batch)
        self.epoch_keys[-1].extend(batch["key"])
        return self.w * batch["views"][0].float().mean()

    def validation_step(self, batch, batch_idx):
        self.val_batches.append(batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _fit(data: SSLDataModule, tmp_path, epochs: int = 1) -> Recorder:
    model = Recorder()
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path,
    )
    trainer.fit(model, data)
    return model


def _check_batch(batch, num_views, shape, batch_size=None):
    assert isinstance(batch["views"], list) and len(batch["views"]) == num_views
    for view in batch["views"]:
        assert view.dtype == torch.float32 and tuple(view.shape[1:]) == shape
        assert torch.isfinite(view).all()
    assert batch["label"].dtype == torch.long and batch["label"].shape == (len(batch["key"]),)
    if batch_size is not None:
        assert len(batch["key"]) == batch_size


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("source", ["folder", "shards"])
def test_datamodule_batches_through_lightning(source, num_workers, jpeg_folder, jpeg_shards, tmp_path):
    path = jpeg_folder if source == "folder" else jpeg_shards
    data = SSLDataModule(train_path=str(path), val_path=str(path), batch_size=4, num_workers=num_workers,
                         preset="vicreg", crop_size=32, shuffle_buffer=8)
    assert (data.num_samples, data.num_classes, data.classes, data.in_chans) == (24, 3, ["bird", "cat", "dog"], 3)
    model = _fit(data, tmp_path)
    assert model.train_batches
    for batch in model.train_batches:
        _check_batch(batch, num_views=2, shape=(3, 32, 32), batch_size=4)
        assert set(batch["label"].tolist()) <= {0, 1, 2}
        # labels travel with their images (keys are class_file in shards, class/file in folders)
        classes = [data.classes[i] for i in batch["label"].tolist()]
        assert classes == [k.replace("/", "_").split("_")[0] for k in batch["key"]]
    # augmented + normalised: not in [0, 1] any more; the two views differ
    first = model.train_batches[0]["views"]
    assert first[0].min() < 0 and not torch.equal(first[0], first[1])
    assert sum(len(b["key"]) for b in model.val_batches) == 24
    for batch in model.val_batches:
        _check_batch(batch, num_views=1, shape=(3, 32, 32))


def test_every_shard_key_once_per_epoch_with_two_workers(jpeg_shards, tmp_path):
    data = SSLDataModule(train_path=str(jpeg_shards / "train-{000000..000002}.tar"), batch_size=5, num_workers=2,
                         preset="simclr", crop_size=16, drop_last=False, shuffle_buffer=8)
    model = _fit(data, tmp_path, epochs=2)
    assert len(model.epoch_keys) == 2
    for keys in model.epoch_keys:
        assert Counter(keys) == Counter({k: 1 for k in model.epoch_keys[0]}) and len(keys) == 24
    assert model.epoch_keys[0] != model.epoch_keys[1]  # reshuffled between epochs


def test_on_after_batch_transfer_outside_a_trainer(jpeg_folder):
    data = SSLDataModule(train_path=str(jpeg_folder), batch_size=6, num_workers=0, preset="mae", crop_size=[24, 40],
                         view_overrides={"crop_scale": [0.5, 1.0]}, mean=[0.5], std=[0.25])
    batch = next(iter(data.train_dataloader()))
    assert batch["views"][0].dtype == torch.uint8 and batch["views"][0].shape == (6, 3, 24, 40)
    raw = batch["views"][0].float() / 255
    out = data.on_after_batch_transfer(batch, 0)
    _check_batch(out, num_views=1, shape=(3, 24, 40), batch_size=6)
    # MAE's views have no colour augmentation: exactly the normalisation is left
    torch.testing.assert_close(out["views"][0], (raw - 0.5) / 0.25, atol=1e-5, rtol=1e-5)


def test_atari_frames_grayscale_unlabeled(atari_shards, tmp_path):
    data = SSLDataModule(train_path=str(atari_shards), val_path=str(atari_shards), batch_size=16, num_workers=0,
                         preset="atari", image_mode="L", crop_size=[84, 84])
    assert (data.in_chans, data.num_classes, data.num_samples) == (1, None, 300)
    assert len(data.train_dataloader()) == 300 // 16
    batch = data.on_after_batch_transfer(next(iter(data.train_dataloader())), 0)
    _check_batch(batch, num_views=2, shape=(1, 84, 84), batch_size=16)
    assert (batch["label"] == -1).all()
    assert 0.0 <= batch["views"][0].min() and batch["views"][0].max() <= 1.5  # scaled, SPR intensity jitter only
    # the evaluation view is the whole frame resized (no centre crop cutting the playfield)
    val = next(iter(data.val_dataloader()))["views"][0]
    assert val.shape == (16, 1, 84, 84) and val.dtype == torch.uint8


def test_datamodule_path_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        SSLDataModule(train_path=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"shards-000000\.tar.*shards-\{000000\.\.000009\}\.tar"):
        SSLDataModule(train_path=str(tmp_path / "shards-{000000..000009}.tar"))
    with pytest.raises(ValueError, match=r"nothing-\*\.tar"):
        SSLDataModule(train_path=str(tmp_path / "nothing-*.tar"))
    with pytest.raises(ValueError, match="image_mode"):
        SSLDataModule(train_path=str(tmp_path), image_mode="CMYK")


def test_ranks_split_samples_exactly_and_yield_equal_counts(jpeg_shards, monkeypatch):
    urls = expand_shards(jpeg_shards)  # 10 + 10 + 4 samples
    every_key = Counter(it["key"] for it in _raw_items(urls))
    first_shard = {it["key"] for it in ShardDataset(urls[:1], shuffle_buffer=0)}
    per_rank = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))  # as webdataset's pytorch_worker_info reads them
        monkeypatch.setenv("WORLD_SIZE", "2")
        dataset = ShardDataset(urls, shuffle_buffer=0, batch_size=5, drop_last=False)
        batches = list(dataset)
        assert len(batches) == len(dataset) == 3  # ceil(24 / (2 × 5)) on both ranks: 5 + 5 + 2 samples
        per_rank.append([k for batch in batches for k in batch["key"]])
    assert [len(keys) for keys in per_rank] == [12, 12]
    assert Counter(per_rank[0] + per_rank[1]) == every_key and set(every_key.values()) == {1}
    # shards in file order without shuffling: rank 0 reads shard 0 and the first 2 samples of shard 1
    assert set(per_rank[0]) > first_shard
    # more workers than shards: shards are split inside, every worker gets a share
    assert len(ShardDataset(urls, num_workers=8, batch_size=2)) == 6
