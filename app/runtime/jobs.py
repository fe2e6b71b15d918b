"""Training jobs: a queue kept on disk, a runner that trains each run (`app.runtime.runners`), and a
watcher that never leaves a run "running" once its runner says it has ended.

A run is a folder ``runs/<run_id>/`` holding ``job.json`` (its status, written atomically and only
by this manager), ``request.json`` (the run config to train), ``data/`` (a private copy of the
dataset), what the runner keeps there (the worker's log and report) and whatever the library's
trainer writes (``events.jsonl``, ``checkpoint/``, ``model/``, ``metrics.json``). Statuses: queued,
running, finished, failed, cancelled, and paused (a ZeroGPU run waiting for GPU time; Resume goes
on). At most `slots` runs train at once (one per GPU); the rest wait in order.

The manager knows nothing of how a run trains: it asks its `Runner` to launch, poll, stop or force
a run and to adopt one still training after an app restart, and records the `Ended` status and
cause the runner reports.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import secrets
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from app.runtime.runners import Ended, LaunchError, ProcessRunner, Runner
from app.runtime.worker import REQUEST_FILE
from specpl.config import RunConfig
from specpl.io import atomic_write_text

JOB_FILE = "job.json"
ACTIVE = ("queued", "running")
RESUMABLE = ("cancelled", "failed", "paused")  # paused: a ZeroGPU run whose visitor's quota ran out
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
    owner: str | None = None  # `app.runtime.identity.owner_key` of who started or imported it

    @property
    def active(self) -> bool:
        return self.status in ACTIVE


class JobManager:
    """The queue and the records of `runs_dir`; `runner` trains the runs (default: `ProcessRunner`,
    a worker process per run), polled every `poll_s` seconds."""

    def __init__(
        self,
        runs_dir: Path,
        slots: int = 1,
        poll_s: float = 0.25,
        runner: Runner | None = None,
    ) -> None:
        self.runs_dir = Path(runs_dir)
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.slots = max(1, slots)
        self.runner = runner or ProcessRunner()
        self.poll_s = poll_s
        self._training: set[str] = set()  # the runs in the runner's hands
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
        """Cancel a queued run now; ask the runner to stop a running one."""
        with self._lock:
            record = self.get(run_id)
            if record.status == "queued":
                return self._update(record, status="cancelled", ended=time.time(), cause="cancelled before it started")
            if record.status != "running":
                raise JobError(f"run {run_id} is {record.status}, not running")
            if record.stop_requested_at is None:
                self.runner.stop(self.run_dir(run_id))
                record = self._update(record, stop_requested_at=time.time())
            return record

    def resume(self, run_id: str) -> RunRecord:
        """Queue a cancelled, failed or paused run again; it continues from its last checkpoint."""
        with self._lock:
            record = self.get(run_id)
            if record.status not in RESUMABLE or record.imported:
                raise JobError(
                    f"run {run_id} is {record.status}; only a cancelled, failed or paused training can be resumed"
                )
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

    def drive(self, run_id: str) -> None:
        """Lend the calling request to the run's training (`Runner.drive`) once it has left the
        queue; returns when the run no longer needs the request."""
        while not self._closed.is_set():
            with self._lock:
                record = self.get(run_id)
                if record.status == "running" and run_id in self._training:
                    break
            if record.status != "queued":
                return
            self._closed.wait(self.poll_s)
        self.runner.drive(self.run_dir(run_id))
        self.tick()  # record at once how it ended

    def delete(self, run_id: str) -> None:
        with self._lock:
            record = self.get(run_id)
            if record.active:
                raise JobError(f"run {run_id} is {record.status}; stop it before deleting it")
            trash = self.runs_dir / f".trash-{run_id}-{secrets.token_hex(3)}"
            self.run_dir(run_id).rename(trash)  # gone from the list at once, removed below
        shutil.rmtree(trash, ignore_errors=True)

    def close(self, terminate_workers: bool = False) -> None:
        """Stop watching; with `terminate_workers`, also end every run this manager is training."""
        self._closed.set()
        self._thread.join(timeout=5)
        if terminate_workers:
            with self._lock:
                for run_id in list(self._training):
                    self._finish(run_id, self.runner.force(self.run_dir(run_id)))

    # ----- the watcher -----------------------------------------------------------------------

    def _watch(self, poll_s: float) -> None:
        while not self._closed.wait(poll_s):
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - the watcher must outlive any single bad run folder
                log.exception("job watcher tick failed")

    def tick(self) -> None:
        """Record the runs that ended, start queued runs while slots are free."""
        with self._lock:
            for run_id in list(self._training):
                ended = self.runner.poll(self.run_dir(run_id))
                if ended is not None:
                    self._finish(run_id, ended)
            queued = sorted((r for r in self.list() if r.status == "queued"), key=lambda r: r.queued_at or r.created)
            for record in queued[: max(0, self.slots - len(self._training))]:
                self._launch(record)

    def _launch(self, record: RunRecord) -> None:
        try:
            pid = self.runner.launch(self.run_dir(record.run_id))
        except LaunchError as exc:
            self._update(record, status="failed", ended=time.time(), cause=str(exc))
            return
        self._training.add(record.run_id)
        self._update(record, status="running", started=time.time(), pid=pid)

    def _finish(self, run_id: str, ended: Ended) -> None:
        """Record how a run ended; never leaves it "running"."""
        self._training.discard(run_id)
        self._update(self.get(run_id), status=ended.status, cause=ended.cause, ended=time.time())

    def _recover(self) -> None:
        """After an app restart: the runner adopts runs still training, and says how the others ended."""
        for record in self.list():
            if record.status != "running":
                continue
            ended = self.runner.adopt(self.run_dir(record.run_id), record.pid, record.stop_requested_at)
            if ended is None:
                self._training.add(record.run_id)
            else:
                self._finish(record.run_id, ended)

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
