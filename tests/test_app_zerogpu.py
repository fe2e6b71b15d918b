"""Training on a ZeroGPU Space, under a stand-in `spaces` module that enforces ZeroGPU's rules
(`tests/standins/spaces.py`: a forked child per call, killed past its duration; a quota; no CUDA in
the app's own process). A run cut into several GPU calls, one of them killed, ends with the logits
of an uninterrupted run, bit for bit."""

from __future__ import annotations

import json
import sys
import threading
import time as real_time
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest
import torch

from app.runtime import zerogpu
from app.runtime.jobs import JobManager
from app.runtime.settings import AppSettings
from app.runtime.zerogpu import ZeroGPURunner
from app.tabs.runs import RunsTab
from specpl import trainer
from specpl.config import BackboneConfig, DataConfig, DecomposerConfig, MethodConfig, RunConfig, TrainConfig
from specpl.events import read_events
from specpl.inference import Predictor

STANDINS = Path(__file__).parent / "standins"
CALL_S = 3.0  # the stand-in kills a GPU call after this many real seconds (a call here takes under 1 s)
TICK = 0.1  # virtual seconds between two readings of the test clock
BUDGET = 1.0  # virtual seconds of training a call gets: 10 readings, 4 steps (two readings a step)


@pytest.fixture
def spaces(monkeypatch):
    """The stand-in, imported fresh; CUDA is back to normal and the module gone after the test."""
    monkeypatch.setattr(torch.cuda, "_lazy_init", torch.cuda._lazy_init)  # restored at teardown
    monkeypatch.syspath_prepend(str(STANDINS))
    monkeypatch.delitem(sys.modules, "spaces", raising=False)
    import spaces as standin

    yield standin
    sys.modules.pop("spaces", None)


class StepClock:
    """The time the forked calls read (the trainer's deadline checks and the slice's deadline): each
    reading is `TICK` virtual seconds after the last, so a call's budget is a count of readings
    (about two a step) on any machine. In a call started with `hang_after` set, the reading after
    that many waits forever, as a call that overruns its duration does, until the stand-in kills it."""

    def __init__(self) -> None:
        self.now = 1e9
        self.readings = 0
        self.hang_after: int | None = None

    def time(self) -> float:
        self.readings += 1
        if self.hang_after is not None and self.readings > self.hang_after:
            real_time.sleep(3600)
        self.now += TICK
        return self.now


def run_config(root: Path) -> RunConfig:
    return RunConfig(
        backbone=BackboneConfig(name="specpl-tiny", pretrained=None),
        decomposer=DecomposerConfig(name="fft", image_size=32),
        method=MethodConfig(host="coop", boosters=["specpl"], options={"coop": {"n_ctx": 4}}),
        data=DataConfig(root=str(root), shots=4),
        train=TrainConfig(epochs=3, batch_size=4),  # 7 steps an epoch, an epoch checkpoint after each
    )


def sliced(monkeypatch, spaces, runs: Path) -> tuple[JobManager, dict[int, dict]]:
    """A job manager whose runner makes GPU calls through the stand-in, timed by a `StepClock`, and
    its plan: for the n-th call of the test, a budget (virtual seconds) and `hang_after` (readings)."""
    clock = StepClock()
    monkeypatch.setattr(trainer, "time", SimpleNamespace(time=clock.time))
    monkeypatch.setattr(zerogpu, "time", SimpleNamespace(time=clock.time))
    runner = ZeroGPURunner(slice_s=CALL_S, reserve_s=CALL_S - BUDGET, gpu=spaces.GPU)
    real_call, plan = runner.call, {}

    def call(run_dir: str, seconds: float) -> str:
        step = plan.get(len(spaces.calls) + 1, {})
        clock.readings, clock.hang_after = 0, step.get("hang_after")
        return real_call(run_dir, step.get("budget", seconds))

    runner.call = call
    return JobManager(runs, runner=runner, poll_s=0.05), plan


def logits(run_dir: Path, images: list[Path]) -> torch.Tensor:
    predictor = Predictor.from_bundle(run_dir / "model")
    return predictor.logits(predictor.preprocess(images))


def test_a_run_cut_into_gpu_calls_one_of_them_killed_ends_as_an_uninterrupted_run(
    tmp_path, monkeypatch, spaces, cifar_root
):
    jobs, plan = sliced(monkeypatch, spaces, tmp_path / "runs")
    plan[1] = {"budget": 1e6}  # the uninterrupted run: one call
    whole = jobs.submit(run_config(cifar_root), cifar_root, "whole")
    jobs.drive(whole.run_id)
    assert jobs.get(whole.run_id).status == "finished" and len(spaces.calls) == 1

    # 4 steps a call; the run's second call trains through the epoch-2 checkpoint (step 14), then
    # overruns and is killed at step 15, so the next call trains step 15 again from that checkpoint
    plan[3] = {"budget": 1e6, "hang_after": 24}
    run = jobs.submit(run_config(cifar_root), cifar_root, "sliced")
    jobs.drive(run.run_id)
    jobs.close()

    record = jobs.get(run.run_id)
    assert record.status == "finished", record.cause
    assert [call["outcome"] for call in spaces.calls] == ["ok", "ok", "aborted", "ok", "ok"]
    run_dir = jobs.run_dir(run.run_id)
    events = read_events(run_dir / "events.jsonl")
    assert [e["step"] for e in events if e["type"] == "status" and e["status"] == "paused"] == [4, 18]
    assert [e["step"] for e in events if e["type"] == "step"] == [*range(1, 16), *range(15, 22)]
    assert json.loads((run_dir / "config.json").read_text())["train"]["compile"] == "off"
    # bit for bit: every call is a fresh process that resumes from the checkpoint
    images = [path for folder in sorted((cifar_root / "test").iterdir()) for path in sorted(folder.iterdir())[:2]]
    sliced_logits, whole_logits = logits(run_dir, images), logits(jobs.run_dir(whole.run_id), images)
    torch.testing.assert_close(sliced_logits, whole_logits, rtol=0, atol=0)


