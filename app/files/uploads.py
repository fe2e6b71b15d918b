"""User data in: a zipped few-shot folder or a class-by-class builder, each kept per browser session.

Files are checked here only for what the app must refuse before writing (size, count, pixels,
unsafe archive entries, folder layout); decoding and the dataset rules themselves are the
library's (`specpl.data.read_fewshot_folder`), whose skipped-file list is shown as warnings.
"""

from __future__ import annotations

import secrets
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from PIL import Image

from app.files.archives import ArchiveFile, Extractor, UploadError, checked_members, open_zip
from app.runtime.settings import Limits
from specpl.data import IMAGE_SUFFIXES, DataError, read_fewshot_folder

SPLIT_FOLDERS = ("train", "test")
ARCHIVE_SUFFIXES = (".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar")
GALLERY_PER_CLASS = 3
MAX_CLASS_NAME = 100


@dataclass
class DatasetSummary:
    """What the Data tab shows about a dataset folder."""

    root: Path
    classnames: list[str]
    counts: dict[str, tuple[int, int]]  # class -> (train, test) before the shots cap
    warnings: list[str] = field(default_factory=list)
    gallery: list[tuple[str, str]] = field(default_factory=list)  # (image path, class)

    def markdown(self) -> str:
        train = sum(tr for tr, _ in self.counts.values())
        test = sum(te for _, te in self.counts.values())
        lines = [
            f"**{len(self.classnames)} classes**, {train} training and {test} test images.",
            "",
            "| class | train | test |",
            "|---|---|---|",
        ]
        lines += [f"| {name} | {tr} | {te} |" for name, (tr, te) in self.counts.items()]
        if self.warnings:
            lines += ["", f"**{len(self.warnings)} file(s) skipped:**"] + [f"- {w}" for w in self.warnings[:50]]
            if len(self.warnings) > 50:
                lines.append(f"- … and {len(self.warnings) - 50} more")
        return "\n".join(lines)


def image_problem(path: Path, limits: Limits) -> str | None:
    """Why `path` can't be used as an image (suffix, header, pixel count), or ``None``.

    Only the header is read; full decoding is left to the library, which lists failures.
    """
    problem = _suffix_problem(PurePosixPath(path.name))
    if problem:
        return problem
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
    except Image.DecompressionBombError:
        return "too many pixels to open safely (decompression bomb guard)"
    except (OSError, ValueError, SyntaxError) as exc:
        return f"not a readable image ({type(exc).__name__})"
    if width * height > limits.max_image_pixels:
        return f"{width}x{height} pixels is over the limit of {limits.max_image_pixels:,} pixels per image"
    return None


def split_usable(paths: list[Path], limits: Limits) -> tuple[list[Path], list[str]]:
    """(usable images, "name: reason" for each one that is not)."""
    usable, skipped = [], []
    for path in paths:
        problem = image_problem(path, limits)
        (skipped.append(f"{path.name}: {problem}") if problem else usable.append(path))
    return usable, skipped


def summarize_dataset(
    root: Path, split_ratio: float = 0.5, label: str | None = None, extra_warnings: list[str] | None = None
) -> DatasetSummary:
    """Read `root` with the library and describe it; `DataError` becomes `UploadError`."""
    label = label or root.name
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the skipped list is shown in the UI instead
            data = read_fewshot_folder(root, shots=None, split_ratio=split_ratio)
    except DataError as exc:
        raise UploadError(str(exc).replace(str(root), label)) from None
    counts = {name: [0, 0] for name in data.classnames}
    gallery: list[tuple[str, str]] = []
    for column, items in ((0, data.train), (1, data.test)):
        for item in items:
            name = data.classnames[item.label]
            counts[name][column] += 1
            if column == 0 and counts[name][0] <= GALLERY_PER_CLASS:
                gallery.append((str(item.path), name))
    skipped = [f"{_relative(s.path, root)}: {s.reason}" for s in data.skipped]
    return DatasetSummary(
        root, data.classnames, {k: (v[0], v[1]) for k, v in counts.items()}, (extra_warnings or []) + skipped, gallery
    )


