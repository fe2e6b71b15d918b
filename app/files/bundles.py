"""Model bundles in and out of the app as zip files.

Export zips a run's ``model/`` folder (safetensors + config.json + model card). Import accepts only
those three file names, so a pickle (``.bin``, ``.pt``, ``.pkl``) is refused before anything is
written, then lets the library validate the result (`specpl.bundle.read_bundle`) and checks
that this installation knows the bundle's backbone and methods.
"""

from __future__ import annotations

import secrets
import shutil
import zipfile
from pathlib import Path

from app.files.archives import Extractor, UploadError, checked_members, open_zip
from app.runtime.settings import Limits
from specpl.backbone import available_models
from specpl.bundle import CONFIG_FILE, WEIGHTS_FILE, read_bundle
from specpl.io import atomic_write
from specpl.methods import BOOSTERS, HOSTS

CARD_FILE = "README.md"
BUNDLE_FILES = (WEIGHTS_FILE, CONFIG_FILE, CARD_FILE)


def export_bundle_zip(model_dir: Path, exports_dir: Path, stem: str) -> Path:
    """Zip the bundle in `model_dir` to ``exports_dir/<stem>.zip`` (written whole or not at all)."""
    present = [name for name in BUNDLE_FILES if (model_dir / name).is_file()]
    if WEIGHTS_FILE not in present or CONFIG_FILE not in present:
        raise UploadError(
            f"this run has no complete model bundle yet ({model_dir.name}/ lacks {WEIGHTS_FILE} or {CONFIG_FILE})"
        )
    target = exports_dir / f"{stem}.zip"

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name in present:
                archive.write(model_dir / name, arcname=f"model/{name}")

    atomic_write(target, write)
    return target


def import_bundle_zip(
    zip_path: Path, staging_parent: Path, limits: Limits, label: str | None = None
) -> tuple[Path, dict]:
    """Unpack and validate a bundle zip into a new folder under `staging_parent`.

    Returns (bundle folder, its config). The caller moves the folder into a run; on any problem
    the folder is removed and `UploadError` says which file and why.
    """
    label = label or zip_path.name
    archive = open_zip(zip_path, label, limits)
    with archive:
        members = [m for m in checked_members(archive, label, limits, min_depth=1) if not m.is_folder]
        for member in members:
            if len(member.path.parts) != 1 or member.path.name not in BUNDLE_FILES:
                raise UploadError(
                    f"{label}: unexpected file {str(member.path)!r}; a bundle holds only {', '.join(BUNDLE_FILES)} "
                    "(pickled weights are never loaded)"
                )
        staging = staging_parent / f".bundle-{secrets.token_hex(6)}"
        try:
            extractor = Extractor(archive, label, limits)
            for member in members:
                extractor.extract(member, staging / member.path.name)
            config = _validated_config(staging, label)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return staging, config


def _validated_config(bundle: Path, label: str) -> dict:
    try:
        _, config = read_bundle(bundle)
    except (FileNotFoundError, ValueError) as exc:
        raise UploadError(f"{label}: {str(exc).replace(str(bundle) + '/', '')}") from None
    backbone = config["backbone"].get("name", "") if isinstance(config["backbone"], dict) else ""
    method = config["method"] if isinstance(config["method"], dict) else {}
    if not backbone.startswith("hf-hub:") and backbone not in available_models():
        raise UploadError(f"{label}: config.json names backbone {backbone!r}, which this installation does not know")
    if method.get("host") not in HOSTS:
        raise UploadError(
            f"{label}: config.json names host method {method.get('host')!r}; available: {', '.join(HOSTS.names())}"
        )
    unknown = [name for name in method.get("boosters", []) if name not in BOOSTERS]
    if unknown:
        raise UploadError(
            f"{label}: config.json names booster(s) {', '.join(map(repr, unknown))}; "
            f"available: {', '.join(BOOSTERS.names())}"
        )
    if not isinstance(config["classnames"], list) or len(config["classnames"]) < 2:
        raise UploadError(f"{label}: config.json must list at least 2 class names")
    return config
