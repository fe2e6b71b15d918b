"""The training worker: ``python -m app.runtime.worker RUN_DIR`` trains one run in a fresh process.

`app.runtime.runners.ProcessRunner` starts it; the job manager (`app.runtime.jobs`) is the only
writer of the run's ``job.json`` and writes what to train in ``request.json``. The worker reports
how it ended in ``outcome.json``, written atomically, so the runner can tell a clean end (finished,
cancelled, or an error it could name) from a crash or a kill (`read_outcome`).
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

from app.messages import first_sentence

REQUEST_FILE = "request.json"  # what to train: {"config": the run config, "resume": bool}
OUTCOME_FILE = "outcome.json"  # how it ended: {"status": ..., "cause": ...}


def describe_failure(exc: BaseException) -> str:
    """One line for the UI: what went wrong, with out-of-memory named as such."""
    import torch

    from specpl.backbone import BackboneUnavailable

    if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower():
        return f"out of GPU memory: {str(exc).strip().splitlines()[0][:300]}"  # keep the sizes it names
    message = first_sentence(str(exc)) or type(exc).__name__
    if isinstance(exc, MemoryError):
        return f"out of memory: {message if str(exc) else 'the machine ran out of RAM'}"
    if isinstance(exc, BackboneUnavailable):
        return f"backbone unavailable: {message}"
    if isinstance(exc, (ValueError, KeyError)):  # DataError, UnknownNameError and bad options
        return message
    return f"{type(exc).__name__}: {message}"


def write_outcome(run_dir: Path, status: str, cause: str | None = None) -> None:
    from specpl.io import atomic_write_text

    atomic_write_text(run_dir / OUTCOME_FILE, json.dumps({"status": status, "cause": cause}) + "\n")


def read_outcome(run_dir: Path) -> tuple[str, str | None] | None:
    """The worker's own report (status, cause), if it lived to write one."""
    try:
        outcome = json.loads((run_dir / OUTCOME_FILE).read_text(encoding="utf-8"))
        return str(outcome["status"]), outcome.get("cause")
    except (OSError, ValueError, KeyError, TypeError):
        return None


def train_run(run_dir: str, deadline: float | None = None, resume: bool | None = None) -> str:
    """Train the run described by ``RUN_DIR/request.json``; returns its status. With a `deadline`
    (a `time.time()`), training pauses there at a checkpoint and returns ``"paused"``, writing no
    outcome: the run is not over (one ZeroGPU call, `app.runtime.zerogpu`). `resume` overrides the
    request's own flag (a later slice continues the run it started)."""
    from specpl.config import RunConfig
    from specpl.trainer import Trainer

    directory = Path(run_dir)
    try:
        request = json.loads((directory / REQUEST_FILE).read_text(encoding="utf-8"))
        config = RunConfig.from_dict(request["config"])
        continuing = bool(request.get("resume")) if resume is None else resume
        result = Trainer(config, directory, progress_bar=False, deadline=deadline).fit(resume=continuing)
    except BaseException as exc:  # noqa: BLE001 - every failure is reported, then the process ends
        traceback.print_exc()
        write_outcome(directory, "failed", describe_failure(exc))
        return "failed"
    if result.status != "paused":
        write_outcome(directory, result.status)
    return result.status


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m app.runtime.worker RUN_DIR", file=sys.stderr)
        return 2
    return 1 if train_run(args[0]) == "failed" else 0


if __name__ == "__main__":
    sys.exit(main())
