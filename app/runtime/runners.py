"""The runner seam: how a run's training is carried out, behind the few calls `JobManager` makes.

The manager keeps the queue and the records (``job.json``); a `Runner` starts a run's training, says
whether it has ended and how (`Ended`: a status and its cause), asks it to stop or forces it, and
takes over a run that was still training when the app restarted. Nothing above the manager knows
which runner is in use.

`ProcessRunner` (here) trains each run in its own worker process (``python -m app.runtime.worker RUN_DIR``,
leading its own process group, its output in ``worker.log``). Stopping is cooperative first (the
trainer's STOP file: it saves a checkpoint and exits), then SIGTERM after a grace period, then
SIGKILL. A worker that dies on its own has failed, with its cause: its own report when it could
write one (out-of-memory included), otherwise the signal or exit code, or out-of-memory read from
its log.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from app.runtime import worker
from specpl.events import read_events
from specpl.trainer import STOP_FILE

LOG_FILE = "worker.log"
STOPPED = "stopped by request (a checkpoint was saved; resume continues from it)"
STOPPED_BEFORE_TRAINING = "stopped by request while it was loading, before it trained"
KILL_AFTER_TERMINATE_S = 5.0
PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Ended:
    """How a run's training ended: ``finished``, ``failed`` or ``cancelled``, and why (for the UI)."""

    status: str
    cause: str | None = None


class LaunchError(RuntimeError):
    """The runner could not start a run's training; the message is the failed run's cause."""


class Runner(Protocol):
    """What `JobManager` asks of whatever trains its runs. A run is named by its folder, which holds
    ``request.json`` (what to train); the manager calls these under its lock, one at a time."""

    def launch(self, run_dir: Path) -> int | None:
        """Start training the run; the process id to record (None: no process of its own).
        Raises `LaunchError` when it cannot start."""

    def poll(self, run_dir: Path) -> Ended | None:
        """None while the run trains (a stop that is overdue may be pushed harder here); how it
        ended once it has."""

    def stop(self, run_dir: Path) -> None:
        """Ask the run to stop: it saves a checkpoint and ends; `poll` says when it has."""

    def force(self, run_dir: Path) -> Ended:
        """End the run now (the app is shutting down) and say how it ended."""

    def adopt(self, run_dir: Path, pid: int | None, stop_requested_at: float | None) -> Ended | None:
        """After an app restart, a run recorded as training (with its recorded process id and stop
        request): take it over and return None while it still trains, else say how it ended."""

    def drive(self, run_dir: Path) -> None:
        """Lend the calling request to the run: a runner whose training must happen inside a
        visitor's request (ZeroGPU, `app.runtime.zerogpu`) trains there until the run ends or
        pauses; a runner that trains on its own returns at once."""


@dataclass
class _Worker:
    """A live training process: ours (`process` set) or adopted from a previous app process."""

    pid: int
    process: subprocess.Popen | None
    stop_requested_at: float | None = None
    terminated_at: float | None = None
    before_training: bool = False  # stopped before its training loop began


