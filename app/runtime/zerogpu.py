"""Training on a Hugging Face ZeroGPU Space: the run trains in time-bounded GPU calls made from the
visitor's own requests, a slice at a time.

ZeroGPU lends a GPU only to a ``@spaces.GPU(duration=...)`` function called from the Gradio app's
own process, inside a visitor's request (whose quota pays for it), and runs that call in a forked
child that is killed when it outlives its duration. So a worker process cannot train there, and a
run longer than one call must be cut:

- each call (`train_slice`) resumes the run from its checkpoint, trains until its deadline, saves a
  checkpoint and returns ``"paused"`` (or ends the run: finished, cancelled, failed). Nothing in
  memory survives a call; everything the next one needs is on disk, so a resumed slice continues
  where the last one stopped (the trainer's resume: the same steps, within float rounding);
- a call that is killed anyway (``GPU task aborted``) loses only what it trained since its last
  checkpoint: the next call redoes it. Two killed calls in a row without a new checkpoint end the run
  as failed, since a longer call is needed;
- the calls run in `ZeroGPURunner.drive`, which the Data & Train tab calls from the request of the
  visitor who started the run (the job manager hands it over through `JobManager.drive`). A reload
  drives the run again from the new page; a second driver of the same run returns at once;
- when the visitor's quota is used up the run is ``paused`` with ZeroGPU's own message, and Resume
  continues it later; a Space restart pauses it the same way;
- Stop writes the trainer's STOP file: a slice in flight saves a checkpoint and ends the run at its
  next step; between slices the run ends at once.

`torch.compile` is off: its compile time would be paid again in every call (`launch` records it in
the run's request, and the run records it when it starts).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from app.runtime import worker
from app.runtime.runners import STOPPED, Ended
from specpl.checkpoint import checkpoint_step
from specpl.io import atomic_write_text
from specpl.trainer import STOP_FILE

SLICE_S = 120  # seconds a GPU call asks for; ZeroGPU allows at most 300 to a signed-in visitor
QUOTA_PAUSE = (
    "your GPU quota on this Space is used up for now (ZeroGPU: {message}); Resume continues from the last checkpoint"
)
RESTART_PAUSE = "the Space restarted while the run trained; Resume continues from its last checkpoint"
STOPPED_UNTRAINED = "stopped by request before it trained"


def train_slice(run_dir: str, seconds: float) -> str:
    """One GPU call (in ZeroGPU's forked child): continue the run for `seconds`, then save a
    checkpoint; returns the trainer's status ("paused" when time ran out first)."""
    import torch

    torch.set_num_threads(1)  # a forked child cannot use the parent's OpenMP pool: it would hang
    directory = Path(run_dir)
    started = (directory / "config.json").is_file()  # a run that has started continues from its checkpoint
    return worker.train_run(run_dir, deadline=time.time() + seconds, resume=started)


@dataclass
class _Slices:
    """A run in this runner's hands."""

    driving: threading.Lock = field(default_factory=threading.Lock)  # held by the request driving it
    ended: Ended | None = None
    stalled: bool = False  # the last call ended without saving a checkpoint further on


class ZeroGPURunner:
    """Trains runs in ``spaces.GPU`` calls of `slice_s` seconds, driven from visitors' requests.
    `reserve_s` of each call is kept for the final evaluation and saving (default: a fifth, at least 10 s)."""

    def __init__(self, slice_s: float = SLICE_S, reserve_s: float | None = None, gpu: Callable | None = None) -> None:
        if gpu is None:
            import spaces  # type: ignore[import-not-found]

            gpu = spaces.GPU
        self.slice_s = slice_s
        self.reserve_s = max(10.0, slice_s / 5) if reserve_s is None else reserve_s
        self.call = gpu(duration=slice_s)(train_slice)
        self._runs: dict[Path, _Slices] = {}

    def launch(self, run_dir: Path) -> None:
        for stale in (worker.OUTCOME_FILE, STOP_FILE):
            (run_dir / stale).unlink(missing_ok=True)
        request_file = run_dir / worker.REQUEST_FILE
        request = json.loads(request_file.read_text(encoding="utf-8"))
        request["config"].setdefault("train", {})["compile"] = "off"
        atomic_write_text(request_file, json.dumps(request, indent=2) + "\n")
        self._runs[run_dir] = _Slices()

    def poll(self, run_dir: Path) -> Ended | None:
        ended = self._runs[run_dir].ended
        if ended is not None:
            del self._runs[run_dir]
        return ended

    def stop(self, run_dir: Path) -> None:
        (run_dir / STOP_FILE).touch()
        run = self._runs[run_dir]
        if run.driving.acquire(blocking=False):  # no call in flight: nothing to wait for
            try:
                self._end(run_dir, run, _stopped(run_dir))
            finally:
                run.driving.release()

    def force(self, run_dir: Path) -> Ended:
        run = self._runs.pop(run_dir)
        return run.ended or Ended("paused", RESTART_PAUSE)

    def adopt(self, run_dir: Path, pid: int | None, stop_requested_at: float | None) -> Ended:
        """No call outlives the app's process: a run that was training is paused."""
        return Ended("cancelled", STOPPED) if stop_requested_at else Ended("paused", RESTART_PAUSE)

    def drive(self, run_dir: Path) -> None:
        """Train the run in GPU calls from the caller's request until it ends or pauses; returns at
        once when another request drives it already."""
        run = self._runs.get(run_dir)
        if run is None or not run.driving.acquire(blocking=False):
            return
        try:
            while run.ended is None:
                if (run_dir / STOP_FILE).exists():
                    self._end(run_dir, run, _stopped(run_dir))
                    break
                self._slice(run_dir, run)
        finally:
            run.driving.release()

    def _slice(self, run_dir: Path, run: _Slices) -> None:
        """One GPU call; a call that ends without a new checkpoint (killed, or paused before its
        first step) is allowed once in a row, since the next call cannot do better."""
        before = checkpoint_step(run_dir / "checkpoint")
        try:
            status = self.call(str(run_dir), self.slice_s - self.reserve_s)
        except Exception as exc:  # noqa: BLE001 - ZeroGPU's refusals and kills arrive as exceptions
            message = str(exc).strip()
            if "quota" in message.lower():
                run.ended = Ended("paused", QUOTA_PAUSE.format(message=message))
                return
            if "aborted" not in message.lower():
                run.ended = Ended("failed", worker.describe_failure(exc))
                return
            status = "aborted"
        if status not in ("paused", "aborted"):
            reported = worker.read_outcome(run_dir) or (status, None)
            self._end(run_dir, run, _stopped(run_dir) if reported[0] == "cancelled" else Ended(*reported))
            return
        if checkpoint_step(run_dir / "checkpoint") != before:
            run.stalled = False
        elif run.stalled:
            run.ended = Ended(
                "failed",
                f"two GPU calls of {self.slice_s:.0f} s in a row ended without training to a new checkpoint "
                "(loading the model and caching features, or one epoch, take longer than a call): give each call "
                "more time (SPECPL_GPU_SLICE_S, at most 300) or train on fewer images",
            )
        else:
            run.stalled = True

    def _end(self, run_dir: Path, run: _Slices, ended: Ended) -> None:
        (run_dir / STOP_FILE).unlink(missing_ok=True)
        run.ended = ended


def _stopped(run_dir: Path) -> Ended:
    """How a stopped run ended: at a checkpoint, or before any call trained it."""
    return Ended("cancelled", STOPPED if checkpoint_step(run_dir / "checkpoint") is not None else STOPPED_UNTRAINED)
