"""Data: image folders, webdataset shards (read and write), the Atari frame collector, and the
Lightning data module that turns any of them into batches of augmented views."""
from ssl_toolkit.data.atari import (
    AtariARIFrames,
    collect_frames,
    collect_summary,
    iter_frames,
    make_atariari_env,
    resolve_env_id,
)
from ssl_toolkit.data.datamodule import SSLDataModule, collate_views
from ssl_toolkit.data.folder import ImageFolderDataset, list_image_folder
from ssl_toolkit.data.shards import (
    ShardDataset,
    count_samples,
    expand_shards,
    looks_like_shards,
    read_index,
    write_shards,
)

__all__ = [
    "AtariARIFrames", "ImageFolderDataset", "SSLDataModule", "ShardDataset", "collate_views", "collect_frames",
    "collect_summary", "count_samples", "expand_shards", "iter_frames", "list_image_folder", "looks_like_shards",
    "make_atariari_env", "read_index", "resolve_env_id", "write_shards",
]