class ProcessRunner:
    """Each run in a fresh worker process, started with `worker_command` + the run folder."""

    def __init__(self, worker_command: list[str] | None = None, stop_grace_s: float = 20.0) -> None:
        self.worker_command = worker_command or [sys.executable, "-m", worker.__name__]
        self.stop_grace_s = stop_grace_s
        self._workers: dict[Path, _Worker] = {}

    def launch(self, run_dir: Path) -> int:
        for stale in (worker.OUTCOME_FILE, STOP_FILE):
            (run_dir / stale).unlink(missing_ok=True)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])),
            "PYTHONUNBUFFERED": "1",
        }
        try:
            with open(run_dir / LOG_FILE, "ab") as log_file:
                process = subprocess.Popen(
                    [*self.worker_command, str(run_dir)],
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    cwd=PROJECT_ROOT,
                    env=env,
                    start_new_session=True,
                )
        except OSError as exc:
            raise LaunchError(f"could not start the training process: {exc}") from exc
        self._workers[run_dir] = _Worker(process.pid, process)
        return process.pid

    def poll(self, run_dir: Path) -> Ended | None:
        live = self._workers[run_dir]
        if live.process is not None:
            returncode = live.process.poll()
            ended = returncode is not None
        else:  # adopted: not our child, so only its liveness is known
            returncode, ended = None, not _alive(live.pid)
        if ended:
            return self._ended(run_dir, returncode)
        self._escalate_stop(live)
        return None

    def stop(self, run_dir: Path) -> None:
        """The STOP file; a worker still loading (the model, the data, the frozen features) has
        nothing to save and may take long to look at it, so it is terminated at once."""
        (run_dir / STOP_FILE).touch()
        live = self._workers.get(run_dir)
        if live is None:
            return
        live.stop_requested_at = time.time()
        if not _training_loop_started(run_dir):
            live.before_training = True
            live.terminated_at = live.stop_requested_at
            _signal_group(live.pid, signal.SIGTERM)

    def force(self, run_dir: Path) -> Ended:
        live = self._workers[run_dir]
        _signal_group(live.pid, signal.SIGKILL)
        if live.process is not None:
            live.process.wait(timeout=10)
        return self._ended(run_dir, None)

    def adopt(self, run_dir: Path, pid: int | None, stop_requested_at: float | None) -> Ended | None:
        self._workers[run_dir] = _Worker(pid or -1, None, stop_requested_at)
        return None if pid and _is_worker_of(pid, run_dir) else self._ended(run_dir, None)

    def drive(self, run_dir: Path) -> None:
        """The worker process trains on its own: nothing to lend it."""

    def _escalate_stop(self, live: _Worker) -> None:
        if live.stop_requested_at is None:
            return
        now = time.time()
        if live.terminated_at is None and now - live.stop_requested_at > self.stop_grace_s:
            live.terminated_at = now
            _signal_group(live.pid, signal.SIGTERM)
        elif live.terminated_at is not None and now - live.terminated_at > KILL_AFTER_TERMINATE_S:
            _signal_group(live.pid, signal.SIGKILL)

    def _ended(self, run_dir: Path, returncode: int | None) -> Ended:
        """How a worker ended, from its own report, else from how its process went; forgets it."""
        live = self._workers.pop(run_dir)
        reported = worker.read_outcome(run_dir)
        if reported is None:
            if live.before_training:
                return Ended("cancelled", STOPPED_BEFORE_TRAINING)
            if live.stop_requested_at is not None:
                return Ended(
                    "cancelled",
                    f"stopped by request; the process did not stop within {self.stop_grace_s:.0f} s and was terminated",
                )
            return Ended("failed", _crash_cause(run_dir, live.pid, returncode))
        status, cause = reported
        if status == "cancelled" and live.stop_requested_at is not None:
            cause = STOPPED
        return Ended(status, cause)


def _training_loop_started(run_dir: Path) -> bool:
    """Whether the worker's trainer has reached its training loop since it last started (the
    "compile" event comes just before the first step)."""
    started = False
    for event in read_events(run_dir / "events.jsonl"):
        if event["type"] == "status" and event.get("status") == "running":
            started = False
        elif event["type"] == "compile":
            started = True
    return started


def _crash_cause(run_dir: Path, pid: int, returncode: int | None) -> str:
    """Why a worker ended without reporting: signal, exit code, or out-of-memory from its log."""
    tail = _log_tail(run_dir / LOG_FILE)
    oom = next((line for line in reversed(tail) if "out of memory" in line.lower()), None)
    if oom:
        return f"out of GPU memory: {oom.strip()[:300]}"
    if returncode is None:
        return f"the training process (pid {pid}) ended while the app was not watching it, without reporting a result"
    if returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else "unknown"
        hint = (
            "; when nobody stopped it, this is usually the system running out of memory"
            if -returncode == signal.SIGKILL
            else ""
        )
        return f"killed by signal {-returncode} ({name}){hint}"
    if returncode == 0:
        return "the training process exited with code 0 without reporting a result"
    last = next((line.strip() for line in reversed(tail) if line.strip()), "")
    return f"the training process exited with code {returncode}" + (f": {last[:300]}" if last else "")


def _log_tail(path: Path, max_bytes: int = 8192) -> list[str]:
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, path.stat().st_size - max_bytes))
            return handle.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_worker_of(pid: int, run_dir: Path) -> bool:
    """True when `pid` is still a worker training `run_dir` (guards against pid reuse)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return _alive(pid) and not Path("/proc").is_dir()
    return worker.__name__.encode() in cmdline and str(run_dir).encode() in cmdline


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the worker and anything it started (it leads its own process group)."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