def extract_dataset_zip(
    zip_path: Path, datasets_dir: Path, limits: Limits, label: str | None = None, split_ratio: float = 0.5
) -> DatasetSummary:
    """Unpack a zipped few-shot folder into a new folder under `datasets_dir`, whole or not at all.

    Accepts ``<class>/<image>`` or ``train|test/<class>/<image>``, optionally inside one wrapping
    folder. Files that don't fit the layout or the limits are skipped and listed.
    """
    label = label or zip_path.name
    archive = open_zip(zip_path, label, limits)
    with archive:
        members = checked_members(archive, label, limits, min_depth=2)
        files = [m for m in members if not m.is_folder]
        nested = [m for m in files if m.path.name.lower().endswith(ARCHIVE_SUFFIXES)]
        if nested:
            raise UploadError(
                f"{label} contains another archive ({nested[0].path}); archives inside the zip are not unpacked: "
                "zip the class folders themselves (<class>/<image> or train/<class>/<image>)"
            )
        split_layout = any(m.path.parts[0] == "train" and len(m.path.parts) == 3 for m in files)
        accepted, skipped, reasons = [], [], []
        for member in files:
            problem = _layout_problem(member.path, split_layout) or _suffix_problem(member.path)
            if problem:
                skipped.append(f"{member.path}: {problem}")
                reasons.append((member.path, problem))
            else:
                accepted.append(member)
        if len(accepted) > limits.max_images:
            raise UploadError(f"{label} holds {len(accepted)} images, over the limit of {limits.max_images}")
        if not accepted:
            raise UploadError(
                f"{label} has no images in class folders: {_main_reason(reasons)} "
                "(expected <class>/<image> or train/<class>/<image>)"
            )
        datasets_dir.mkdir(parents=True, exist_ok=True)
        dataset_id = secrets.token_hex(6)
        staging = datasets_dir / f".staging-{dataset_id}"
        try:
            extractor = Extractor(archive, label, limits)
            for member in accepted:
                destination = staging.joinpath(*member.path.parts)
                extractor.extract(member, destination)
                problem = image_problem(destination, limits)
                if problem:
                    destination.unlink()
                    skipped.append(f"{member.path}: {problem}")
            skipped += _dropped_classes(members, split_layout, staging)
            try:
                summary = summarize_dataset(staging, split_ratio, label, skipped)
            except UploadError as exc:
                reasons = f" (skipped: {'; '.join(skipped[:5])}{'; …' if len(skipped) > 5 else ''})" if skipped else ""
                raise UploadError(f"{exc}{reasons}") from None
            final = datasets_dir / dataset_id
            staging.rename(final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return _rebased(summary, staging, final)


def add_builder_class(builder_root: Path, class_name: str, image_paths: list[Path], limits: Limits) -> list[str]:
    """Add images under one class name to the session's builder folder; returns skipped files.

    Adding to an existing class appends. Raises `UploadError` for a bad name or no usable image.
    """
    folder_name = _class_folder_name(class_name)
    existing = sum(1 for p in builder_root.rglob("*") if p.is_file()) if builder_root.is_dir() else 0
    if existing + len(image_paths) > limits.max_images:
        raise UploadError(
            f"the builder would hold {existing + len(image_paths)} images, over the limit of {limits.max_images}"
        )
    usable, skipped = split_usable(image_paths, limits)
    if not usable:
        raise UploadError(
            f"no usable image for class {class_name.strip()!r}" + (f" ({'; '.join(skipped)})" if skipped else "")
        )
    target = builder_root / folder_name
    target.mkdir(parents=True, exist_ok=True)
    start = len(list(target.iterdir()))
    for index, path in enumerate(usable, start):
        shutil.copyfile(path, target / f"{index:05d}{path.suffix.lower()}")
    return skipped


def _class_folder_name(class_name: str) -> str:
    name = class_name.strip()
    if not name:
        raise UploadError("type a class name before adding images")
    if len(name) > MAX_CLASS_NAME:
        raise UploadError(f"class name is {len(name)} characters, over the limit of {MAX_CLASS_NAME}")
    if any(c in name for c in "/\\") or name.startswith(".") or any(ord(c) < 32 for c in name):
        raise UploadError(f"class name {name!r} may not contain '/', '\\', control characters or start with '.'")
    return "_".join(name.split())  # the library reads "_" back as a space


def _layout_problem(path: PurePosixPath, split_layout: bool) -> str | None:
    parts = path.parts
    if split_layout:
        if parts[0] not in SPLIT_FOLDERS:
            return "is outside train/ and test/ (ignored)"
        return None if len(parts) == 3 else "is not at train|test/<class>/<image>"
    if len(parts) == 1:
        return "is not inside a class folder"
    if len(parts) > 2:
        return "is nested too deep (expected <class>/<image>)"
    if len(parts[0]) > MAX_CLASS_NAME:
        return f"class folder name is over {MAX_CLASS_NAME} characters"
    return None


def _main_reason(reasons: list[tuple[PurePosixPath, str]]) -> str:
    """The commonest reason files were skipped, with one example, for an archive with no usable image."""
    counts: dict[str, list[PurePosixPath]] = {}
    for path, problem in reasons:
        counts.setdefault(problem.split(" (")[0], []).append(path)
    problem, paths = max(counts.items(), key=lambda item: len(item[1]))
    share = "every file" if len(paths) == len(reasons) else f"{len(paths)} of {len(reasons)} files"
    return f"{share} {problem if problem.startswith('is ') else 'is ' + problem} (e.g. {paths[0]})"


def _dropped_classes(members: list[ArchiveFile], split_layout: bool, staging: Path) -> list[str]:
    """A warning for each class folder in the archive that ends up with no image, so that no class
    disappears without a word (an empty folder, or one holding only files that were skipped)."""
    depth = 2 if split_layout else 1  # class folders sit at train/<class>/ or <class>/
    named = set()
    for member in members:
        parts = member.path.parts
        if split_layout and parts[0] != "train":
            continue
        if len(parts) > depth or (member.is_folder and len(parts) == depth):
            named.add(parts[depth - 1])
    root = staging / "train" if split_layout else staging
    kept = {p.name for p in root.iterdir() if p.is_dir()} if root.is_dir() else set()
    prefix = "train/" if split_layout else ""
    return [f"{prefix}{name}/: class folder with no usable image, left out" for name in sorted(named - kept)]


def _suffix_problem(path: PurePosixPath) -> str | None:
    suffix = path.suffix.lower()
    return None if suffix in IMAGE_SUFFIXES else f"not an image file (suffix {suffix or 'none'})"


def _relative(path: Path, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return Path(path).name


def _rebased(summary: DatasetSummary, old: Path, new: Path) -> DatasetSummary:
    """The summary with paths moved from the staging folder to the final one."""
    summary.root = new
    summary.gallery = [(str(new / Path(p).relative_to(old)), name) for p, name in summary.gallery]
    return summary
