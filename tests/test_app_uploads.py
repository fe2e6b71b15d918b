"""Upload fuzz: malformed dataset and bundle zips each get a clear message, and nothing is ever
written outside the app's data directory (nor left half-written inside it)."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import stat
import zipfile
from pathlib import Path
from typing import Callable

import pytest
import torch
from PIL import Image

from app.files.archives import UploadError
from app.files.bundles import import_bundle_zip
from app.files.uploads import add_builder_class, extract_dataset_zip, summarize_dataset
from app.runtime.settings import Limits
from specpl.bundle import write_bundle

LIMITS = Limits()
Entry = tuple[str | zipfile.ZipInfo, bytes]


def png(size: tuple[int, int] = (8, 8), colour: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (colour, 40, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


def special(name: str, mode: int, data: bytes = b"target") -> Entry:
    info = zipfile.ZipInfo(name)
    info.external_attr = mode << 16
    return info, data


def two_classes(extra: list[Entry] = (), per_class: int = 2) -> list[Entry]:
    return [(f"{name}/{i}.png", png(colour=i * 30)) for name in ("cat", "dog") for i in range(per_class)] + list(extra)


def write_zip(path: Path, entries: list[Entry], compression: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return path


def encrypted_zip(path: Path) -> Path:
    """A zip whose entries claim to be encrypted (flag bit 0 in local and central headers)."""
    raw = bytearray(write_zip(path, two_classes()).read_bytes())
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = 0
        while (start := raw.find(signature, start)) >= 0:
            raw[start + offset] |= 0x1
            start += 4
    path.write_bytes(bytes(raw))
    return path


def corrupt_stream_zip(path: Path) -> Path:
    """Valid headers, but the deflated bytes of one entry are garbage (fails its CRC/inflate)."""
    write_zip(path, two_classes([("dog/big.png", png((64, 64)) * 20)]), compression=zipfile.ZIP_DEFLATED)
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("dog/big.png")
    raw = bytearray(path.read_bytes())
    data_start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for i in range(data_start + 5, data_start + min(info.compress_size - 5, 200)):
        raw[i] ^= 0xA5
    path.write_bytes(bytes(raw))
    return path


def unsupported_method_zip(path: Path) -> Path:
    write_zip(path, two_classes())
    raw = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        start = raw.find(signature)
        raw[start + offset : start + offset + 2] = (99).to_bytes(2, "little")  # compression method 99
    path.write_bytes(bytes(raw))
    return path


def truncated_image() -> bytes:
    return png((16, 16))[:60]  # the header survives, the pixels don't


REJECTED: list[tuple[str, Callable[[Path], Path], str, Limits]] = [
    ("plain text", lambda p: (p.write_text("hello"), p)[1], "upload.zip is not a zip archive", LIMITS),
    ("empty file", lambda p: (p.write_bytes(b""), p)[1], "upload.zip is not a zip archive", LIMITS),
    ("png renamed .zip", lambda p: (p.write_bytes(png()), p)[1], "upload.zip is not a zip archive", LIMITS),
    (
        "truncated zip",
        lambda p: (p.write_bytes(write_zip(p, two_classes()).read_bytes()[:-30]), p)[1],
        "upload.zip is not a",
        LIMITS,
    ),
    (
        "dot-dot",
        lambda p: write_zip(p, two_classes([("../evil.png", png())])),
        "entry '../evil.png' is unsafe because its path climbs out of the archive",
        LIMITS,
    ),
    (
        "inner dot-dot",
        lambda p: write_zip(p, two_classes([("cat/../../evil.png", png())])),
        "climbs out of the archive with '..'",
        LIMITS,
    ),
    (
        "absolute",
        lambda p: write_zip(p, two_classes([("/tmp/evil.png", png())])),
        "entry '/tmp/evil.png' is unsafe because it has an absolute path",
        LIMITS,
    ),
    ("drive letter", lambda p: write_zip(p, two_classes([("C:/evil.png", png())])), "it has an absolute path", LIMITS),
    (
        "backslashes",
        lambda p: write_zip(p, two_classes([("..\\..\\evil.png", png())])),
        "its name contains a backslash",
        LIMITS,
    ),
    (
        "symlink",
        lambda p: write_zip(p, two_classes([special("cat/link.png", stat.S_IFLNK | 0o777, b"/etc/passwd")])),
        "entry 'cat/link.png' is unsafe because it is a symbolic link",
        LIMITS,
    ),
    (
        "symlink dir",
        lambda p: write_zip(p, two_classes([special("bird", stat.S_IFLNK | 0o777, b"/")])),
        "it is a symbolic link",
        LIMITS,
    ),
    (
        "char device",
        lambda p: write_zip(p, two_classes([special("cat/dev.png", stat.S_IFCHR | 0o666)])),
        "it is not a regular file or folder",
        LIMITS,
    ),
    (
        "fifo",
        lambda p: write_zip(p, two_classes([special("cat/pipe.png", stat.S_IFIFO | 0o666)])),
        "it is not a regular file or folder",
        LIMITS,
    ),
    (
        "control chars",
        lambda p: write_zip(p, two_classes([("cat/a\x01.png", png())])),
        "its name contains control characters",
        LIMITS,
    ),
    ("encrypted", encrypted_zip, "is unsafe because it is encrypted", LIMITS),
    (
        "duplicate",
        lambda p: write_zip(p, two_classes([("cat/0.png", png())])),
        "entry 'cat/0.png' appears twice",
        LIMITS,
    ),
    (
        "duplicate by case",
        lambda p: write_zip(p, two_classes([("CAT/0.PNG", png())])),
        "entries 'cat/0.png' and 'CAT/0.PNG' differ only in upper and lower case, which most disks (Windows, macOS) "
        "cannot keep apart; rename one (class folders such as Cat/ and cat/ must differ by more than case)",
        LIMITS,
    ),
    (
        "over upload size",
        lambda p: write_zip(p, two_classes()),
        "over the 0 MB upload limit",
        dataclasses.replace(LIMITS, max_upload_bytes=100),
    ),
    (
        "zip bomb",
        lambda p: write_zip(p, two_classes([("cat/zeros.png", bytes(3_000_000))]), zipfile.ZIP_DEFLATED),
        "would expand to 3 MB, over the 1 MB limit",
        dataclasses.replace(LIMITS, max_extracted_bytes=1024 * 1024),
    ),
    (
        "too many entries",
        lambda p: write_zip(p, two_classes(per_class=6)),
        "has 12 entries, over the limit of 10",
        dataclasses.replace(LIMITS, max_archive_entries=10),
    ),
    (
        "too many images",
        lambda p: write_zip(p, two_classes(per_class=4)),
        "holds 8 images, over the limit of 5",
        dataclasses.replace(LIMITS, max_images=5),
    ),
    ("empty zip", lambda p: write_zip(p, []), "upload.zip contains no files", LIMITS),
    (
        "only OS junk",
        lambda p: write_zip(p, [("__MACOSX/cat/._0.png", b"x"), (".DS_Store", b"x"), ("cat/.DS_Store", b"x")]),
        "contains no files",
        LIMITS,
    ),
    ("only folders", lambda p: write_zip(p, [("cat/", b""), ("dog/", b"")]), "contains no files", LIMITS),
    (
        "no images",
        lambda p: write_zip(p, [("cat/a.txt", b"x"), ("dog/b.csv", b"y")]),
        "has no images in class folders",
        LIMITS,
    ),
    (
        "images at top level",
        lambda p: write_zip(p, [("a.png", png()), ("b.png", png())]),
        "has no images in class folders",
        LIMITS,
    ),
    (
        "nested too deep",
        lambda p: write_zip(p, [("a/b/c/d.png", png()), ("a/b/e/f.png", png())]),
        "has no images in class folders",
        LIMITS,
    ),
    (
        "one class",
        lambda p: write_zip(p, [("cat/0.png", png()), ("cat/1.png", png())]),
        "upload.zip has one class (cat); classification needs at least 2",
        LIMITS,
    ),
    (
        "split with one class",
        lambda p: write_zip(p, [("train/cat/0.png", png()), ("test/cat/0.png", png())]),
        "upload.zip/train has one class (cat)",
        LIMITS,
    ),
    (
        "all corrupt in a class",
        lambda p: write_zip(p, [("cat/0.png", png()), ("dog/0.jpg", b"not really a jpeg")]),
        "dog has no readable images",
        LIMITS,
    ),
    (
        "truncated images in a class",
        lambda p: write_zip(p, [("cat/0.png", png()), ("dog/0.png", truncated_image())]),
        "dog has no readable images",
        LIMITS,
    ),
    (
        "all over the pixel limit",
        lambda p: write_zip(p, [("cat/0.png", png((200, 200))), ("dog/0.png", png((200, 200)))]),
        "cat has no readable images (skipped: cat/0.png: 200x200 pixels is over the limit of 1,000",
        dataclasses.replace(LIMITS, max_image_pixels=1000),
    ),
    ("corrupt deflate stream", corrupt_stream_zip, "entry 'dog/big.png' could not be read", LIMITS),
    ("unsupported compression", unsupported_method_zip, "could not be read", LIMITS),
]


def files_under(root: Path) -> set[Path]:
    return {Path(folder) / name for folder, _, names in os.walk(root) for name in names}


@pytest.fixture
def sandbox(tmp_path: Path) -> tuple[Path, Path]:
    """(an upload folder, the app's data dir); the test checks both for stray writes."""
    (tmp_path / "upload").mkdir()
    return tmp_path / "upload", tmp_path / "data"


@pytest.mark.filterwarnings("ignore:Duplicate name")  # zipfile warns while writing the duplicate case
@pytest.mark.parametrize("case, make, message, limits", REJECTED, ids=[c[0] for c in REJECTED])
def test_malformed_dataset_zip_is_rejected_with_its_reason(sandbox, case, make, message, limits):
    upload_dir, data_dir = sandbox
    zip_path = make(upload_dir / "upload.zip")
    outside_before = files_under(upload_dir.parent)
    with pytest.raises(UploadError) as error:
        extract_dataset_zip(zip_path, data_dir / "datasets", limits, label="upload.zip")
    assert message in str(error.value)
    assert files_under(upload_dir.parent) == outside_before  # nothing written anywhere, data dir included
    assert not (data_dir / "datasets").exists() or not any((data_dir / "datasets").iterdir())


SKIPPED: list[tuple[str, Entry, str]] = [
    ("text file", ("cat/notes.txt", b"hi"), "cat/notes.txt: not an image file (suffix .txt)"),
    ("no suffix", ("dog/README", b"hi"), "dog/README: not an image file (suffix none)"),
    (
        "corrupt jpeg",
        ("cat/broken.jpg", b"\xff\xd8garbage"),
        "cat/broken.jpg: not a readable image (UnidentifiedImageError)",
    ),
    ("truncated png", ("dog/cut.png", truncated_image()), "dog/cut.png: unreadable image"),
    (
        "too many pixels",
        ("cat/huge.png", png((200, 200))),
        "cat/huge.png: 200x200 pixels is over the limit of 1,000 pixels per image",
    ),
    ("top-level file", ("loose.png", png()), "loose.png: is not inside a class folder"),
    ("nested file", ("cat/sub/deep.png", png()), "cat/sub/deep.png: is nested too deep"),
]


@pytest.mark.parametrize("case, entry, warning", SKIPPED, ids=[c[0] for c in SKIPPED])
def test_bad_files_are_skipped_and_listed(sandbox, case, entry, warning):
    upload_dir, data_dir = sandbox
    limits = dataclasses.replace(LIMITS, max_image_pixels=1000)
    summary = extract_dataset_zip(
        write_zip(upload_dir / "upload.zip", two_classes([entry])), data_dir / "datasets", limits
    )
    assert summary.classnames == ["cat", "dog"] and summary.counts == {"cat": (1, 1), "dog": (1, 1)}
    assert any(w.startswith(warning) for w in summary.warnings), summary.warnings
    assert summary.root.parent == data_dir / "datasets" and files_under(upload_dir) == {upload_dir / "upload.zip"}


def test_a_wrapping_folder_and_split_layout_are_understood(sandbox):
    upload_dir, data_dir = sandbox
    entries = [
        (f"My Photos/{split}/{name}/{i}.png", png())
        for split in ("train", "test")
        for name in ("cat", "golden_retriever")
        for i in range(3)
    ]
    summary = extract_dataset_zip(
        write_zip(upload_dir / "upload.zip", entries + [("My Photos/notes/x.png", png())]),
        data_dir / "datasets",
        LIMITS,
    )
    assert summary.classnames == ["cat", "golden retriever"]
    assert summary.counts == {"cat": (3, 3), "golden retriever": (3, 3)}
    assert summary.warnings == ["notes/x.png: is outside train/ and test/ (ignored)"]
    assert "**2 classes**, 6 training and 6 test images." in summary.markdown()


@pytest.mark.parametrize(
    "name, message",
    [
        ("", "type a class name"),
        ("a/b", "may not contain '/'"),
        (".hidden", "start with '.'"),
        ("x" * 101, "over the limit of 100"),
    ],
)
def test_builder_rejects_bad_class_names(tmp_path, name, message):
    image = tmp_path / "a.png"
    image.write_bytes(png())
    with pytest.raises(UploadError, match=message):
        add_builder_class(tmp_path / "builder", name, [image], LIMITS)
    assert not (tmp_path / "builder").exists()


def test_builder_collects_classes_and_skips_bad_images(tmp_path):
    good, bad = tmp_path / "a.png", tmp_path / "b.jpg"
    good.write_bytes(png())
    bad.write_bytes(b"nope")
    builder = tmp_path / "builder"
    assert add_builder_class(builder, "tabby cat", [good, bad], LIMITS) == [
        "b.jpg: not a readable image (UnidentifiedImageError)"
    ]
    add_builder_class(builder, "dog", [good, good], LIMITS)
    with pytest.raises(UploadError, match="no usable image for class 'fox'"):
        add_builder_class(builder, "fox", [bad], LIMITS)
    summary = summarize_dataset(builder, split_ratio=0.5)
    assert summary.classnames == ["dog", "tabby cat"]


def bundle_zip(path: Path, tmp: Path, change: Callable[[dict], None] | None = None, extra: list[Entry] = ()) -> Path:
    config = {
        "backbone": {"name": "specpl-tiny", "pretrained": None},
        "method": {"host": "coop", "boosters": []},
        "classnames": ["cat", "dog"],
    }
    if change:
        change(config)
    write_bundle(tmp / "model", {"w": torch.zeros(2)}, config, "# card\n")
    entries = [(f"model/{f.name}", f.read_bytes()) for f in sorted((tmp / "model").iterdir())]
    return write_zip(path, entries + list(extra))


BAD_BUNDLES = [
    (
        "pickle weights",
        lambda p, t: bundle_zip(p, t, extra=[("model/pytorch_model.bin", b"\x80\x04pickle")]),
        "unexpected file 'pytorch_model.bin'",
    ),
    (
        "python file",
        lambda p, t: bundle_zip(p, t, extra=[("model/evil.py", b"import os")]),
        "(pickled weights are never loaded)",
    ),
    (
        "no config",
        lambda p, t: write_zip(p, [("model.safetensors", b"x")]),
        "config.json is missing: not a SpecPL model bundle",
    ),
    (
        "config not json",
        lambda p, t: write_zip(p, [("config.json", b"{oops"), ("model.safetensors", b"x")]),
        "config.json is not valid JSON",
    ),
    (
        "wrong format",
        lambda p, t: write_zip(
            p, [("config.json", json.dumps({"format": "other"}).encode()), ("model.safetensors", b"x")]
        ),
        "has format 'other'",
    ),
    (
        "weights not safetensors",
        lambda p, t: write_zip(
            p,
            [
                (
                    "config.json",
                    json.dumps({"format": "specpl-bundle/1", "backbone": {}, "method": {}, "classnames": []}).encode(),
                ),
                ("model.safetensors", b"\x80\x04pickle"),
            ],
        ),
        "model.safetensors is not a valid safetensors file",
    ),
    (
        "unknown host",
        lambda p, t: bundle_zip(p, t, lambda c: c["method"].update(host="magic")),
        "names host method 'magic'",
    ),
    (
        "unknown booster",
        lambda p, t: bundle_zip(p, t, lambda c: c["method"].update(boosters=["turbo"])),
        "names booster(s) 'turbo'",
    ),
    (
        "unknown backbone",
        lambda p, t: bundle_zip(p, t, lambda c: c["backbone"].update(name="ViT-Q-99")),
        "names backbone 'ViT-Q-99'",
    ),
    (
        "one class",
        lambda p, t: bundle_zip(p, t, lambda c: c.update(classnames=["cat"])),
        "must list at least 2 class names",
    ),
    ("traversal", lambda p, t: write_zip(p, [("../config.json", b"{}")]), "climbs out of the archive"),
]


@pytest.mark.parametrize("case, make, message", BAD_BUNDLES, ids=[c[0] for c in BAD_BUNDLES])
def test_bad_bundle_import_is_refused(tmp_path, case, make, message):
    (tmp_path / "work").mkdir()
    staging_parent = tmp_path / "data" / "imports"
    staging_parent.mkdir(parents=True)
    zip_path = make(tmp_path / "bundle.zip", tmp_path / "work")
    with pytest.raises(UploadError) as error:
        import_bundle_zip(zip_path, staging_parent, LIMITS)
    assert message in str(error.value)
    assert not any(staging_parent.iterdir())  # the half-imported folder is gone


def test_good_bundle_imports(tmp_path):
    (tmp_path / "work").mkdir()
    bundle, config = import_bundle_zip(bundle_zip(tmp_path / "bundle.zip", tmp_path / "work"), tmp_path, LIMITS)
    assert sorted(p.name for p in bundle.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert config["classnames"] == ["cat", "dog"]


@pytest.mark.parametrize(
    "entries, message",
    [
        (
            [("a/b/c/d.png", png()), ("a/b/e/f.png", png())],
            "upload.zip has no images in class folders: every file is nested too deep (e.g. b/c/d.png)",
        ),
        (
            [("a.png", png()), ("b.png", png())],
            "upload.zip has no images in class folders: every file is not inside a class folder (e.g. a.png)",
        ),
        (
            [("cat/a.txt", b"x"), ("dog/b.csv", b"y")],
            "upload.zip has no images in class folders: every file is not an image file (e.g. cat/a.txt)",
        ),
    ],
    ids=["too deep", "top level", "no images"],
)
def test_an_archive_without_usable_images_names_the_real_cause(sandbox, entries, message):
    upload_dir, data_dir = sandbox
    with pytest.raises(UploadError) as error:
        extract_dataset_zip(
            write_zip(upload_dir / "upload.zip", entries), data_dir / "datasets", LIMITS, label="upload.zip"
        )
    assert str(error.value).startswith(message)


def test_a_class_folder_that_ends_up_empty_is_reported_not_dropped_silently(sandbox):
    upload_dir, data_dir = sandbox
    entries = two_classes([("bird/", b""), ("fish/notes.txt", b"x")])
    summary = extract_dataset_zip(write_zip(upload_dir / "upload.zip", entries), data_dir / "datasets", LIMITS)
    assert summary.classnames == ["cat", "dog"]
    assert "bird/: class folder with no usable image, left out" in summary.warnings
    assert "fish/: class folder with no usable image, left out" in summary.warnings
    split = (
        [(f"train/{n}/0.png", png()) for n in ("cat", "dog")]
        + [(f"test/{n}/0.png", png()) for n in ("cat", "dog")]
        + [("train/owl/", b"")]
    )
    summary = extract_dataset_zip(write_zip(upload_dir / "split.zip", split), data_dir / "datasets", LIMITS)
    assert summary.warnings == ["train/owl/: class folder with no usable image, left out"]