def test_quota_used_up_pauses_the_run_with_zerogpus_message_and_resume_finishes_it(
    tmp_path, monkeypatch, spaces, cifar_root
):
    jobs, plan = sliced(monkeypatch, spaces, tmp_path / "runs")
    plan[2] = {"budget": 1e6}
    spaces.quota_s = 0.0
    run = jobs.submit(run_config(cifar_root), cifar_root, "quota")
    jobs.drive(run.run_id)
    record = jobs.get(run.run_id)
    assert record.status == "paused" and "GPU quota" in record.cause and "Resume" in record.cause
    assert "You have exceeded your GPU quota (0s left vs. 3s requested)" in record.cause

    spaces.quota_s = None  # later, with quota again
    jobs.resume(run.run_id)
    jobs.drive(run.run_id)
    jobs.close()
    assert jobs.get(run.run_id).status == "finished"
    assert [call["outcome"] for call in spaces.calls] == ["quota", "ok"]


def test_stop_between_gpu_calls_cancels_at_once_and_stop_during_one_ends_it_at_a_checkpoint(
    tmp_path, monkeypatch, spaces, cifar_root
):
    jobs, plan = sliced(monkeypatch, spaces, tmp_path / "runs")
    waiting = jobs.submit(run_config(cifar_root), cifar_root, "never driven")
    jobs.tick()
    assert jobs.get(waiting.run_id).status == "running"  # launched; no request has lent it a call yet
    jobs.stop(waiting.run_id)
    jobs.tick()
    record = jobs.get(waiting.run_id)
    assert record.status == "cancelled" and record.cause == "stopped by request before it trained"
    assert not spaces.calls

    slow = SimpleNamespace(time=lambda: real_time.sleep(0.05) or real_time.time())  # about 0.1 s a step
    monkeypatch.setattr(trainer, "time", slow)
    monkeypatch.setattr(zerogpu, "time", slow)
    plan[1] = {"budget": 60.0}
    run = jobs.submit(run_config(cifar_root), cifar_root, "stopped")
    driver = threading.Thread(target=jobs.drive, args=(run.run_id,))
    driver.start()
    events = jobs.run_dir(run.run_id) / "events.jsonl"
    while driver.is_alive() and not (events.is_file() and any(e["type"] == "step" for e in read_events(events))):
        real_time.sleep(0.05)
    jobs.stop(run.run_id)
    driver.join(timeout=60)
    jobs.close()
    record = jobs.get(run.run_id)
    assert record.status == "cancelled" and "checkpoint was saved" in record.cause
    assert (jobs.run_dir(run.run_id) / "checkpoint" / "trainer_state.json").is_file()
    assert [call["outcome"] for call in spaces.calls] == ["ok"]


def test_the_app_on_zerogpu_uses_no_cuda_in_its_own_process_and_lends_only_the_owners_requests(
    tmp_path, monkeypatch, spaces
):
    with pytest.raises(RuntimeError, match="outside a @spaces.GPU call"):
        torch.zeros(1, device="cuda")  # the stand-in's rule: the app's process never initialises CUDA

    from app.ui import build_demo

    settings = AppSettings.from_env(
        {"SPACES_ZERO_GPU": "true", "SPACE_ID": "me/space", "SPECPL_DATA_DIR": str(tmp_path / "data")}
    )
    assert settings.zero_gpu and settings.multi_user and settings.training_slots == 4
    demo = build_demo(settings)  # would raise at the first CUDA use
    studio = demo.studio
    assert isinstance(studio.jobs.runner, ZeroGPURunner) and studio.jobs.runner.slice_s == 120
    driven = []
    monkeypatch.setattr(studio.jobs, "drive", driven.append)
    record = studio.jobs.add_imported(_empty_model(tmp_path), "theirs", owner="someone else")
    studio.jobs._update(record, status="running")  # an active run of another visitor
    me = SimpleNamespace(session_hash="me", headers={}, cookies={})
    studio.continue_training(record.run_id, me)
    assert driven == []  # a visitor's request never trains (or pays for) another visitor's run
    mine = studio.jobs.add_imported(_empty_model(tmp_path / "mine"), "mine", owner=studio.visitor(me))
    studio.jobs._update(mine, status="queued")  # as Resume leaves it
    studio.continue_training(mine.run_id, me)
    assert driven == [mine.run_id]
    # after Resume (Runs tab), Data & Train watches the resumed run and polls it; never another's
    runs = RunsTab(studio, [])
    watched, timer, status = runs.watch_resumed(mine.run_id, me)
    assert watched == mine.run_id and timer.active and status.startswith("Queued")
    assert runs.watch_resumed(record.run_id, me)[0] == gr.update()
    studio.jobs.close()


def _empty_model(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir(parents=True)
    return folder
