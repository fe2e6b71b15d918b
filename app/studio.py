"""What every tab's handlers share, as `Studio`: the settings, the job manager, the warm model cache,
and who is asking (the visitor, their own folder, and which runs they may see).

Every handler that touches a run asks `owned` first. In hosted mode (`AppSettings.multi_user`) a
run that another visitor started is answered exactly like one that does not exist, so the API
refuses what the UI hides. Uploads live in the visitor's own folder (`user_dir`), which outlives
a reload, so a page can restore its dataset.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import gradio as gr

from app.runtime.identity import browser_token, folder_name, install_secret, owner_key
from app.runtime.jobs import JobError, JobManager, RunRecord
from app.runtime.models import ModelCache
from app.runtime.runners import ProcessRunner, Runner
from app.runtime.settings import AppSettings
from app.runtime.zerogpu import ZeroGPURunner

USER_DIR_TTL_S = 7 * 24 * 3600  # a visitor's uploads are removed after a week without use


def training_runner(settings: AppSettings) -> Runner:
    """Who trains the runs: GPU calls from visitors' requests on a ZeroGPU Space, else a worker process."""
    if settings.zero_gpu:
        return ZeroGPURunner(settings.gpu_slice_s)
    return ProcessRunner(stop_grace_s=settings.stop_grace_s)


class Studio:
    def __init__(self, settings: AppSettings) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.jobs = JobManager(settings.runs_dir, settings.training_slots, runner=training_runner(settings))
        self.models = ModelCache(int8=self.settings.cpu_int8)
        self._secret = install_secret(settings.data_dir)

    # ----- who is asking ---------------------------------------------------------------------

    def visitor(self, request: gr.Request | None, profile: gr.OAuthProfile | None = None) -> str:
        """The owner key of this request: the signed-in user, else the browser, else the page session."""
        return owner_key(
            getattr(profile, "username", None), browser_token(request), getattr(request, "session_hash", None)
        )

    def user_dir(self, owner: str) -> Path:
        """The visitor's own folder for uploads; it survives a reload (runs copy what they train on)."""
        return self.settings.sessions_dir / folder_name(self._secret, owner)

    def fresh_user_dir(self, owner: str) -> Path:
        """The visitor's folder, created and marked as in use (other visitors' unused folders are pruned)."""
        self._prune_user_dirs()
        folder = self.user_dir(owner)
        folder.mkdir(parents=True, exist_ok=True)
        folder.touch()  # marks it as in use
        return folder

    def forget_session(self, request: gr.Request) -> None:
        """A closed tab whose only identity was its page session can never come back: drop its uploads.
        A browser's folder stays for its next visit and goes after `USER_DIR_TTL_S` without use."""
        owner = self.visitor(request)
        if owner.startswith("session:"):
            shutil.rmtree(self.user_dir(owner), ignore_errors=True)

    def _prune_user_dirs(self) -> None:
        if not self.settings.sessions_dir.is_dir():
            return
        cutoff = time.time() - USER_DIR_TTL_S
        for folder in self.settings.sessions_dir.iterdir():
            if folder.is_dir() and folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)

    # ----- which runs and files they may use -------------------------------------------------

    def _may_see(self, record: RunRecord, owner: str) -> bool:
        return not self.settings.multi_user or record.owner == owner

    def owned(self, run_id: str | None, owner: str) -> RunRecord:
        """The run, if this visitor may see it; another visitor's run reads as no run at all."""
        record = self.jobs.get(run_id or "")
        if not self._may_see(record, owner):
            raise JobError(f"there is no run {run_id!r}")
        return record

    def visible_runs(self, owner: str) -> list[RunRecord]:
        return [r for r in self.jobs.list() if self._may_see(r, owner)]

    def continue_training(
        self, run_id: str | None, request: gr.Request, profile: gr.OAuthProfile | None = None
    ) -> None:
        """Lend this request to the visitor's own active run (`JobManager.drive`): on a ZeroGPU
        Space the run trains in GPU calls made here, paid from this visitor's quota; with a worker
        process it returns at once."""
        try:
            record = self.owned(run_id, self.visitor(request, profile))
        except JobError:
            return
        if record.active:
            self.jobs.drive(record.run_id)

    def model_dir(self, run_id: str, owner: str) -> Path:
        """The trained model of a run this visitor may see."""
        model_dir = self.jobs.run_dir(self.owned(run_id, owner).run_id) / "model"
        if not (model_dir / "config.json").is_file():
            raise JobError(f"run {run_id} has no trained model yet")
        return model_dir

    def picked_image(self, path: str | None, request: gr.Request, profile: gr.OAuthProfile | None = None) -> str | None:
        """A picker's choice, only if it is an image in this visitor's uploads or in a run they may see."""
        if not path or not Path(path).is_file():
            return None
        resolved = Path(path).resolve()
        owner = self.visitor(request, profile)
        if resolved.is_relative_to(self.user_dir(owner).resolve()):
            return path
        runs = self.settings.runs_dir.resolve()
        if (
            resolved.is_relative_to(runs)
            and len(resolved.relative_to(runs).parts) > 2
            and resolved.relative_to(runs).parts[1] == "data"
        ):
            try:
                self.owned(resolved.relative_to(runs).parts[0], owner)
                return path
            except JobError:
                return None
        return None
