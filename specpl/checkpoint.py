"""The resume checkpoint (``checkpoint/``), without pickle: the method's tensors and the states
the selection keeps, the optimizer state flattened into safetensors, RNG states and counters in
JSON; swapped in whole, so a stop at any moment leaves the last complete one. The exported model is
a bundle (`specpl.bundle`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from specpl.bundle import load_tensors, save_tensors, swap_in
from specpl.io import atomic_write_text


def save_resume_state(
    directory: Path,
    model_state: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    counters: dict[str, Any],
    kept_states: dict[str, dict[str, torch.Tensor]] | None = None,
) -> None:
    """Everything needed to continue a run exactly where it stopped; `kept_states` are the model
    states a run that selects on validation keeps besides the current one, by name ("best",
    "initial"), each stored under its name as a prefix."""
    tensors = {f"model.{k}": v for k, v in model_state.items()}
    for name, state in (kept_states or {}).items():
        tensors.update({f"{name}.{k}": v for k, v in state.items()})
    optim_state = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in optim_state["state"].items():
        for name, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"optim.{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():  # the counterfactual permutation is drawn on the device
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{index}"] = state
    state = {"counters": counters, "param_groups": optim_state["param_groups"], "optim_scalars": scalars}
    staging = directory.with_name(f".{directory.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_tensors(staging / "state.safetensors", tensors)
    atomic_write_text(staging / "trainer_state.json", json.dumps(state, indent=2) + "\n")
    swap_in(staging, directory)


KEPT_STATES = ("best", "initial")  # the selection's states a checkpoint holds besides the model's


def load_resume_state(
    directory: Path, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, dict[str, torch.Tensor]]]:
    """Restore the optimizer and RNG in place; return (model tensors, counters, kept states by name)."""
    tensors = load_tensors(directory / "state.safetensors")
    state = json.loads((directory / "trainer_state.json").read_text(encoding="utf-8"))
    optim_state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            optim_state.setdefault(int(index), {})[name] = value
    for index, entry in state["optim_scalars"].items():
        optim_state.setdefault(int(index), {}).update(entry)
    optimizer.load_state_dict({"state": optim_state, "param_groups": state["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    cuda_states = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    model_state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    kept = {
        name: {k[len(name) + 1 :]: v for k, v in tensors.items() if k.startswith(f"{name}.")} for name in KEPT_STATES
    }
    return model_state, state["counters"], kept


def checkpoint_step(directory: Path) -> int | None:
    """The optimizer step the checkpoint in `directory` continues from; None when there is none."""
    try:
        state = json.loads((directory / "trainer_state.json").read_text(encoding="utf-8"))
        return int(state["counters"]["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
