"""A local copy of the Hugging Face mirror of the prompt-learning datasets.

The original download links of several datasets (and of CoOp's split files) are dead, so users now
fetch ``zhengli97/prompt_learning_dataset`` (a Hugging Face *model* repository kept by the PromptKD
authors; ``huggingface-cli download zhengli97/prompt_learning_dataset``). What this module is based
on, read through the search tools rather than guessed:

- the repository's README: it holds every dataset of the protocol except ImageNet, each with its
  ``split_zhou_*.json``;
- its file listing: one zip per dataset (``caltech-101.zip``, ``dtd.zip``, ``eurosat.zip``,
  ``fgvc_aircraft.zip``, ``food101.zip``, ``imagenet-adversarial.zip``, ``imagenet-rendition.zip``, ...);
- a public download script that unzips each archive into the data root and expects CoOp's folder
  names afterwards, e.g. ``food101.zip`` -> ``food-101/``, ``imagenetv2.zip`` -> ``imagenetv2/``.

So a downloaded copy is a folder of these archives; each extracts to the CoOp layout. The readers
take either form: an extracted folder is used as is, and an archive found in its place is extracted
once, next to it (``<name>.tar.gz`` copies of the same archives are accepted too).
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from specpl.data import DataError

log = logging.getLogger(__name__)

ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz")


def find_archive(root: Path, stem: str) -> Path | None:
    """The mirror archive ``root/<stem>.zip`` (or a tar.gz of it), if present."""
    for suffix in ARCHIVE_SUFFIXES:
        candidate = root / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def extract_archive(archive: Path, target: Path) -> Path:
    """Extract `archive` so that its dataset folder becomes `target`.

    The archive is unpacked into a temporary folder beside `target` and renamed into place, so an
    interrupted extraction leaves no half-filled dataset folder. A single top-level folder in the
    archive is taken as the dataset folder (the mirror's zips have one); otherwise the archive's
    root is. Members with absolute paths, ``..`` or links are refused.
    """
    if target.exists():
        raise DataError(f"cannot extract {archive}: {target} already exists")
    log.warning("extracting %s to %s (once; later runs use the folder)", archive, target)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.extracting-", dir=target.parent))
    try:
        try:
            if archive.suffix == ".zip":
                _extract_zip(archive, scratch)
            else:
                with tarfile.open(archive) as tar:
                    tar.extractall(scratch, filter="data")
        except (zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
            raise DataError(f"archive {archive} is damaged or incomplete ({exc}); download it again") from None
        entries = [entry for entry in scratch.iterdir() if entry.name != "__MACOSX"]
        content = entries[0] if len(entries) == 1 and entries[0].is_dir() else scratch
        os.replace(content, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # what is left of it (nothing when it became the target)
    return target


def _extract_zip(archive: Path, destination: Path) -> None:
    with zipfile.ZipFile(archive) as bundle:
        for member in bundle.infolist():
            parts = PurePosixPath(member.filename.replace("\\", "/")).parts
            if member.filename.startswith("/") or ".." in parts or (parts and ":" in parts[0]):
                raise DataError(f"archive {archive} has an unsafe member path {member.filename!r}")
            if stat.S_ISLNK(member.external_attr >> 16):
                raise DataError(f"archive {archive} has a symbolic link {member.filename!r}; links are not extracted")
        bundle.extractall(destination)
