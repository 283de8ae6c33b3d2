"""Our USTAR writer produces archives that tarfile and webdataset read back exactly."""
from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from ssl_toolkit.data.ustar import UstarWriter, ustar_header


def test_tarfile_reads_members_back_exactly(tmp_path):
    path = tmp_path / "x.tar"
    samples = [
        {"__key__": f"ep{i:06d}_t{i:06d}", "png": bytes(range(i % 256)) * 3, "ram": bytes([i % 256]) * 128,
         "json": {"episode": i, "step": i}, "cls": i, "txt": "é"}
        for i in range(5)
    ]
    with open(path, "wb") as f:
        writer = UstarWriter(f, mtime=1234)
        for s in samples:
            writer.write(s)
        writer.close()
    with tarfile.open(path) as tar:
        members = tar.getmembers()
        assert [m.name for m in members[:5]] == [f"ep000000_t000000.{e}" for e in ("png", "ram", "json", "cls", "txt")]
        assert all(m.isreg() and m.mtime == 1234 and m.mode == 0o644 for m in members)
        assert tar.extractfile("ep000003_t000003.png").read() == bytes(range(3)) * 3
        assert tar.extractfile("ep000004_t000004.cls").read() == b"4"
    got = list(wds.WebDataset(str(path), shardshuffle=False))
    assert [g["__key__"] for g in got] == [s["__key__"] for s in samples]
    assert got[2]["ram"] == bytes([2]) * 128 and got[2]["txt"] == "é".encode()


def test_header_checksum_matches_tarfile():
    header = ustar_header("abc.png", 1000, mtime=7)
    info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")  # validates the checksum
    assert (info.name, info.size, info.mtime) == ("abc.png", 1000, 7)


def test_images_are_encoded_and_bad_values_refused(tmp_path):
    buf = io.BytesIO()
    writer = UstarWriter(buf)
    frame = np.arange(12, dtype=np.uint8).reshape(3, 4)
    writer.write({"__key__": "k", "png": frame})
    writer.close()
    buf.seek(0)
    with tarfile.open(fileobj=buf) as tar:
        assert np.array_equal(np.asarray(Image.open(tar.extractfile("k.png"))), frame)
    with pytest.raises(TypeError, match="cannot store"):
        UstarWriter(io.BytesIO()).write({"__key__": "k", "bin": object()})
    with pytest.raises(ValueError, match="longer than 100"):
        ustar_header("x" * 101, 1)
