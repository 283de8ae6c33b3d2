"""Write an ImageFolder tree as webdataset shards (``ssl-toolkit shards from-folder``).

Each image becomes one sample of three members: ``<key>.jpg`` (or ``.png`` / ``.webp``) holding the
original file bytes, never re-encoded; ``<key>.cls``, the class index as text; ``<key>.json``,
``{"path": <relative to SRC>, "class": <name>, "label": <index>}``. The key is ``s`` and the sample's
index in :func:`~ssl_toolkit.data.folder.list_image_folder` order (torchvision's ``ImageFolder``
order), zero-padded, so ``s00001234`` is ``ImageFolder(SRC).samples[1234]`` whatever the seed. Next to
the shards go ``classes.json`` (name → index) and ``index.json`` (shard names and counts, ``classes``).

Samples are written in a seeded permutation of that order and cut into shards by ``max_count`` and
``max_size``, so which sample lands in which shard is a pure function of (file list, seed, limits)
and the tar bytes are reproducible (fixed member mtime). That makes resuming simple: each shard is
written to ``<name>.partial`` and renamed when complete, a plan file (``.from_folder.json``, written
before the first shard) records the arguments and a digest of the shard layout, and a re-run with the
same arguments keeps every shard whose size is the planned size and rewrites the rest.
"""
from __future__ import annotations

import hashlib
import json
import os
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds

from ssl_toolkit.data.folder import list_image_folder
from ssl_toolkit.data.shards import INDEX_NAME

PLAN_NAME = ".from_folder.json"
CLASSES_NAME = "classes.json"
PLAN_FORMAT = 1
# tar members get this mtime so the same samples always give the same bytes
MEMBER_MTIME = 0
_MEMBER_EXT = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".webp": "webp"}


@dataclass(frozen=True, slots=True)
class _Sample:
    index: int  # position in list_image_folder order
    rel: str  # path relative to SRC, with forward slashes
    label: int
    size: int  # bytes of the image file


