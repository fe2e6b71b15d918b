"""Whether each band decomposer can load here, judged before a run starts and without loading it.

``auto`` is resolved by the library (`specpl.bands.resolve_decomposer`), which says what it would
pick and why. ``fft`` needs no weights. ``taef2`` needs a local folder with its two weight files.
The diffusers VAEs need the ``diffusers`` package and their weights in a local folder, in the
Hugging Face cache, or a reachable hub. A decomposer the app does not know is offered as "not
checked": the library still refuses it clearly when the run builds it.

In hosted mode a source must be a hub id: a server path would let a visitor read the server's files.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from app.messages import first_sentence
from app.runtime.backbones import hub_reachable
from specpl.bands import AUTO, DECOMPOSERS, DecomposerUnavailable, resolve_decomposer
from specpl.bands.auto import cached_model_folder
from specpl.bands.diffusers_vae import QWEN_VAE_ID, SD_VAE_ID, TAESD_ID, hub_offline, looks_local
from specpl.bands.taef2 import FILES as TAEF2_FILES
from specpl.config import DecomposerConfig

WEIGHT_FREE = "fft"
HUB_VAES = {"qwen-vae": QWEN_VAE_ID, "taesd": TAESD_ID, "sd-vae": SD_VAE_ID}


@dataclass(frozen=True)
class DecomposerStatus:
    usable: bool
    reason: str  # one sentence: what will be used, or why it cannot load

    @property
    def tag(self) -> str:
        return "ready" if self.usable else "can't load here"


def names() -> list[str]:
    return [AUTO, *DECOMPOSERS.names()]


def source_problem(source: str | None, hosted: bool) -> str | None:
    """Why a user-given source is refused (hosted mode: a server path), or None."""
    if source and hosted and looks_local(source):
        return f"a local folder ({source}) cannot be used on a shared server; give a Hugging Face hub id (org/name)"
    return None


def status(name: str, source: str | None = None, hosted: bool = False) -> DecomposerStatus:
    source = (source or "").strip() or None
    problem = source_problem(source, hosted)
    if problem:
        return DecomposerStatus(False, problem)
    if name == AUTO:
        try:
            concrete, reason = resolve_decomposer(DecomposerConfig(name=AUTO, source=source))
        except DecomposerUnavailable as exc:
            return DecomposerStatus(False, first_sentence(str(exc)))
        return DecomposerStatus(True, f"auto uses {reason}")
    if name == WEIGHT_FREE:
        return DecomposerStatus(True, "fft needs no weights.")
    if name == "taef2":
        if not source:
            return DecomposerStatus(
                False,
                "taef2 needs local weights: set the decomposer source (Advanced) to the folder holding "
                f"{' and '.join(TAEF2_FILES)}.",
            )
        missing = [file for file in TAEF2_FILES if not (Path(source).expanduser() / file).is_file()]
        if missing:
            return DecomposerStatus(False, f"taef2: the folder {source} lacks {', '.join(missing)}.")
        return DecomposerStatus(True, f"taef2 loads its weights from {source}.")
    if name in HUB_VAES:
        return _hub_vae_status(name, source or HUB_VAES[name])
    return DecomposerStatus(True, f"{name} is not checked before the run; it is loaded when the run starts.")


def _hub_vae_status(name: str, target: str) -> DecomposerStatus:
    if importlib.util.find_spec("diffusers") is None:
        return DecomposerStatus(False, f"{name} needs the diffusers package, which is not installed here.")
    if looks_local(target):
        folder = Path(target).expanduser()
        if (folder / "config.json").is_file():
            return DecomposerStatus(True, f"{name} loads from the local folder {folder}.")
        return DecomposerStatus(False, f"{name}: the folder {folder} holds no config.json of a saved model.")
    if cached_model_folder(target) is not None:
        return DecomposerStatus(True, f"{name}: {target} is in the Hugging Face cache.")
    if hub_offline():
        return DecomposerStatus(
            False,
            f"{name}: {target} is not in the Hugging Face cache and the app is offline (HF_HUB_OFFLINE); "
            "give a local folder as the decomposer source.",
        )
    if not hub_reachable():
        return DecomposerStatus(
            False,
            f"{name}: {target} is not in the Hugging Face cache and the hub can't be reached; "
            "give a local folder as the decomposer source.",
        )
    return DecomposerStatus(True, f"{name}: {target} is downloaded from the hub on first use.")


def dropdown_choices(source: str | None = None, hosted: bool = False) -> list[tuple[str, str]]:
    """(label, name) pairs, each label saying whether it can load here."""
    return [(f"{name} — {status(name, source, hosted).tag}", name) for name in names()]


def note(name: str, source: str | None = None, hosted: bool = False) -> str:
    state = status(name, source, hosted)
    return ("" if state.usable else "⚠️ ") + state.reason
