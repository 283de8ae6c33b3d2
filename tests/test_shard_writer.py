"""`shards from-folder` and `shards stats` on real image files: what the shards hold, how they are split,
determinism, resuming after a real SIGKILL, and stats on damaged shards."""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image
from torchvision.datasets import ImageFolder

from ssl_toolkit.cli import main
from ssl_toolkit.data.folder import list_image_folder
from ssl_toolkit.data.shard_stats import shard_stats
from ssl_toolkit.data.shard_writer import shards_from_folder
from ssl_toolkit.data.shards import count_samples, expand_shards, sample_label

EXE = Path(sys.executable).parent / "ssl-toolkit"
ROOT = Path(__file__).resolve().parents[1]
EXT = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".webp": "webp"}


def run(*args, check=True) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([*map(str, args)], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-3000:]}")
    return proc


def read_shards(out) -> list[tuple[str, str, dict[str, bytes]]]:
    """(shard name, key, {ext: bytes}) for every sample in shard order, read with plain tarfile."""
    samples = []
    for url in expand_shards(out):
        with tarfile.open(url) as tar:
            for member in tar:
                key, ext = member.name.split(".", 1)
                if not samples or samples[-1][1] != key:
                    samples.append((os.path.basename(url), key, {}))
                samples[-1][2][ext] = tar.extractfile(member).read()
    return samples


def tar_bytes(out) -> dict[str, bytes]:
    return {os.path.basename(u): Path(u).read_bytes() for u in expand_shards(out)}


@pytest.fixture(scope="module")
def image_folder(jpeg_folder, tmp_path_factory) -> Path:
    """The session's 3 × 8 JPEGs plus a PNG with a dotted name in a nested folder and a WebP: 26 images."""
    root = tmp_path_factory.mktemp("images") / "src"
    shutil.copytree(jpeg_folder, root)
    rng = np.random.default_rng(1)
    (root / "cat" / "nested").mkdir()
    Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(root / "cat" / "nested" / "photo.v2.png")
    Image.fromarray(rng.integers(0, 255, (36, 48, 3), dtype=np.uint8)).save(root / "dog" / "extra.webp")
    return root


