"""Zip bombs, lying archives and nested archives: each is refused with its real reason, and the
bytes ever present under the data directory stay within a small bound (counted while extracting,
not only after the clean-up)."""

from __future__ import annotations

import io
import os
import struct
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from app.files import archives
from app.files.archives import CHUNK_BYTES, UploadError
from app.files.uploads import extract_dataset_zip
from app.runtime.settings import MB, Limits

LIMITS = Limits()
BOMB_BYTES = 40 * MB  # zeros: deflate packs them about 1000x


def png(colour: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (colour, 40, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


def dataset_zip(path: Path, extra: list[tuple[str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in ("cat", "dog"):
            for i in range(2):
                archive.writestr(f"{name}/{i}.png", png(i * 40))
        for name, data in extra:
            archive.writestr(name, data)
    return path


def declare_size(path: Path, entry: str, size: int) -> Path:
    """Rewrite `entry`'s uncompressed size in both its local and central headers (a lying archive)."""
    raw = bytearray(path.read_bytes())
    name = entry.encode()
    for signature, size_offset, name_offset in ((b"PK\x03\x04", 22, 30), (b"PK\x01\x02", 24, 46)):
        start = 0
        while (start := raw.find(signature, start)) >= 0:
            if raw[start + name_offset : start + name_offset + len(name)] == name:
                raw[start + size_offset : start + size_offset + 4] = struct.pack("<I", size)
            start += 4
    path.write_bytes(bytes(raw))
    return path


def bytes_under(root: Path) -> int:
    return sum(os.path.getsize(Path(folder) / name) for folder, _, names in os.walk(root) for name in names)


@pytest.fixture
def peak(monkeypatch, tmp_path):
    """The most bytes ever under the data dir while extracting: sampled before each chunk is written."""
    data_dir = tmp_path / "data"
    seen = [0]
    check = archives.Extractor._check

    def sampled(self, *args):
        seen[0] = max(seen[0], bytes_under(data_dir))
        return check(self, *args)

    monkeypatch.setattr(archives.Extractor, "_check", sampled)
    return data_dir, seen


def refuse(zip_path: Path, data_dir: Path, limits: Limits = LIMITS) -> str:
    with pytest.raises(UploadError) as error:
        extract_dataset_zip(zip_path, data_dir / "datasets", limits, label="upload.zip")
    assert bytes_under(data_dir) == 0  # the staging folder is gone
    return str(error.value)


def test_a_high_ratio_entry_is_refused_before_a_byte_is_written(tmp_path, peak):
    data_dir, seen = peak
    path = dataset_zip(tmp_path / "bomb.zip", [("cat/zeros.png", bytes(BOMB_BYTES))])
    assert path.stat().st_size < 100_000  # a tiny archive ...
    message = refuse(path, data_dir)
    assert (
        "entry 'cat/zeros.png' would expand" in message
        and "over the 100x compression-ratio limit (a zip bomb)" in message
    )
    assert seen[0] == 0  # ... refused from its headers: nothing was extracted at all


def test_an_archive_that_declares_small_sizes_is_stopped_by_the_bytes_it_really_writes(tmp_path, peak):
    data_dir, seen = peak
    declared = 300_000  # 300 KB of "image" at a modest ratio, really 40 MB of zeros
    path = declare_size(
        dataset_zip(tmp_path / "liar.zip", [("cat/zeros.png", bytes(BOMB_BYTES))]), "cat/zeros.png", declared
    )
    with zipfile.ZipFile(path) as archive:
        assert archive.getinfo("cat/zeros.png").file_size == declared  # zipfile believes the lie
    message = refuse(path, data_dir)
    assert message == (
        "upload.zip was rejected: entry 'cat/zeros.png' holds more data than the 300,000 bytes "
        "the archive declares for it (its sizes are false)"
    )
    assert 0 < seen[0] <= declared + 4 * 1024  # the four real images and at most the declared bytes; never the 40 MB


def test_the_ratio_cap_is_enforced_on_real_bytes_when_sizes_lie_within_it(tmp_path, peak):
    """Declared ratio under the cap, real ratio far over it: the stream is cut at the cap."""
    data_dir, seen = peak
    limits = Limits(max_compression_ratio=20, ratio_free_bytes=64 * 1024)
    path = dataset_zip(tmp_path / "liar.zip", [("cat/zeros.png", bytes(BOMB_BYTES))])
    with zipfile.ZipFile(path) as archive:
        compressed = archive.getinfo("cat/zeros.png").compress_size
    declare_size(path, "cat/zeros.png", compressed * 15)  # claims 15x, under the 20x cap
    message = refuse(path, data_dir, limits)
    assert "holds more data than" in message  # the smaller bound, its declared size, is hit first
    assert seen[0] <= compressed * 15 + 4 * 1024


def test_sizes_that_lie_low_under_the_extraction_limit_are_caught_on_the_first_chunk(tmp_path, peak):
    data_dir, seen = peak
    limits = Limits(max_extracted_bytes=250_000, max_compression_ratio=1_000_000)
    entries = [(f"cat/big{i}.png", os.urandom(100_000)) for i in range(4)]
    assert "would expand to 0 MB, over the 0 MB limit" in refuse(
        dataset_zip(tmp_path / "many.zip", entries), data_dir, limits
    )  # declared: up front

    path = dataset_zip(tmp_path / "liar-total.zip", entries)
    for i in range(4):
        declare_size(path, f"cat/big{i}.png", 1)  # every size lies low, so the declared total passes
    assert "entry 'cat/big0.png' holds more data than the 1 bytes the archive declares" in refuse(
        path, data_dir, limits
    )
    assert seen[0] <= 4 * 1024  # only the real images: the first chunk of the liar was never written


def test_a_nested_zip_is_refused_by_name_not_as_missing_images(tmp_path, peak):
    data_dir, seen = peak
    inner = dataset_zip(tmp_path / "inner.zip", []).read_bytes()
    message = refuse(dataset_zip(tmp_path / "outer.zip", [("cat/more-cats.zip", inner)]), data_dir)
    assert message.startswith(
        "upload.zip contains another archive (cat/more-cats.zip); archives inside the zip are not unpacked"
    )
    only_nested = tmp_path / "only.zip"
    with zipfile.ZipFile(only_nested, "w") as archive:
        archive.writestr("photos.zip", inner)
    assert "contains another archive (photos.zip)" in refuse(only_nested, data_dir)
    assert seen[0] == 0


def test_a_chunk_is_never_written_past_a_limit(tmp_path, peak):
    """The check runs before each chunk is written: a refused entry leaves at most its bound."""
    data_dir, seen = peak
    declared = CHUNK_BYTES + 10
    path = declare_size(
        dataset_zip(tmp_path / "liar.zip", [("dog/zeros.png", bytes(5 * MB))]), "dog/zeros.png", declared
    )
    refuse(path, data_dir)
    assert seen[0] <= declared + 4 * 1024
