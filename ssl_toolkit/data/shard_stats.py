"""Count and check webdataset shards (``ssl-toolkit shards stats``).

Reads every shard with :mod:`tarfile` (not webdataset's reader, which stops at the first bad member)
and groups members into samples the way webdataset does: consecutive members sharing a key (the name
up to the first dot of its base name). Counts shards, samples, labels and bytes, and reports each
problem by shard and key instead of raising: a truncated or corrupt tar (including one cut at a
header boundary, which :mod:`tarfile` reads as a shorter archive without complaint), an image PIL
cannot open and verify, a label that does not parse, a member whose extension the reader does not
know, a sample without an image.
"""
from __future__ import annotations

import io
import os
import tarfile
import warnings
from collections import Counter
from typing import Any

from PIL import Image, UnidentifiedImageError

from ssl_toolkit.data.shard_writer import progress_bar
from ssl_toolkit.data.shards import IMAGE_KEYS, UNLABELED, expand_shards, sample_label

# what our readers use (images, labels) and what our writers add alongside (Atari RAM, captions)
KNOWN_EXTENSIONS = (*IMAGE_KEYS, "cls", "json", "txt", "ram")


def _check_image(data: bytes, decode: bool) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DecompressionBombWarning and the like are not errors here
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
        if decode:  # verify() only parses headers; truncated pixel data shows when decoding
            with Image.open(io.BytesIO(data)) as image:
                image.load()


class _ShardScan:
    """One shard's counts and problems."""

    def __init__(self, url: str, decode: bool, verify: bool):
        self.url, self.decode, self.verify = url, decode, verify
        self.samples = 0
        self.image_bytes = 0
        self.labels: Counter[int] = Counter()
        self.problems: list[dict[str, Any]] = []

    def problem(self, key: str | None, error: str, member: str | None = None) -> None:
        self.problems.append({"shard": self.url, "key": key, "member": member, "error": error})

    def finish_sample(self, key: str, members: dict[str, bytes | None], image_bytes: int) -> None:
        self.samples += 1
        self.image_bytes += image_bytes
        images = [ext for ext in IMAGE_KEYS if ext in members]
        if not images:
            self.problem(key, f"no image member ({'/'.join(IMAGE_KEYS)}); it has {sorted(members)}")
        for ext in images:
            if members[ext] is None:  # not read (verify off)
                continue
            try:
                _check_image(members[ext], self.decode)
            except UnidentifiedImageError:
                self.problem(key, "undecodable image: PIL cannot identify its format", f"{key}.{ext}")
            except Exception as err:  # PIL raises many types for bad data
                self.problem(key, f"undecodable image: {type(err).__name__}: {err}", f"{key}.{ext}")
        try:
            label = sample_label({k: v for k, v in members.items() if k in ("cls", "json")})
        except (ValueError, TypeError, UnicodeDecodeError) as err:
            self.problem(key, f"unreadable label: {type(err).__name__}: {err}")
        else:
            self.labels[label] += 1

    def scan(self) -> None:
        key: str | None = None
        members: dict[str, bytes | None] = {}
        image_bytes = 0
        member_name = None
        try:
            with tarfile.open(self.url, "r:") as tar:
                for info in tar:
                    if not info.isreg():
                        continue
                    member_name = info.name
                    head, base = os.path.split(info.name)
                    stem, dot, ext = base.partition(".")
                    this_key = f"{head}/{stem}" if head else stem
                    if this_key != key:
                        if key is not None:
                            self.finish_sample(key, members, image_bytes)
                        key, members, image_bytes = this_key, {}, 0
                    if not dot or ext not in KNOWN_EXTENSIONS:
                        self.problem(key, f"unknown extension {ext!r} (known: {', '.join(KNOWN_EXTENSIONS)})", info.name)
                    if ext in members:
                        self.problem(key, f"duplicate member {info.name!r} in one sample", info.name)
                    # images are read only to verify them; their size is in the header
                    wanted = ext in ("cls", "json") or (ext in IMAGE_KEYS and self.verify)
                    members[ext] = tar.extractfile(info).read() if wanted else None
                    image_bytes += info.size if ext in IMAGE_KEYS else 0
                end = tar.offset
            # tarfile ends quietly at a header it cannot read once it is past the first one, so a tar
            # cut at a block boundary looks whole: a complete archive ends with a zero block
            with open(self.url, "rb") as f:
                f.seek(end)
                tail = f.read(tarfile.BLOCKSIZE)
            if len(tail) < tarfile.BLOCKSIZE or tail.count(0) != tarfile.BLOCKSIZE:
                raise tarfile.ReadError(f"no end-of-archive marker at byte {end} (truncated, or a corrupt header there)")
        except (tarfile.TarError, EOFError, OSError) as err:
            where = f"in or after member {member_name!r}" if member_name else "at the start"
            self.problem(key, f"unreadable tar {where}: {err}; samples after this point are not counted", member_name)
            return  # the sample being read is incomplete: not counted
        if key is not None:
            self.finish_sample(key, members, image_bytes)