@pytest.fixture(scope="module")
def written(image_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("written") / "shards"
    summary = shards_from_folder(image_folder, out, max_count=10, seed=0, progress=False)
    return summary, out


def test_shards_hold_the_original_bytes_labels_and_paths(image_folder, written):
    summary, out = written
    reference = ImageFolder(str(image_folder))  # torchvision's own order and class indices
    assert len(reference.samples) == 26
    assert json.loads((out / "classes.json").read_text()) == reference.class_to_idx == {"bird": 0, "cat": 1, "dog": 2}
    samples = read_shards(out)
    assert len(samples) == 26 and summary["samples"] == 26 and summary["shards"] == 3
    keys = [key for _, key, _ in samples]
    assert len(set(keys)) == 26 and all("." not in k for k in keys)
    for _, key, members in samples:
        path, label = reference.samples[int(key[1:])]  # key s<i> is ImageFolder's sample i
        ext = EXT[Path(path).suffix.lower()]
        assert set(members) == {ext, "cls", "json"}
        assert members[ext] == Path(path).read_bytes()  # not re-encoded
        assert members["cls"] == str(label).encode()
        rel = Path(path).relative_to(image_folder).as_posix()
        assert json.loads(members["json"]) == {"path": rel, "class": reference.classes[label], "label": label}
    assert {ext for _, _, m in samples for ext in m} == {"jpg", "png", "webp", "cls", "json"}

    index = json.loads((out / "index.json").read_text())
    assert [s["name"] for s in index["shards"]] == sorted(tar_bytes(out))
    assert [s["count"] for s in index["shards"]] == [10, 10, 6]
    assert index["num_samples"] == 26 and index["classes"] == reference.classes and index["num_classes"] == 3
    assert count_samples(expand_shards(out)) == 26

    # webdataset's own reader groups the members into the same samples and labels
    pipeline = wds.DataPipeline(wds.SimpleShardList(expand_shards(out)), wds.tarfile_to_samples())
    read = {s["__key__"]: sample_label(s) for s in pipeline}
    assert read == {key: int(reference.samples[int(key[1:])][1]) for key in keys}


def test_stats_agree_with_the_folder(image_folder, written):
    _, out = written
    files, classes = list_image_folder(image_folder)
    stats = shard_stats(out)
    assert stats["problems"] == []
    assert (stats["shards"], stats["samples"], stats["classes"], stats["unlabeled"]) == (3, 26, 3, 0)
    assert stats["image_bytes"] == sum(os.path.getsize(p) for p, _ in files)
    assert stats["bytes"] == sum(len(b) for b in tar_bytes(out).values())
    assert stats["class_counts"] == {"0": 8, "1": 9, "2": 9}
    # header-only scan: the same counts without reading the images
    quick = shard_stats(str(out / "train-{000000..000002}.tar"), verify=False)
    assert {k: quick[k] for k in ("samples", "classes", "bytes", "image_bytes")} == {
        k: stats[k] for k in ("samples", "classes", "bytes", "image_bytes")
    }


def test_order_is_a_function_of_the_seed(image_folder, written, tmp_path):
    _, out = written
    shards_from_folder(image_folder, tmp_path / "again", max_count=10, seed=0, progress=False)
    assert tar_bytes(tmp_path / "again") == tar_bytes(out)  # byte for byte
    shards_from_folder(image_folder, tmp_path / "other", max_count=10, seed=1, progress=False)
    keys = [k for _, k, _ in read_shards(out)]
    other = [k for _, k, _ in read_shards(tmp_path / "other")]
    assert sorted(other) == sorted(keys) and other != keys
    assert keys != sorted(keys)  # shuffled, not in folder order


def test_flat_folder_gives_unlabeled_samples(jpeg_folder, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for path in sorted((jpeg_folder / "cat").iterdir())[:5]:
        shutil.copy(path, flat / path.name)
    shards_from_folder(flat, tmp_path / "out", progress=False)
    samples = read_shards(tmp_path / "out")
    assert len(samples) == 5 and all(set(m) == {"jpg", "json"} for _, _, m in samples)
    assert all(json.loads(m["json"])["label"] == -1 and json.loads(m["json"])["class"] is None for _, _, m in samples)
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert index["classes"] == [] and index["num_classes"] is None
    assert json.loads((tmp_path / "out" / "classes.json").read_text()) == {}
    stats = shard_stats(tmp_path / "out")
    assert (stats["samples"], stats["classes"], stats["unlabeled"], stats["problems"]) == (5, 0, 5, [])


def footprint(members: dict[str, bytes]) -> int:
    """Bytes a sample takes in a tar: a 512-byte header per member, data padded to 512."""
    return sum(512 + -(-len(v) // 512) * 512 for v in members.values())


@pytest.mark.parametrize("max_count, max_size", [(7, None), (1000, 30_000), (6, 40_000), (1000, 1)])
def test_max_count_and_max_size_split(image_folder, tmp_path, max_count, max_size):
    summary = shards_from_folder(image_folder, tmp_path, max_count=max_count, max_size=max_size, progress=False)
    shards: dict[str, list[dict[str, bytes]]] = {}
    for name, _, members in read_shards(tmp_path):
        shards.setdefault(name, []).append(members)
    groups = list(shards.values())
    sizes = [os.path.getsize(u) for u in expand_shards(tmp_path)]
    assert sum(map(len, groups)) == 26 and summary["shards"] == len(groups) and summary["bytes"] == sum(sizes)
    if max_size == 1:  # nothing fits: one sample per shard
        assert [len(g) for g in groups] == [1] * 26
        return
    if max_size is None:
        assert [len(g) for g in groups] == [7, 7, 7, 5]
        return
    for group, size, following in zip(groups, sizes, groups[1:] + [None]):
        assert len(group) <= max_count and size <= max_size
        # the tar is its members plus two zero blocks, padded to 10240-byte records
        assert size == -(-(sum(map(footprint, group)) + 1024) // 10240) * 10240
        if following and len(group) < max_count:  # cut by size: the next sample would not have fitted
            grown = sum(map(footprint, group)) + footprint(following[0]) + 1024
            assert -(-grown // 10240) * 10240 > max_size
    assert len(groups) > 1


KILL_AFTER_SAMPLES = """
import os, signal, sys
import webdataset as wds
from ssl_toolkit.data.shard_writer import shards_from_folder

write, written = wds.TarWriter.write, []
def write_then_die(self, sample):
    if len(written) == int(sys.argv[3]):
        os.kill(os.getpid(), signal.SIGKILL)  # hard kill in the middle of a shard
    written.append(sample["__key__"])
    return write(self, sample)
wds.TarWriter.write = write_then_die
shards_from_folder(sys.argv[1], sys.argv[2], max_count=5, seed=3, progress=False)
"""


def test_resume_after_sigkill_keeps_finished_shards_and_matches_an_uninterrupted_run(image_folder, tmp_path):
    out = tmp_path / "out"
    killed = run(sys.executable, "-c", KILL_AFTER_SAMPLES, image_folder, out, 12, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert sorted(p.name for p in out.glob("*.tar")) == ["train-000000.tar", "train-000001.tar"]
    assert (out / "train-000002.tar.partial").exists() and not (out / "index.json").exists()
    finished = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.tar")}

    # resume through the real entry point, same arguments
    run(EXE, "shards", "from-folder", image_folder, out, "--max-count", 5, "--seed", 3, "--quiet",
        "--output", tmp_path / "summary.json")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["shards"], summary["kept"], summary["written"], summary["samples"]) == (6, 2, 4, 26)
    for name, stat in finished.items():  # not rewritten
        assert ((out / name).stat().st_ino, (out / name).stat().st_mtime_ns) == stat
    assert not list(out.glob("*.partial"))

    shards_from_folder(image_folder, tmp_path / "reference", max_count=5, seed=3, progress=False)
    assert tar_bytes(out) == tar_bytes(tmp_path / "reference")
    for name in ("index.json", "classes.json"):
        assert json.loads((out / name).read_text()) == json.loads((tmp_path / "reference" / name).read_text())

    # a finished run re-run is a no-op; other arguments in the same OUT are refused, --overwrite replaces
    assert shards_from_folder(image_folder, out, max_count=5, seed=3, progress=False)["written"] == 0
    with pytest.raises(ValueError, match=r"seed 3 there, 4 now.*--overwrite"):
        shards_from_folder(image_folder, out, max_count=5, seed=4, progress=False)
    summary = shards_from_folder(image_folder, out, max_count=20, seed=4, overwrite=True, progress=False)
    assert summary["written"] == 2 and len(expand_shards(out)) == 2


def test_bad_input_is_one_line_and_exit_2(image_folder, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("x")
    (tmp_path / "changed").mkdir()
    shutil.copytree(image_folder, tmp_path / "changed" / "src")
    shards_from_folder(tmp_path / "changed" / "src", tmp_path / "changed" / "out", max_count=5, progress=False)
    (tmp_path / "changed" / "src" / "dog" / "extra.webp").unlink()
    cases = {
        "does not exist": [tmp_path / "missing", tmp_path / "o1"],
        "holds no images": [tmp_path / "empty", tmp_path / "o2"],
        "is a file": [image_folder, tmp_path / "a_file"],
        "inside the source folder": [image_folder, image_folder / "shards"],
        "not written by `shards from-folder`": [image_folder, tmp_path / "foreign"],
        "changed since": [tmp_path / "changed" / "src", tmp_path / "changed" / "out", "--max-count", 5],
        "--max-count must be >= 1": [image_folder, tmp_path / "o3", "--max-count", 0],
    }
    for expected, args in cases.items():
        assert main(["shards", "from-folder", *map(str, args), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("ssl-toolkit shards: error: ") and expected in err and err.count("\n") == 1, err
    assert main(["shards", "stats", str(tmp_path / "missing.tar")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o1").exists() and not (image_folder / "shards").exists()


def rewrite_member(path: Path, name: str, data: bytes) -> None:
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for member, old in members:
            new = data if member.name == name else old
            member.size = len(new)
            tar.addfile(member, io.BytesIO(new))


def test_stats_reports_damaged_shards_by_shard_and_key(image_folder, tmp_path):
    out = tmp_path / "shards"
    shards_from_folder(image_folder, out, max_count=5, seed=0, progress=False)
    urls = [Path(u) for u in expand_shards(out)]
    samples = read_shards(out)
    keys = {name: [k for n, k, _ in samples if n == name] for name in {n for n, _, _ in samples}}
    jpeg = [(n, k) for n, k, m in samples if "jpg" in m]

    # shard 0: an image that is not an image; shard 1: a truncated JPEG (only decoding notices)
    bad_image, truncated_image = jpeg[0], next(s for s in jpeg if s[0] == urls[1].name)
    rewrite_member(out / bad_image[0], f"{bad_image[1]}.jpg", b"this is not a jpeg")
    data = dict(samples[[k for _, k, _ in samples].index(truncated_image[1])][2])["jpg"]
    rewrite_member(out / truncated_image[0], f"{truncated_image[1]}.jpg", data[: len(data) // 2])
    # shard 2: a member with an extension no reader knows
    with tarfile.open(urls[2], "a") as tar:
        info = tarfile.TarInfo(f"{keys[urls[2].name][-1]}.xyz")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    # shard 3: cut in the middle of its third sample's image data; shard 4: cut at a header boundary
    with tarfile.open(urls[3]) as tar:
        members = tar.getmembers()
    cut_image = next(m for m in members[6:] if m.name.endswith((".jpg", ".png", ".webp")))
    urls[3].write_bytes(urls[3].read_bytes()[: cut_image.offset_data + 100])
    with tarfile.open(urls[4]) as tar:
        boundary = tar.getmembers()[3].offset  # the header of the second sample's first member
    urls[4].write_bytes(urls[4].read_bytes()[:boundary])

    stats = shard_stats(out, decode=True)
    found = {(Path(p["shard"]).name, p["key"]): p["error"] for p in stats["problems"]}
    assert set(found) == {
        bad_image, truncated_image, (urls[2].name, keys[urls[2].name][-1]),
        (urls[3].name, cut_image.name.split(".")[0]), (urls[4].name, keys[urls[4].name][0]),
    }, found
    assert "undecodable image" in found[bad_image] and "truncated" in found[truncated_image]
    assert "unknown extension 'xyz'" in found[(urls[2].name, keys[urls[2].name][-1])]
    assert all("unreadable tar" in found[(u.name, k)] for u, k in [
        (urls[3], cut_image.name.split(".")[0]), (urls[4], keys[urls[4].name][0])])
    # samples before the one being read at a cut are counted; that one (it may lack members) and the rest are not
    assert stats["samples"] == 26 - (5 - 2) - (5 - 0) and stats["shards"] == 6
    # without decoding, the truncated JPEG passes PIL's verify()
    assert truncated_image not in {(Path(p["shard"]).name, p["key"]) for p in shard_stats(out)["problems"]}

    # the real entry point: report on stdout, everything in --output, exit 1
    proc = run(EXE, "shards", "stats", out, "--decode", "--quiet", "--output", tmp_path / "stats.json", check=False)
    assert proc.returncode == 1, proc.stderr
    assert f"{bad_image[0]} key {bad_image[1]}: undecodable image" in proc.stdout
    assert json.loads((tmp_path / "stats.json").read_text()) == stats
