"""Reading user zip archives safely: every entry is checked before a byte is written.

Rejected outright (the whole archive): not a zip, over the size or entry limits, a declared
uncompressed size over the extraction limit or a declared compression ratio over the zip-bomb cap,
encrypted entries, absolute paths, ``..`` components, backslashes, control characters, symbolic
links and other special files, duplicate names. Junk that operating systems add (``__MACOSX/``,
``.DS_Store``, hidden files) is ignored. A single folder wrapping everything is stripped, so
zipping a folder or its contents gives the same result.

Declared sizes are only ever a reason to refuse early, never a bound: `Extractor` counts the bytes
it actually writes and stops the moment an entry passes its compression-ratio cap or its declared
size, or the archive passes the extraction limit, so a zip bomb writes at most one small chunk.
"""

from __future__ import annotations

import copy
import re
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from app.runtime.settings import MB, Limits

JUNK_NAMES = {"__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini"}
_DRIVE = re.compile(r"^[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
CHUNK_BYTES = 64 * 1024  # read and checked before it is written, so no limit is ever passed on disk
UNBOUNDED = 1 << 62


class UploadError(ValueError):
    """An upload cannot be used; the message names the file and the reason, ready for the UI."""


@dataclass(frozen=True)
class ArchiveFile:
    """One regular file in a checked archive: its path after stripping a wrapping folder."""

    path: PurePosixPath
    info: zipfile.ZipInfo

    @property
    def is_folder(self) -> bool:
        return self.info.is_dir()

    def ratio_cap(self, limits: Limits, archive_bytes: int) -> int:
        """The most this entry may expand to. The compressed size is declared too, so it counts
        for no more than the whole archive's real size."""
        compressed = min(self.info.compress_size, archive_bytes)
        return max(limits.ratio_free_bytes, compressed * limits.max_compression_ratio)


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


def _archive_size(archive: zipfile.ZipFile) -> int:
    """The archive's real size on disk, the one size in it that cannot lie."""
    return Path(archive.filename).stat().st_size if archive.filename else 0


def _strip_wrapping_folder(files: list[ArchiveFile], min_depth: int) -> list[ArchiveFile]:
    """Drop one folder that wraps every file, when the files keep at least `min_depth` parts."""
    tops = {f.path.parts[0] for f in files}
    if len(tops) == 1 and all(len(f.path.parts) > min_depth for f in files):
        return [ArchiveFile(PurePosixPath(*f.path.parts[1:]), f.info) for f in files]
    return files


def checked_members(archive: zipfile.ZipFile, label: str, limits: Limits, min_depth: int) -> list[ArchiveFile]:
    """The archive's regular files, after every safety check; raises `UploadError`. Folder entries
    come back too (names ending in "/"), so that an empty folder can be reported."""
    infos = archive.infolist()
    if len(infos) > limits.max_archive_entries:
        raise UploadError(f"{label} has {len(infos)} entries, over the limit of {limits.max_archive_entries}")
    declared = sum(info.file_size for info in infos)
    if declared > limits.max_extracted_bytes:
        raise UploadError(
            f"{label} would expand to {declared / MB:.0f} MB, over the {limits.max_extracted_bytes / MB:.0f} MB limit "
            "for extracted data"
        )
    archive_bytes = _archive_size(archive)
    seen: dict[str, str] = {}  # case-folded name -> the entry's own name
    files: list[ArchiveFile] = []
    folders: list[ArchiveFile] = []
    for info in infos:
        problem = _entry_problem(info.filename, info)
        if problem:
            raise UploadError(f"{label} was rejected: entry {info.filename!r} is unsafe because {problem}")
        path = PurePosixPath(info.filename)
        key = str(path).casefold()
        if key in seen and seen[key] != str(path):
            raise UploadError(
                f"{label} was rejected: entries {seen[key]!r} and {info.filename!r} differ only in upper and lower "
                "case, which most disks (Windows, macOS) cannot keep apart; rename one (class folders such as "
                "Cat/ and cat/ must differ by more than case)"
            )
        if key in seen:
            raise UploadError(f"{label} was rejected: entry {info.filename!r} appears twice")
        seen[key] = str(path)
        if _is_junk(path) or not path.parts:
            continue
        member = ArchiveFile(path, info)
        if info.is_dir():
            folders.append(member)
            continue
        if info.file_size > member.ratio_cap(limits, archive_bytes):
            raise UploadError(
                f"{label} was rejected: entry {info.filename!r} would expand "
                f"{info.file_size / max(1, info.compress_size):,.0f} times "
                f"(to {info.file_size / MB:,.1f} MB), over the {limits.max_compression_ratio}x "
                "compression-ratio limit (a zip bomb)"
            )
        files.append(member)
    if not files:
        raise UploadError(f"{label} contains no files")
    stripped = _strip_wrapping_folder(files, min_depth)
    if stripped is not files:
        folders = [ArchiveFile(PurePosixPath(*f.path.parts[1:]), f.info) for f in folders if len(f.path.parts) > 1]
    return stripped + folders


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


class Extractor:
    """Writes checked members of one archive, counting the bytes it really writes.

    An entry is refused the moment its output would pass its own declared size (the archive lies),
    its compression-ratio cap (a zip bomb), or the archive's extraction limit; the partial file is
    removed and the caller removes its staging folder. zipfile stops reading at the declared size,
    so each entry is opened with that bound lifted: what the data really holds is what is counted.
    """

    def __init__(self, archive: zipfile.ZipFile, label: str, limits: Limits) -> None:
        self.archive = archive
        self.label = label
        self.limits = limits
        self.archive_bytes = _archive_size(archive)
        self.written = 0

    def extract(self, member: ArchiveFile, destination: Path) -> None:
        """Copy one checked member to `destination` (which the caller placed inside its staging dir)."""
        name = member.info.filename
        unbounded = copy.copy(member.info)
        unbounded.file_size = UNBOUNDED  # zipfile then reads to the real end of the data; `_check` bounds it
        destination.parent.mkdir(parents=True, exist_ok=True)
        entry_written = 0
        try:
            with self.archive.open(unbounded) as source, open(destination, "wb") as target:
                while chunk := source.read(CHUNK_BYTES):
                    entry_written += len(chunk)
                    self._check(name, member, entry_written, len(chunk))
                    self.written += len(chunk)
                    target.write(chunk)
            if entry_written != member.info.file_size:
                raise UploadError(
                    f"{self.label} was rejected: entry {name!r} holds {entry_written:,} bytes "
                    f"but the archive declares {member.info.file_size:,}"
                )
        except UploadError:
            destination.unlink(missing_ok=True)
            raise
        except (
            zipfile.BadZipFile,
            zlib.error,
            OSError,
            ValueError,
            NotImplementedError,
            EOFError,
            RuntimeError,
        ) as exc:
            destination.unlink(missing_ok=True)
            raise UploadError(f"{self.label}: entry {name!r} could not be read ({exc})") from None

    def _check(self, name: str, member: ArchiveFile, entry_written: int, chunk_bytes: int) -> None:
        """Refuse before the chunk that would pass a limit is written."""
        if entry_written > member.info.file_size:
            raise UploadError(
                f"{self.label} was rejected: entry {name!r} holds more data than the {member.info.file_size:,} bytes "
                "the archive declares for it (its sizes are false)"
            )
        if entry_written > member.ratio_cap(self.limits, self.archive_bytes):
            raise UploadError(
                f"{self.label} was rejected: entry {name!r} expands past the {self.limits.max_compression_ratio}x "
                "compression-ratio limit (a zip bomb)"
            )
        if self.written + chunk_bytes > self.limits.max_extracted_bytes:
            raise UploadError(
                f"{self.label} was rejected: it expands past the "
                f"{self.limits.max_extracted_bytes / MB:.0f} MB limit for extracted data"
            )
