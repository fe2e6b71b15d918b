"""A run's model out of the app: a bundle built from a stopped run's last checkpoint, and a push of
a bundle (weights, config.json, model card) to the Hugging Face Hub with the user's own token.

The checkpoint bundle rebuilds the method from the run's own config.json (as the trainer recorded
it) over its backbone, loads the checkpoint's ``model.*`` tensors into it, and lets the model write
its bundle, so it loads like any finished run's; its config says which epoch and step it holds.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable

from specpl.backbone import Backbone
from specpl.bundle import CONFIG_FILE, load_tensors
from specpl.config import BackboneConfig, DataConfig, DecomposerConfig, MethodConfig, from_dict
from specpl.datasets import read_dataset
from specpl.factory import build_method

CHECKPOINT_BUNDLE = "checkpoint-model"  # beside model/, so a later finished model never mixes with it
_REPO_ID = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$|^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$"
)


class HubError(ValueError):
    """A push the app refuses or the Hub refused; one line for the UI, never the token."""


def checkpoint_bundle(run_dir: Path, load_backbone: Callable[[BackboneConfig], Backbone]) -> Path:
    """``run_dir/checkpoint-model``: the last checkpoint of a stopped run as a model bundle,
    rebuilt when the checkpoint is newer than it."""
    state = run_dir / "checkpoint" / "state.safetensors"
    record_path = run_dir / CONFIG_FILE
    if not state.is_file() or not record_path.is_file():
        raise FileNotFoundError(
            f"run {run_dir.name} has no saved checkpoint to export (it stopped before its first checkpoint)"
        )
    target = run_dir / CHECKPOINT_BUNDLE
    if (target / CONFIG_FILE).is_file() and (target / CONFIG_FILE).stat().st_mtime_ns >= state.stat().st_mtime_ns:
        return target
    record = json.loads(record_path.read_text(encoding="utf-8"))
    counters = json.loads((run_dir / "checkpoint" / "trainer_state.json").read_text(encoding="utf-8")).get(
        "counters", {}
    )
    data_config = from_dict(DataConfig, record["data"])
    classnames = read_dataset(data_config).classnames
    decomposer = from_dict(DecomposerConfig, record["decomposer"]) if record.get("decomposer") else None
    backbone = load_backbone(from_dict(BackboneConfig, record["backbone"]))
    method = from_dict(
        MethodConfig,
        {
            **record["method"],
            "options": record.get("resolved_method_options") or record["method"]["options"],
            "preset": record.get("preset") or record["method"].get("preset") or "default",
        },
    )
    model = build_method(method, backbone, classnames, record["template"], decomposer, dataset=data_config.dataset)
    tensors = load_tensors(state)
    model.load_learned_state_dict(
        {key[len("model.") :]: value for key, value in tensors.items() if key.startswith("model.")}
    )
    run = {
        "train": record.get("resolved_train"),
        "data": record["data"],
        "metrics": {},
        "decomposer_reason": record.get("decomposer_reason"),
        "checkpoint": {
            "epoch": counters.get("epoch"),
            "global_step": counters.get("global_step"),
            "note": "exported from a stopped run's last checkpoint; not a finished training",
        },
    }
    model.save_bundle(target, run)
    return target


def check_repo_id(repo_id: str) -> str:
    repo_id = (repo_id or "").strip()
    if not _REPO_ID.match(repo_id) or ".." in repo_id:
        raise HubError(
            f"{repo_id!r} is not a Hub repository id; use name or user/name (letters, digits, '-', '_', '.')"
        )
    return repo_id


def push_bundle(
    bundle_dir: Path,
    repo_id: str,
    token: str | None,
    private: bool = True,
    api_factory: Callable[..., Any] | None = None,
) -> str:
    """Create (or reuse) the model repo and upload the bundle's files; returns the repo's URL.
    The bundle's README.md is its model card. Errors name the repo and the Hub's reason, never
    the token."""
    repo_id = check_repo_id(repo_id)
    if not token:
        raise HubError("give a Hugging Face access token with write permission (or sign in with Hugging Face)")
    if api_factory is None:
        from huggingface_hub import HfApi as api_factory
    api = api_factory(token=token)
    try:
        url = api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(
            folder_path=str(bundle_dir),
            repo_id=str(getattr(url, "repo_id", None) or repo_id),
            repo_type="model",
            commit_message="Upload a SpecPL Studio model bundle",
            allow_patterns=["model.safetensors", "config.json", "README.md"],
        )
    except Exception as exc:  # noqa: BLE001 - any Hub failure becomes one line for the user
        message = str(exc).replace(token, "***").splitlines()[0] if str(exc) else type(exc).__name__
        raise HubError(f"the Hub refused the push to {repo_id}: {message}") from None
    return str(url)
