"""Reading user zip archives safely: every entry is checked before a byte is written.

Rejected outright (the whole archive): not a zip, over the size or entry limits, a declared
uncompressed size over the zip-bomb guard, encrypted entries, absolute paths, ``..`` components,
backslashes, control characters, symbolic links and other special files, duplicate names. Junk
that operating systems add (``__MACOSX/``, ``.DS_Store``, hidden files) is ignored. A single folder
wrapping everything is stripped, so zipping a folder or its contents gives the same result.
"""
from __future__ import annotations

import re
import shutil
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from app.settings import MB, Limits

JUNK_NAMES = {"__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini"}
_DRIVE = re.compile(r"^[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class UploadError(ValueError):
    """An upload cannot be used; the message names the file and the reason, ready for the UI."""


@dataclass(frozen=True)
class ArchiveFile:
    """One regular file in a checked archive: its path after stripping a wrapping folder."""

    path: PurePosixPath
    info: zipfile.ZipInfo


def _entry_problem(name: str, info: zipfile.ZipInfo) -> str | None:
    """Why an entry makes the archive unsafe, or ``None``."""
    if _CONTROL.search(name):
        return "its name contains control characters"
    if "\\" in name:
        return "its name contains a backslash (use a zip tool that writes '/' separators)"
    if name.startswith("/") or _DRIVE.match(name):
        return "it has an absolute path"
    if ".." in PurePosixPath(name).parts:
        return "its path climbs out of the archive with '..'"
    if info.flag_bits & 0x1:
        return "it is encrypted"
    kind = stat.S_IFMT(info.external_attr >> 16)  # Unix file type; 0 when the zip tool wrote none
    if kind == stat.S_IFLNK:
        return "it is a symbolic link"
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        return "it is not a regular file or folder"
    return None


def _is_junk(path: PurePosixPath) -> bool:
    return any(part in JUNK_NAMES or part.startswith(".") for part in path.parts)


def _strip_wrapping_folder(files: list[ArchiveFile], min_depth: int) -> list[ArchiveFile]:
    """Drop one folder that wraps every file, when the files keep at least `min_depth` parts."""
    tops = {f.path.parts[0] for f in files}
    if len(tops) == 1 and all(len(f.path.parts) > min_depth for f in files):
        return [ArchiveFile(PurePosixPath(*f.path.parts[1:]), f.info) for f in files]
    return files


def checked_members(archive: zipfile.ZipFile, label: str, limits: Limits, min_depth: int) -> list[ArchiveFile]:
    """The archive's regular files, after every safety check; raises `UploadError`."""
    infos = archive.infolist()
    if len(infos) > limits.max_archive_entries:
        raise UploadError(f"{label} has {len(infos)} entries, over the limit of {limits.max_archive_entries}")
    declared = sum(info.file_size for info in infos)
    if declared > limits.max_extracted_bytes:
        raise UploadError(
            f"{label} would expand to {declared / MB:.0f} MB, over the {limits.max_extracted_bytes / MB:.0f} MB limit "
            "for extracted data"
        )
    seen: set[str] = set()
    files: list[ArchiveFile] = []
    for info in infos:
        problem = _entry_problem(info.filename, info)
        if problem:
            raise UploadError(f"{label} was rejected: entry {info.filename!r} is unsafe because {problem}")
        path = PurePosixPath(info.filename)
        key = str(path).casefold()
        if key in seen:
            raise UploadError(f"{label} was rejected: entry {info.filename!r} appears twice")
        seen.add(key)
        if info.is_dir() or _is_junk(path) or not path.parts:
            continue
        files.append(ArchiveFile(path, info))
    if not files:
        raise UploadError(f"{label} contains no files")
    return _strip_wrapping_folder(files, min_depth)


def open_zip(path: Path, label: str, limits: Limits) -> zipfile.ZipFile:
    """Open an uploaded zip after the size check; raises `UploadError` for anything else."""
    size = path.stat().st_size
    if size > limits.max_upload_bytes:
        raise UploadError(f"{label} is {size / MB:.1f} MB, over the {limits.max_upload_bytes / MB:.0f} MB upload limit")
    if not zipfile.is_zipfile(path):
        raise UploadError(f"{label} is not a zip archive")
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as exc:
        raise UploadError(f"{label} is not a readable zip archive ({exc})") from None


def extract_file(archive: zipfile.ZipFile, member: ArchiveFile, destination: Path, label: str) -> None:
    """Copy one checked member to `destination` (which the caller placed inside its staging dir)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        with archive.open(member.info) as source, open(destination, "wb") as target:
            shutil.copyfileobj(source, target, 1 * MB)
    except (zipfile.BadZipFile, zlib.error, OSError, ValueError, NotImplementedError, EOFError, RuntimeError) as exc:
        destination.unlink(missing_ok=True)
        raise UploadError(f"{label}: entry {member.info.filename!r} could not be read ({exc})") from None
