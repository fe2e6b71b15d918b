"""Training jobs: a queue kept on disk, one fresh worker process per training, and a watcher that
never leaves a run "running" once its process is gone.

A run is a folder ``runs/<run_id>/`` holding ``job.json`` (its status, written atomically and only
by this manager), ``request.json`` (the run config the worker trains), ``data/`` (a private copy of
the dataset), ``worker.log`` and whatever the library's trainer writes (``events.jsonl``,
``checkpoint/``, ``model/``, ``metrics.json``). Statuses: queued, running, finished, failed,
cancelled. At most `slots` runs train at once (one per GPU); the rest wait in order.

Stopping is cooperative first (the trainer's STOP file: it saves a checkpoint and exits), then
SIGTERM after a grace period, then SIGKILL. A worker that dies on its own is recorded as failed
with its cause: its own report when it could write one (out-of-memory included), otherwise the
signal or exit code.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from specpl.config import RunConfig
from specpl.io import atomic_write_text
from specpl.trainer import STOP_FILE

JOB_FILE = "job.json"
REQUEST_FILE = "request.json"
OUTCOME_FILE = "outcome.json"
LOG_FILE = "worker.log"
ACTIVE = ("queued", "running")
KILL_AFTER_TERMINATE_S = 5.0
PROJECT_ROOT = Path(__file__).resolve().parents[1]
_RUN_ID = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{6}$")

log = logging.getLogger(__name__)


class JobError(ValueError):
    """A request the manager refuses (unknown run, wrong state); the message is for the UI."""


@dataclass
class RunRecord:
    run_id: str
    name: str
    status: str
    created: float
    queued_at: float | None = None
    started: float | None = None
    ended: float | None = None
    pid: int | None = None
    cause: str | None = None
    resume: bool = False
    imported: bool = False
    stop_requested_at: float | None = None
    owner: str | None = None  # `app.identity.owner_key` of who started or imported it

    @property
    def active(self) -> bool:
        return self.status in ACTIVE


@dataclass
class _Worker:
    """A live training process: ours (`process` set) or adopted from a previous app process."""

    pid: int
    process: subprocess.Popen | None
    terminated_at: float | None = None


class JobManager:
    def __init__(
        self,
        runs_dir: Path,
        slots: int = 1,
        stop_grace_s: float = 20.0,
        poll_s: float = 0.25,
        worker_command: list[str] | None = None,
    ) -> None:
        self.runs_dir = Path(runs_dir)
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.slots = max(1, slots)
        self.stop_grace_s = stop_grace_s
        self.worker_command = worker_command or [sys.executable, "-m", "app.worker"]
        self._workers: dict[str, _Worker] = {}
        self._lock = threading.RLock()
        self._closed = threading.Event()
        self._recover()
        self._thread = threading.Thread(target=self._watch, args=(poll_s,), name="specpl-jobs", daemon=True)
        self._thread.start()

    # ----- queries -------------------------------------------------------------------------

    def run_dir(self, run_id: str) -> Path:
        """The folder of `run_id`; the id is checked, as it may come from a browser."""
        if (
            not isinstance(run_id, str)
            or not _RUN_ID.match(run_id)
            or not (self.runs_dir / run_id / JOB_FILE).is_file()
        ):
            raise JobError(f"there is no run {run_id!r}")
        return self.runs_dir / run_id

    def get(self, run_id: str) -> RunRecord:
        return self._read(self.run_dir(run_id))

    def list(self) -> list[RunRecord]:
        """Every run, newest first; a folder with an unreadable job.json is left out."""
        records = []
        for folder in self.runs_dir.iterdir():
            if _RUN_ID.match(folder.name) and (folder / JOB_FILE).is_file():
                try:
                    records.append(self._read(folder))
                except (OSError, ValueError, TypeError):
                    log.warning("skipping run %s: unreadable %s", folder.name, JOB_FILE)
        return sorted(records, key=lambda r: r.created, reverse=True)

    def queue_position(self, run_id: str) -> int | None:
        """1 for the next run to start; ``None`` when `run_id` is not waiting."""
        waiting = sorted((r for r in self.list() if r.status == "queued"), key=lambda r: r.queued_at or r.created)
        ids = [r.run_id for r in waiting]
        return ids.index(run_id) + 1 if run_id in ids else None

    def active_run_id(self) -> str | None:
        """The run a fresh page should show: one training now, else the next in the queue."""
        active = [r for r in self.list() if r.active]
        active.sort(key=lambda r: (r.status != "running", r.queued_at or r.created))
        return active[0].run_id if active else None

    # ----- commands ------------------------------------------------------------------------

    def submit(self, config: RunConfig, dataset_root: Path, name: str, owner: str | None = None) -> RunRecord:
        """Queue a training of `config` on a private copy of `dataset_root`."""
        now = time.time()
        record = RunRecord(run_id=_new_run_id(), name=name, status="queued", created=now, queued_at=now, owner=owner)
        final = self.runs_dir / record.run_id
        config = RunConfig.from_dict(config.to_dict())
        config.data.root = str(final / "data")

        def fill(staging: Path) -> None:
            shutil.copytree(dataset_root, staging / "data", symlinks=False)
            atomic_write_text(
                staging / REQUEST_FILE, json.dumps({"config": config.to_dict(), "resume": False}, indent=2) + "\n"
            )

        return self._create(record, fill)

    def add_imported(self, model_dir: Path, name: str, owner: str | None = None) -> RunRecord:
        """Record a validated model bundle as a finished run (moves `model_dir` into it)."""
        now = time.time()
        record = RunRecord(
            run_id=_new_run_id(), name=name, status="finished", created=now, ended=now, imported=True, owner=owner
        )
        return self._create(record, lambda staging: shutil.move(str(model_dir), staging / "model"))

    def stop(self, run_id: str) -> RunRecord:
        """Cancel a queued run now; ask a running one to stop (it is terminated after the grace period)."""
        with self._lock:
            record = self.get(run_id)
            if record.status == "queued":
                return self._update(record, status="cancelled", ended=time.time(), cause="cancelled before it started")
            if record.status != "running":
                raise JobError(f"run {run_id} is {record.status}, not running")
            if record.stop_requested_at is None:
                (self.run_dir(run_id) / STOP_FILE).touch()
                record = self._update(record, stop_requested_at=time.time())
            return record

    def resume(self, run_id: str) -> RunRecord:
        """Queue a cancelled or failed run again; it continues from its last checkpoint."""
        with self._lock:
            record = self.get(run_id)
            if record.status not in ("cancelled", "failed") or record.imported:
                raise JobError(f"run {run_id} is {record.status}; only a cancelled or failed training can be resumed")
            run_dir = self.run_dir(run_id)
            request = json.loads((run_dir / REQUEST_FILE).read_text(encoding="utf-8"))
            atomic_write_text(run_dir / REQUEST_FILE, json.dumps({**request, "resume": True}, indent=2) + "\n")
            return self._update(
                record,
                status="queued",
                queued_at=time.time(),
                resume=True,
                cause=None,
                ended=None,
                pid=None,
                stop_requested_at=None,
            )

    def delete(self, run_id: str) -> None:
        with self._lock:
            record = self.get(run_id)
            if record.active:
                raise JobError(f"run {run_id} is {record.status}; stop it before deleting it")
            trash = self.runs_dir / f".trash-{run_id}-{secrets.token_hex(3)}"
            self.run_dir(run_id).rename(trash)  # gone from the list at once, removed below
        shutil.rmtree(trash, ignore_errors=True)

    def close(self, terminate_workers: bool = False) -> None:
        """Stop watching; with `terminate_workers`, also kill every worker this process started."""
        self._closed.set()
        self._thread.join(timeout=5)
        if terminate_workers:
            with self._lock:
                for run_id, worker in list(self._workers.items()):
                    _signal_group(worker.pid, signal.SIGKILL)
                    if worker.process is not None:
                        worker.process.wait(timeout=10)
                    self._finalize(run_id, worker, None)

    # ----- the watcher -----------------------------------------------------------------------

    def _watch(self, poll_s: float) -> None:
        while not self._closed.wait(poll_s):
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - the watcher must outlive any single bad run folder
                log.exception("job watcher tick failed")

    def tick(self) -> None:
        """Reap ended workers, escalate overdue stops, start queued runs while slots are free."""
        with self._lock:
            for run_id, worker in list(self._workers.items()):
                if worker.process is not None:
                    returncode = worker.process.poll()
                    ended = returncode is not None
                else:  # adopted: not our child, so only its liveness is known
                    returncode, ended = None, not _alive(worker.pid)
                if ended:
                    self._finalize(run_id, worker, returncode)
                else:
                    self._escalate_stop(run_id, worker)
            queued = sorted((r for r in self.list() if r.status == "queued"), key=lambda r: r.queued_at or r.created)
            for record in queued[: max(0, self.slots - len(self._workers))]:
                self._launch(record)

    def _launch(self, record: RunRecord) -> None:
        run_dir = self.run_dir(record.run_id)
        for stale in (OUTCOME_FILE, STOP_FILE):
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
            self._update(
                record, status="failed", ended=time.time(), cause=f"could not start the training process: {exc}"
            )
            return
        self._workers[record.run_id] = _Worker(process.pid, process)
        self._update(record, status="running", started=time.time(), pid=process.pid)

    def _escalate_stop(self, run_id: str, worker: _Worker) -> None:
        record = self.get(run_id)
        if record.stop_requested_at is None:
            return
        now = time.time()
        if worker.terminated_at is None and now - record.stop_requested_at > self.stop_grace_s:
            worker.terminated_at = now
            _signal_group(worker.pid, signal.SIGTERM)
        elif worker.terminated_at is not None and now - worker.terminated_at > KILL_AFTER_TERMINATE_S:
            _signal_group(worker.pid, signal.SIGKILL)

    def _finalize(self, run_id: str, worker: _Worker, returncode: int | None) -> None:
        """Record how a worker ended; never leaves the run "running"."""
        self._workers.pop(run_id, None)
        record = self.get(run_id)
        run_dir = self.run_dir(run_id)
        status, cause = _reported_outcome(run_dir)
        if status is None:
            status, cause = "failed", _crash_cause(run_dir, worker.pid, returncode)
            if record.stop_requested_at is not None:
                status, cause = (
                    "cancelled",
                    f"stopped by request; the process did not stop within {self.stop_grace_s:.0f} s and was terminated",
                )
        elif status == "cancelled" and record.stop_requested_at is not None:
            cause = "stopped by request (a checkpoint was saved; resume continues from it)"
        self._update(record, status=status, cause=cause, ended=time.time())

    def _recover(self) -> None:
        """After an app restart: adopt live workers, and fail runs whose worker is gone."""
        for record in self.list():
            if record.status != "running":
                continue
            run_dir = self.run_dir(record.run_id)
            worker = _Worker(record.pid or -1, None)
            if record.pid and _is_worker_of(record.pid, run_dir):
                self._workers[record.run_id] = worker
            else:
                self._finalize(record.run_id, worker, None)

    # ----- files ---------------------------------------------------------------------------

    def _create(self, record: RunRecord, fill) -> RunRecord:
        staging = self.runs_dir / f".staging-{record.run_id}"
        try:
            staging.mkdir()
            fill(staging)
            self._write(staging, record)
            staging.rename(self.runs_dir / record.run_id)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return record

    def _read(self, run_dir: Path) -> RunRecord:
        raw = json.loads((run_dir / JOB_FILE).read_text(encoding="utf-8"))
        return RunRecord(**{f.name: raw[f.name] for f in dataclasses.fields(RunRecord) if f.name in raw})

    def _write(self, run_dir: Path, record: RunRecord) -> None:
        atomic_write_text(run_dir / JOB_FILE, json.dumps(dataclasses.asdict(record), indent=2) + "\n")

    def _update(self, record: RunRecord, **changes) -> RunRecord:
        with self._lock:
            updated = dataclasses.replace(record, **changes)
            self._write(self.run_dir(record.run_id), updated)
            return updated


def _new_run_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def _reported_outcome(run_dir: Path) -> tuple[str | None, str | None]:
    """The worker's own report, if it lived to write one."""
    try:
        outcome = json.loads((run_dir / OUTCOME_FILE).read_text(encoding="utf-8"))
        return str(outcome["status"]), outcome.get("cause")
    except (OSError, ValueError, KeyError, TypeError):
        return None, None


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
    return b"app.worker" in cmdline and str(run_dir).encode() in cmdline


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the worker and anything it started (it leads its own process group)."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