def _padded(n: int) -> int:
    return -(-n // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def _tar_size(members_bytes: int) -> int:
    """Size of a tar file whose members take ``members_bytes``: tarfile ends an archive with two zero
    blocks and pads it to a whole record."""
    end = members_bytes + 2 * tarfile.BLOCKSIZE
    return -(-end // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


class _Layout:
    """The shard layout of one from-folder run: which sample goes where, and every member's bytes
    except the images (read when written)."""

    def __init__(self, src: Path, seed: int, max_count: int, max_size: int | None):
        files, self.classes = list_image_folder(src)
        self.src = src
        self.key_width = max(8, len(str(len(files) - 1)))
        samples = [
            _Sample(i, Path(os.path.relpath(path, src)).as_posix(), label, os.path.getsize(path))
            for i, (path, label) in enumerate(files)
        ]
        order = np.random.default_rng(seed).permutation(len(samples))
        self.shards: list[list[_Sample]] = []
        self.sizes: list[int] = []
        members = 0
        for i in order:
            sample = samples[i]
            need = self.footprint(sample)
            if self.shards and (
                len(self.shards[-1]) >= max_count or (max_size is not None and _tar_size(members + need) > max_size)
            ):
                self.sizes.append(_tar_size(members))
                members = 0
            if members == 0:
                self.shards.append([])
            self.shards[-1].append(sample)
            members += need
        self.sizes.append(_tar_size(members))
        self.num_samples = len(samples)

    def key(self, sample: _Sample) -> str:
        return f"s{sample.index:0{self.key_width}d}"

    def metadata(self, sample: _Sample) -> dict[str, bytes]:
        """The members other than the image: ``cls`` (labelled folders only) and ``json``."""
        name = self.classes[sample.label] if sample.label >= 0 else None
        meta = json.dumps({"path": sample.rel, "class": name, "label": sample.label}, ensure_ascii=False)
        members = {"json": meta.encode()}
        if sample.label >= 0:
            members["cls"] = str(sample.label).encode()
        return members

    def footprint(self, sample: _Sample) -> int:
        """Bytes the sample's members take in a tar: one header block each, data padded to blocks."""
        sizes = [sample.size, *map(len, self.metadata(sample).values())]
        return sum(tarfile.BLOCKSIZE + _padded(n) for n in sizes)

    def digest(self) -> str:
        h = hashlib.sha256()
        for shard in self.shards:
            for s in shard:
                h.update(f"{s.index}\t{s.rel}\t{s.label}\t{s.size}\n".encode("utf-8", "surrogateescape"))
            h.update(b"--\n")
        return h.hexdigest()


def _check_out(out: Path, src: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"output {str(out)!r} is a file; OUT must be a folder (it is created if missing)")
    src_r, out_r = src.resolve(), out.resolve()
    if out_r == src_r or src_r in out_r.parents:
        raise ValueError(f"output {str(out)!r} is inside the source folder {str(src)!r}; write the shards elsewhere")


def _clear(out: Path) -> None:
    """What ``overwrite`` removes: the shards, their partial files and the metadata we write."""
    for path in [*out.glob("*.tar"), *out.glob("*.tar.partial"), out / INDEX_NAME, out / CLASSES_NAME, out / PLAN_NAME]:
        if path.is_file():
            path.unlink()


def _check_plan(out: Path, plan: dict[str, Any], overwrite: bool) -> bool:
    """Compare ``plan`` with what ``out`` holds. Returns whether ``out`` is a run of the same plan
    (resume); raises ``ValueError`` if it holds anything else and ``overwrite`` is off."""
    if not out.is_dir() or not any(out.iterdir()):
        return False
    if overwrite:
        _clear(out)
        return False
    fix = "use a new (or empty) OUT, or pass --overwrite to replace its shards"
    plan_path = out / PLAN_NAME
    if not plan_path.is_file():
        raise ValueError(f"output folder {str(out)!r} is not empty and was not written by `shards from-folder`; {fix}")
    try:
        old = json.loads(plan_path.read_text())
    except ValueError:
        raise ValueError(f"{str(plan_path)!r} is not valid JSON (the run that wrote it was cut off?); {fix}") from None
    args = ("source", "prefix", "seed", "max_count", "max_size")
    changed = [f"{a} {old.get(a)!r} there, {plan[a]!r} now" for a in args if old.get(a) != plan[a]]
    if changed:
        raise ValueError(f"{str(out)!r} holds shards of another from-folder run ({'; '.join(changed)}); {fix}")
    if old.get("format") != plan["format"] or old.get("digest") != plan["digest"]:
        raise ValueError(
            f"the files under {plan['source']!r} changed since {str(out)!r} was started "
            f"({old.get('num_files')} images then, {plan['num_files']} now); {fix}"
        )
    return True


def _write_json(path: Path, payload: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def _write_shard(path: Path, shard: list[_Sample], layout: _Layout, planned_size: int, advance) -> None:
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as f:
        writer = wds.TarWriter(f, encoder=False, mtime=MEMBER_MTIME)
        for sample in shard:
            data = (layout.src / sample.rel).read_bytes()
            if len(data) != sample.size:
                raise ValueError(
                    f"{sample.rel!r} under {str(layout.src)!r} changed size while the shards were written; "
                    "re-run with --overwrite"
                )
            ext = _MEMBER_EXT[os.path.splitext(sample.rel)[1].lower()]
            writer.write({"__key__": layout.key(sample), ext: data, **layout.metadata(sample)})
            advance(1)
        writer.close()
        f.flush()
        # on disk before the rename, so a complete-looking shard is complete after a power cut too
        os.fsync(f.fileno())
    if os.path.getsize(partial) != planned_size:  # the layout's size arithmetic is what resuming trusts
        raise RuntimeError(f"{partial} has {os.path.getsize(partial)} bytes, the plan says {planned_size}")
    os.replace(partial, path)


def progress_bar(enabled: bool, unit: str = "images"):
    """A rich progress bar on stderr counting `unit`; does nothing when not `enabled`."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
        TimeRemainingColumn(), console=Console(stderr=True), disable=not enabled,
    )


def shards_from_folder(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    max_count: int = 1000,
    max_size: int | None = None,
    seed: int = 0,
    prefix: str = "train",
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the images under ``src`` (ImageFolder tree or flat folder) as shards ``out/<prefix>-000000.tar, …``.

    Args:
        src: an ImageFolder tree (``src/<class>/**/<image>``) or a flat folder of unlabelled images
            (then samples have no ``.cls`` and label ``-1`` in their ``.json``).
        out: output folder, created if missing. A folder holding a cut-off run with the same arguments
            is resumed: complete shards are kept, the others written.
        max_count: samples per shard at most.
        max_size: bytes per shard file at most; ``None`` for no limit. A single sample bigger than this
            gets a shard of its own.
        seed: seeds the permutation that orders the samples across shards.
        prefix: shard file prefix.
        overwrite: replace the shards and metadata already in ``out`` instead of refusing.
        progress: show a progress bar on stderr.

    Returns:
        a summary: ``out``, ``shards``, ``samples``, ``classes``, ``bytes`` (of all shard files),
        ``written`` and ``kept`` (shards written by this call, complete ones found), ``seconds``.

    Raises:
        FileNotFoundError: ``src`` is missing. ValueError: ``src`` holds no image, bad limits, ``out``
        is a file or holds something other than this run (see ``overwrite``).
    """
    if max_count < 1:
        raise ValueError(f"--max-count must be >= 1, got {max_count}")
    if max_size is not None and max_size < 1:
        raise ValueError(f"--max-size must be >= 1 byte, got {max_size}")
    if not prefix or "/" in prefix or os.sep in prefix:
        raise ValueError(f"--prefix must be a non-empty file name prefix without '/', got {prefix!r}")
    start = time.perf_counter()
    src, out = Path(src), Path(out)
    _check_out(out, src)
    layout = _Layout(src, seed, max_count, max_size)
    plan = {
        "format": PLAN_FORMAT, "source": str(src.resolve()), "prefix": prefix, "seed": seed,
        "max_count": max_count, "max_size": max_size, "num_files": layout.num_samples,
        "num_shards": len(layout.shards), "digest": layout.digest(),
    }
    resuming = _check_plan(out, plan, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    if not resuming:
        _write_json(out / PLAN_NAME, plan)

    names = [f"{prefix}-{i:06d}.tar" for i in range(len(layout.shards))]
    written = kept = 0
    with progress_bar(progress) as bar:
        task = bar.add_task(f"shards from-folder → {out}", total=layout.num_samples)
        for name, shard, size in zip(names, layout.shards, layout.sizes):
            path = out / name
            if path.is_file() and path.stat().st_size == size:
                kept += 1
                bar.advance(task, len(shard))
                continue
            _write_shard(path, shard, layout, size, lambda n: bar.advance(task, n))
            written += 1

    classes = layout.classes
    _write_json(out / CLASSES_NAME, {name: i for i, name in enumerate(classes)})
    _write_json(out / INDEX_NAME, {
        "shards": [{"name": n, "count": len(s)} for n, s in zip(names, layout.shards)],
        "num_samples": layout.num_samples,
        "classes": classes,
        "num_classes": len(classes) or None,
        "from_folder": {k: plan[k] for k in ("source", "prefix", "seed", "max_count", "max_size")},
    })
    return {
        "out": str(out), "shards": len(names), "samples": layout.num_samples, "classes": len(classes),
        "bytes": sum(layout.sizes), "written": written, "kept": kept,
        "seconds": round(time.perf_counter() - start, 3),
    }
