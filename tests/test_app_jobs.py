"""The job manager: the on-disk queue, stop, resume, and crash causes, through the worker processes of
`ProcessRunner`; and the runner seam alone, with an in-memory runner."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from app.runtime.jobs import JOB_FILE, JobError, JobManager, RunRecord
from app.runtime.runners import STOPPED_BEFORE_TRAINING, Ended, LaunchError, ProcessRunner
from specpl.config import BackboneConfig, DataConfig, MethodConfig, RunConfig, TrainConfig
from specpl.events import read_events

TERMINAL = {"finished", "failed", "cancelled"}


def tiny_config(epochs: int, backbone: BackboneConfig | None = None) -> RunConfig:
    """CoOp on the tiny backbone, 2 shots: one step per epoch, a checkpoint after each."""
    return RunConfig(
        backbone=backbone or BackboneConfig(name="specpl-tiny", pretrained=None),
        method=MethodConfig(host="coop", options={"coop": {"n_ctx": 4}}),
        data=DataConfig(shots=2),
        train=TrainConfig(epochs=epochs, batch_size=32),
    )


def wait_for(condition: Callable[[], object], timeout_s: float = 120, what: str = "condition") -> object:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def wait_status(manager: JobManager, run_id: str, statuses: set[str]) -> RunRecord:
    return wait_for(lambda: (r := manager.get(run_id)).status in statuses and r, what=f"{run_id} to be {statuses}")


def events_of(manager: JobManager, run_id: str, kind: str) -> list[dict]:
    return [e for e in read_events(manager.run_dir(run_id) / "events.jsonl") if e["type"] == kind]


@pytest.fixture
def manager(tmp_path):
    jobs = JobManager(tmp_path / "runs", slots=1, poll_s=0.05, runner=ProcessRunner(stop_grace_s=30))
    yield jobs
    jobs.close(terminate_workers=True)


def test_kill_9_is_failed_with_its_cause_and_resume_continues_from_the_checkpoint(manager, cifar_root):
    run = manager.submit(tiny_config(epochs=100_000), cifar_root, "long").run_id
    wait_for(lambda: len(events_of(manager, run, "checkpoint")) >= 3, what="three checkpoints")
    os.kill(manager.get(run).pid, signal.SIGKILL)

    failed = wait_status(manager, run, TERMINAL)
    assert failed.status == "failed"
    assert failed.cause.startswith("killed by signal 9 (SIGKILL)")
    saved = json.loads((manager.run_dir(run) / "checkpoint" / "trainer_state.json").read_text())["counters"]

    manager.resume(run)

    def steps_after_resuming() -> list[dict]:  # the killed run logged steps past its last checkpoint too
        events = read_events(manager.run_dir(run) / "events.jsonl")
        resumed_at = next((i for i, e in enumerate(events) if e["type"] == "resumed"), None)
        return [] if resumed_at is None else [e for e in events[resumed_at + 1 :] if e["type"] == "step"]

    wait_for(steps_after_resuming, what="a step after resuming")
    resumed = events_of(manager, run, "resumed")[0]
    assert resumed["global_step"] == saved["global_step"] >= 3
    assert steps_after_resuming()[0]["step"] == saved["global_step"] + 1

    manager.stop(run)
    stopped = wait_status(manager, run, TERMINAL)
    assert (stopped.status, stopped.cause) == (
        "cancelled",
        "stopped by request (a checkpoint was saved; resume continues from it)",
    )


def test_an_error_inside_the_worker_is_failed_with_one_line(manager, cifar_root):
    offline = BackboneConfig(name="ViT-B-32", pretrained="openai", cache_dir=str(manager.runs_dir / "empty-cache"))
    run = manager.submit(tiny_config(epochs=1, backbone=offline), cifar_root, "offline").run_id
    failed = wait_status(manager, run, TERMINAL)
    assert failed.status == "failed"
    assert failed.cause.startswith("backbone unavailable: could not load ViT-B-32 weights 'openai'")
    assert "\n" not in failed.cause and "Traceback" in (manager.run_dir(run) / "worker.log").read_text()


def test_a_crash_without_a_report_names_out_of_memory_from_the_log(tmp_path, cifar_root):
    crash = "import sys; print('torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 9.00 GiB'); sys.exit(1)"
    jobs = JobManager(
        tmp_path / "runs", poll_s=0.05, runner=ProcessRunner(worker_command=[sys.executable, "-c", crash])
    )
    try:
        run = jobs.submit(tiny_config(epochs=1), cifar_root, "oom").run_id
        failed = wait_status(jobs, run, TERMINAL)
    finally:
        jobs.close()
    assert failed.status == "failed"
    assert failed.cause == "out of GPU memory: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 9.00 GiB"


def test_a_run_left_running_by_a_dead_app_is_failed_on_restart(tmp_path, cifar_root):
    jobs = JobManager(
        tmp_path / "runs", poll_s=0.05, runner=ProcessRunner(worker_command=[sys.executable, "-c", "pass"])
    )
    run = jobs.submit(tiny_config(epochs=1), cifar_root, "orphan").run_id
    exited = wait_status(jobs, run, TERMINAL)
    jobs.close()
    assert exited.cause == "the training process exited with code 0 without reporting a result"

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    job_file = tmp_path / "runs" / run / JOB_FILE
    job_file.write_text(
        json.dumps({**json.loads(job_file.read_text()), "status": "running", "pid": gone.pid, "cause": None})
    )
    restarted = JobManager(tmp_path / "runs", poll_s=0.05)
    try:
        record = restarted.get(run)
    finally:
        restarted.close()
    assert record.status == "failed"
    assert (
        record.cause
        == f"the training process (pid {gone.pid}) ended while the app was not watching it, without reporting a result"
    )


def test_queued_runs_cancel_at_once_and_only_finished_runs_can_be_deleted(tmp_path, cifar_root):
    jobs = JobManager(tmp_path / "runs", slots=1, poll_s=3600)  # the watcher never ticks: runs stay queued
    try:
        run = jobs.submit(tiny_config(epochs=1), cifar_root, "waiting").run_id
        with pytest.raises(JobError, match="stop it before deleting it"):
            jobs.delete(run)
        assert jobs.stop(run).cause == "cancelled before it started"
        jobs.delete(run)
        assert jobs.list() == [] and not any(p for p in (tmp_path / "runs").iterdir())
        with pytest.raises(JobError, match="there is no run '../etc'"):
            jobs.get("../etc")
    finally:
        jobs.close()


def test_the_status_timer_ticks_and_stop_is_enabled_only_while_the_watched_run_is_active(tmp_path, cifar_root):
    from app.runtime.settings import AppSettings
    from app.studio import Studio
    from app.tabs.train import TrainTab

    studio = Studio(AppSettings(data_dir=tmp_path / "data"))
    studio.jobs.close()
    studio.jobs = JobManager(tmp_path / "runs", slots=1, poll_s=3600)  # the watcher never ticks: runs stay queued
    train = TrainTab(studio)
    try:
        run = studio.jobs.submit(tiny_config(epochs=1), cifar_root, "waiting").run_id
        *_, details, _, _, _, timer, _, stop = train.poll_run(run, None)
        assert details["status"] == "queued" and timer.active is True and stop["interactive"] is True
        studio.jobs.stop(run)
        *_, details, _, _, _, timer, _, stop = train.poll_run(run, None)
        assert details["status"] == "cancelled" and timer.active is False and stop["interactive"] is False
        assert (
            train.poll_run("", None)[-3].active is False
            and train.poll_run("20260101-000000-abcdef", None)[-3].active is False
        )
    finally:
        studio.jobs.close()


class MemoryRunner:
    """A runner with no process at all: the test says when each run ends, and how."""

    def __init__(self) -> None:
        self.ends: dict[str, Ended | None] = {}  # run id -> how it ended (None: still training)
        self.calls: list[tuple[str, str]] = []
        self.refuse: set[str] = set()  # run ids it cannot launch

    def launch(self, run_dir: Path) -> None:
        self.calls.append(("launch", run_dir.name))
        if run_dir.name in self.refuse:
            raise LaunchError("no GPU time left today")
        self.ends[run_dir.name] = None

    def poll(self, run_dir: Path) -> Ended | None:
        return self.ends[run_dir.name]

    def stop(self, run_dir: Path) -> None:
        self.calls.append(("stop", run_dir.name))

    def force(self, run_dir: Path) -> Ended:
        self.calls.append(("force", run_dir.name))
        return Ended("cancelled", "the app shut down")

    def adopt(self, run_dir: Path, pid: int | None, stop_requested_at: float | None) -> Ended | None:
        self.calls.append(("adopt", run_dir.name))
        return Ended("failed", f"the app restarted (pid {pid}, stop asked: {stop_requested_at is not None})")


def test_the_manager_drives_any_runner_and_records_how_its_runs_end(tmp_path):
    """The queue, the records and the stop request are the manager's; launching, ending and stopping
    are the runner's, whatever it is: here one that trains nothing and starts no process."""
    data = tmp_path / "data" / "cat"
    data.mkdir(parents=True)
    (data / "1.png").write_bytes(b"not read")
    runner = MemoryRunner()
    jobs = JobManager(tmp_path / "runs", slots=1, poll_s=3600, runner=runner)  # ticks only when the test says
    try:
        first, second, third = (jobs.submit(tiny_config(1), data.parent, name).run_id for name in "abc")
        runner.refuse.add(third)
        jobs.tick()
        assert [jobs.get(r).status for r in (first, second, third)] == ["running", "queued", "queued"]
        assert jobs.get(first).pid is None and jobs.queue_position(third) == 2 and runner.calls == [("launch", first)]

        jobs.tick()  # still training: nothing changes
        runner.ends[first] = Ended("finished")
        jobs.tick()
        assert (jobs.get(first).status, jobs.get(first).cause) == ("finished", None)
        assert jobs.get(second).status == "running"  # it waited in the queue until the first ended
        with pytest.raises(JobError, match="only a cancelled, failed or paused training can be resumed"):
            jobs.resume(first)

        stopping = jobs.stop(second)
        assert stopping.status == "running" and stopping.stop_requested_at is not None
        jobs.stop(second)  # asked once: a second click asks the runner nothing more
        assert runner.calls[-1] == ("stop", second) and runner.calls.count(("stop", second)) == 1
        runner.ends[second] = Ended("cancelled", "stopped at the end of its slice")
        jobs.tick()
        assert (jobs.get(second).status, jobs.get(second).cause) == ("cancelled", "stopped at the end of its slice")
        assert (jobs.get(third).status, jobs.get(third).cause) == ("failed", "no GPU time left today")

        jobs.resume(second)
        jobs.tick()
        assert jobs.get(second).status == "running"
    finally:
        jobs.close(terminate_workers=True)
    assert runner.calls[-1] == ("force", second) and jobs.get(second).status == "cancelled"

    job_file = tmp_path / "runs" / first / JOB_FILE  # as a dead app would have left it
    job_file.write_text(json.dumps({**json.loads(job_file.read_text()), "status": "running", "pid": 41}))
    restarted = JobManager(tmp_path / "runs", poll_s=3600, runner=runner)
    restarted.close()
    assert runner.calls[-1] == ("adopt", first)
    assert (restarted.get(first).status, restarted.get(first).cause) == (
        "failed",
        "the app restarted (pid 41, stop asked: False)",
    )


def test_stop_while_the_worker_is_still_loading_cancels_at_once_not_after_the_grace_period(tmp_path, cifar_root):
    """What `/stop_training` asks of the manager: a worker that has not reached its training loop
    has nothing to save, so it is terminated at once instead of after the 60 s grace period."""
    jobs = JobManager(tmp_path / "runs", slots=1, poll_s=0.05, runner=ProcessRunner(stop_grace_s=60))
    try:
        run = jobs.submit(tiny_config(epochs=2), cifar_root, "stopped early").run_id
        wait_status(jobs, run, {"running"})
        asked = time.monotonic()
        jobs.stop(run)
        stopped = wait_status(jobs, run, TERMINAL)
        assert time.monotonic() - asked < 10
        assert stopped.status == "cancelled" and stopped.cause == STOPPED_BEFORE_TRAINING
        assert not (jobs.run_dir(run) / "checkpoint").exists()
    finally:
        jobs.close(terminate_workers=True)