def shard_stats(pattern: str | os.PathLike, *, verify: bool = True, decode: bool = False, progress: bool = False) -> dict[str, Any]:
    """Count the samples, labels and bytes of local shards and list their problems.

    Args:
        pattern: what :func:`~ssl_toolkit.data.shards.expand_shards` accepts (a folder, a ``.tar``, a
            brace or glob pattern).
        verify: open and ``verify()`` every image with PIL (reads all image bytes); ``False`` reads
            only the tar headers and labels.
        decode: also decode every image (catches truncated pixel data; slower).
        progress: show a progress bar over the shards on stderr.

    Returns:
        ``shards``, ``samples``, ``classes`` (distinct labels other than -1), ``unlabeled`` (samples
        with label -1), ``bytes`` (of the shard files), ``image_bytes`` (of the image members),
        ``class_counts`` (label → samples), ``per_shard`` (``shard``, ``samples``, ``bytes``,
        ``problems``) and ``problems``: one ``{"shard", "key", "member", "error"}`` per problem.
    """
    urls = expand_shards(pattern)
    remote = [u for u in urls if not os.path.isfile(u)]
    if remote:
        raise ValueError(f"shards stats reads local shard files only; {remote[0]!r} is not one")
    scans = []
    with progress_bar(progress, unit="shards") as bar:
        task = bar.add_task("shards stats", total=len(urls))
        for url in urls:
            scan = _ShardScan(url, decode=decode, verify=verify or decode)
            scan.scan()
            scans.append(scan)
            bar.advance(task)
    labels: Counter[int] = sum((s.labels for s in scans), Counter())
    return {
        "shards": len(scans),
        "samples": sum(s.samples for s in scans),
        "classes": len([c for c in labels if c != UNLABELED]),
        "unlabeled": labels.get(UNLABELED, 0),
        "bytes": sum(os.path.getsize(s.url) for s in scans),
        "image_bytes": sum(s.image_bytes for s in scans),
        "class_counts": {str(c): n for c, n in sorted(labels.items()) if c != UNLABELED},
        "per_shard": [
            {"shard": s.url, "samples": s.samples, "bytes": os.path.getsize(s.url), "problems": len(s.problems)}
            for s in scans
        ],
        "problems": [p for s in scans for p in s.problems],
    }


def format_stats(stats: dict[str, Any], max_problems: int = 50) -> str:
    """The human-readable report ``shards stats`` prints."""
    lines = [
        f"{stats['shards']} shards, {stats['samples']} samples, {stats['classes']} classes"
        + (f" (+{stats['unlabeled']} unlabeled)" if stats["unlabeled"] else "")
        + f", {stats['bytes']:,} bytes ({stats['image_bytes']:,} of images)",
    ]
    problems = stats["problems"]
    lines.append(f"{len(problems)} problem(s)" + (":" if problems else ""))
    for p in problems[:max_problems]:
        where = os.path.basename(p["shard"]) + (f" key {p['key']}" if p["key"] else "")
        lines.append(f"  {where}: {p['error']}")
    if len(problems) > max_problems:
        lines.append(f"  … and {len(problems) - max_problems} more (all of them in --output)")
    return "\n".join(lines)
