"""RunArtifacts: figures in the run directory; with wandb (offline, never prompting) the config, the
figures and the exported encoder recorded in the offline run's own files."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
from pytorch_lightning.loggers import CSVLogger

from ssl_toolkit.data.datamodule import SSLDataModule
from ssl_toolkit.methods import SimSiam
from ssl_toolkit.tracking import RunArtifacts

ROOT = Path(__file__).resolve().parents[1]
EXE = Path(sys.executable).parent / "ssl-toolkit"


def read_wandb_records(path: Path) -> list:
    """The records of an offline ``run-*.wandb`` file: a 7-byte header (``:W&B``, magic, version), then
    LevelDB-log framing (32 KiB blocks; each chunk: crc32, length, type FULL/FIRST/MIDDLE/LAST)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a wandb run file"
    block, pos, records, pending = 32768, 7, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer: zero padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


@pytest.fixture()
def wandb_env(tmp_path) -> dict:
    """wandb offline, all its folders under tmp, no key, no terminal to prompt on."""
    env = {k: v for k, v in os.environ.items() if k != "WANDB_API_KEY"}
    env.update(WANDB_MODE="offline", WANDB_SILENT="true", PYTHONWARNINGS="ignore",
               WANDB_DIR=str(tmp_path / "wandb_dir"), WANDB_CACHE_DIR=str(tmp_path / "wandb_cache"),
               WANDB_DATA_DIR=str(tmp_path / "wandb_data"), WANDB_CONFIG_DIR=str(tmp_path / "wandb_config"),
               WANDB_ARTIFACT_DIR=str(tmp_path / "wandb_artifacts"), HOME=str(tmp_path / "home"))
    return env


def test_wandb_offline_run_records_config_plots_and_encoder_artifact(atari_shards, tmp_path, wandb_env):
    runs = tmp_path / "runs"
    proc = subprocess.run(
        [str(EXE), "pretrain", "--config", "configs/vicreg_atari.yaml", "--data.train_path", str(atari_shards),
         "--runs_dir", str(runs), "--name", "tracked", "--loggers", "[csv, wandb]",
         "--trainer.max_steps", "3", "--data.batch_size", "16", "--data.num_workers", "0",
         "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.precision", "32",
         "--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "1",
         "--model.init_args.projector", "64-64", "--model.init_args.monitor_every_n_steps", "1"],
        cwd=ROOT, env=wandb_env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # no login prompt: no key, no terminal, and still it ran to the end offline
    assert "API key" not in proc.stdout + proc.stderr
    run_dir = runs / "tracked"
    assert (run_dir / "encoder.safetensors").is_file() and (run_dir / "plots" / "loss.png").is_file()
    offline = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1, list((run_dir / "wandb").iterdir())
    records = read_wandb_records(next(offline[0].glob("run-*.wandb")))

    artifacts = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    encoders = [a for a in artifacts if a.type == "model"]
    assert len(encoders) == 1, [(a.name, a.type) for a in artifacts]
    manifest = {entry.path: entry for entry in encoders[0].manifest.contents}
    assert set(manifest) == {"encoder.safetensors", "config.yaml"}
    assert manifest["encoder.safetensors"].size == (run_dir / "encoder.safetensors").stat().st_size
    assert json.loads(encoders[0].metadata)["backbone"] == "nature_cnn"

    config_keys = {u.key for r in records if r.WhichOneof("record_type") == "config" for u in r.config.update}
    assert "cli" in config_keys  # the resolved LightningCLI config.yaml
    # an image is a nested value: ("plots/loss", "filenames"), …
    history_keys = {i.key or i.nested_key[0]
                    for r in records if r.WhichOneof("record_type") == "history" for i in r.history.item}
    assert {"plots/loss", "plots/collapse", "plots/embeddings", "train/loss"} <= history_keys
    assert len(list((offline[0] / "files" / "media" / "images").glob("plots/*.png"))) >= 4


def test_callback_writes_plots_with_probe_and_survives_a_failed_export(jpeg_folder, tmp_path, monkeypatch):
    import ssl_toolkit.export

    def broken_export(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ssl_toolkit.export, "save_encoder", broken_export)
    pl.seed_everything(0)
    data = SSLDataModule(train_path=str(jpeg_folder), batch_size=8, num_workers=0, preset="simsiam",
                         crop_size=32, pin_memory=False)
    model = SimSiam(backbone="resnet18", backbone_kwargs={"small_images": True}, proj_dim=32, pred_dim=16,
                    num_classes=data.num_classes, monitor_every_n_steps=1)
    callback = RunArtifacts(export_encoder=True, max_samples=24)
    trainer = pl.Trainer(max_steps=3, accelerator="cpu", devices=1, logger=CSVLogger(str(tmp_path), name="", version=""),
                         callbacks=[callback], enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, log_every_n_steps=1)
    with pytest.warns(UserWarning, match="exporting the encoder failed .*disk full"):
        trainer.fit(model, data)
    written = sorted(Path(p).name for p in callback.written)
    assert written == ["collapse.png", "embeddings.png", "loss.png", "online_probe.png"]
    assert not (tmp_path / "encoder.safetensors").exists()
