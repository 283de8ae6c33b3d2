"""Data: image folders, webdataset shards (read and write), the Atari frame collector, and the
Lightning data module that turns any of them into batches of augmented views.

Names are imported on first use, so `ssl-toolkit shards …` and `atari collect` start without
importing Lightning (about half their start-up time).
"""
from importlib import import_module

_EXPORTS = {
    "AtariARIFrames": "atari", "collect_frames": "atari", "collect_summary": "atari", "iter_frames": "atari",
    "make_atariari_env": "atari", "resolve_env_id": "atari",
    "SSLDataModule": "datamodule", "collate_views": "datamodule",
    "ImageFolderDataset": "folder", "list_image_folder": "folder",
    "ShardDataset": "shards", "count_samples": "shards", "expand_shards": "shards", "looks_like_shards": "shards",
    "read_index": "shards", "write_shards": "shards", "ShardLoader": "shards", "StreamProgress": "shards",
    "shard_counts": "shards", "TemporalViews": "temporal", "temporal_pairs": "temporal",
    "shards_from_folder": "shard_writer", "shard_stats": "shard_stats",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ssl_toolkit.data' has no attribute {name!r}")
    return getattr(import_module(f"ssl_toolkit.data.{_EXPORTS[name]}"), name)
