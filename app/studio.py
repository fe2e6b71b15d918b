"""Everything the UI's events do, as plain methods on `Studio` (settings, the job manager and the
warm model cache). The Blocks layout in `app.ui` only wires these to components.

Each event handler reports a problem the user can fix as a one-line message in its tab
(`user_messages`): bad uploads, unknown runs, an unavailable backbone or library part. An
unexpected error is logged with its traceback on the server and shown as one line, never as a
stack trace.

Every handler that touches a run asks `_owned` first. In hosted mode (`AppSettings.multi_user`) a
run that another visitor started is answered exactly like one that does not exist, so the API
refuses what the UI hides. Uploads live in the visitor's own folder (`user_dir`), which outlives
a reload, so a page can restore its dataset.
"""
from __future__ import annotations

import functools
import html
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import gradio as gr
import pandas as pd

from app import backbones
from app.analysis import BAND_VIEWS, PAIRS, FeatureUnavailable, band_view, counterfactual_view
from app.archives import UploadError
from app.bundles import export_bundle_zip, import_bundle_zip
from app.classify import classify_files
from app.identity import browser_token, folder_name, install_secret, owner_key
from app.jobs import ACTIVE, REQUEST_FILE, JobError, JobManager, RunRecord
from app.messages import first_sentence
from app.models import ModelCache
from app.progress import RunProgress, chance_note, loss_frame, progress_html, read_progress, series_colours, status_line
from app.settings import AppSettings
from app.uploads import DatasetSummary, add_builder_class, extract_dataset_zip, summarize_dataset
from specpl import defaults
from specpl.backbone import BackboneUnavailable
from specpl.config import DataConfig, DecomposerConfig, MethodConfig, RunConfig, TrainConfig
from specpl.data import IMAGE_SUFFIXES
from specpl.methods import resolve_method_options
from specpl.registry import UnknownNameError

log = logging.getLogger(__name__)

USER_ERRORS = (UploadError, JobError, FeatureUnavailable, UnknownNameError, BackboneUnavailable, FileNotFoundError, ValueError)
RUN_COLUMNS = ["run", "name", "status", "method", "backbone", "accuracy", "created"]
MAX_PICKER_CHOICES = 100  # matches listed at once; the search box reaches every image
USER_DIR_TTL_S = 7 * 24 * 3600  # a visitor's uploads are removed after a week without use
DATASET_CLEARED = (None, "", None)
WORLD_CAUTION = " ⚠️ The SpectralWorld CLIP knows only SpectralWorld images: on photos its labels and probabilities are guesses, however confident they look."  # dataset root, summary, thumbnails: what a failed upload leaves


def curve(progress: RunProgress) -> dict:
    """A loss-plot update: the frame and its colours (see `series_colours`), shown only once it has
    points. Gradio's plot fixes its colour scale when it is first drawn and later only swaps the
    data, so drawing an empty frame first left every line without a colour until a reload; a plot
    that appears with its first points draws them."""
    frame = loss_frame(progress)
    return gr.update(value=frame, color_map=series_colours(frame), visible=not frame.empty)


def user_messages(outputs: int, cleared: tuple | None = None) -> Callable:
    """Turn a handler's errors into its last output (the tab's message); the other outputs keep
    their value, or take `cleared` (so that a failed upload leaves no dataset active)."""

    def decorate(handler: Callable) -> Callable:
        @functools.wraps(handler)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return handler(*args, **kwargs)
            except USER_ERRORS as exc:
                message = f"⚠️ {exc}"
            except Exception as exc:  # noqa: BLE001 - the UI gets one line; the log keeps the traceback
                log.exception("%s failed", handler.__name__)
                message = f"⚠️ Something went wrong ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no details'}); the server log has details."
            return message if outputs == 1 else (*(cleared if cleared is not None else [gr.update()] * (outputs - 1)), message)

        return wrapper

    return decorate


class Studio:
    def __init__(self, settings: AppSettings) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.jobs = JobManager(settings.runs_dir, settings.training_slots, settings.stop_grace_s)
        self.models = ModelCache(int8=self.settings.cpu_int8)
        self._secret = install_secret(settings.data_dir)

    # ----- who is asking ---------------------------------------------------------------------

    def visitor(self, request: gr.Request | None, profile: gr.OAuthProfile | None = None) -> str:
        """The owner key of this request: the signed-in user, else the browser, else the page session."""
        return owner_key(getattr(profile, "username", None), browser_token(request), getattr(request, "session_hash", None))

    def user_dir(self, owner: str) -> Path:
        """The visitor's own folder for uploads; it survives a reload (runs copy what they train on)."""
        return self.settings.sessions_dir / folder_name(self._secret, owner)

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

    def _fresh_user_dir(self, owner: str) -> Path:
        self._prune_user_dirs()
        folder = self.user_dir(owner)
        folder.mkdir(parents=True, exist_ok=True)
        folder.touch()  # marks it as in use
        return folder

    def _may_see(self, record: RunRecord, owner: str) -> bool:
        return not self.settings.multi_user or record.owner == owner

    def _owned(self, run_id: str | None, owner: str) -> RunRecord:
        """The run, if this visitor may see it; another visitor's run reads as no run at all."""
        record = self.jobs.get(run_id or "")
        if not self._may_see(record, owner):
            raise JobError(f"there is no run {run_id!r}")
        return record

    def _visible_runs(self, owner: str) -> list[RunRecord]:
        return [r for r in self.jobs.list() if self._may_see(r, owner)]

    # ----- Data & Train ----------------------------------------------------------------------

    @user_messages(outputs=4, cleared=DATASET_CLEARED)
    def upload_zip(self, zip_path: str | None, split_ratio: float, request: gr.Request, profile: gr.OAuthProfile | None = None) -> tuple:
        """Unpack a zipped few-shot folder into this visitor's space and summarise it. A refused
        upload clears the active dataset, so Start never trains on an earlier one by mistake."""
        if not zip_path:
            raise UploadError("choose a .zip of class folders first")
        path = Path(zip_path)
        return self._dataset_outputs(self._unpack_zip(path, path.name, split_ratio, request, profile), f"Dataset ready: {path.name}.")

    @user_messages(outputs=4, cleared=DATASET_CLEARED)
    def use_demo_set(self, split_ratio: float, request: gr.Request, profile: gr.OAuthProfile | None = None) -> tuple:
        """The embedded SpectralWorld demo set, unpacked and checked exactly as an uploaded zip, so
        that a fresh offline install has data one click away."""
        path = Path(defaults.DEMO_ZIP)  # read at call time: tests substitute a stand-in
        if not path.is_file():
            raise UploadError(f"the demo set {path} is missing from this installation")
        summary = self._unpack_zip(path, "the demo set", split_ratio, request, profile)
        return self._dataset_outputs(summary, f"Demo set ready: {len(summary.classnames)} SpectralWorld classes, which the embedded SpectralWorld CLIP knows.")

    def _unpack_zip(self, path: Path, label: str, split_ratio: float, request: gr.Request, profile: gr.OAuthProfile | None) -> DatasetSummary:
        datasets = self._fresh_user_dir(self.visitor(request, profile)) / "datasets"
        return extract_dataset_zip(path, datasets, self.settings.limits, label=label, split_ratio=split_ratio)

    @user_messages(outputs=2)
    def add_class(self, class_name: str, files: list[str] | None, request: gr.Request, profile: gr.OAuthProfile | None = None) -> tuple:
        if not files:
            raise UploadError("add one or more images for this class")
        builder = self._fresh_user_dir(self.visitor(request, profile)) / "builder"
        skipped = add_builder_class(builder, class_name, [Path(f) for f in files], self.settings.limits)
        classes = sorted(p.name for p in builder.iterdir() if p.is_dir())
        counts = ", ".join(f"{name.replace('_', ' ')} ({len(list((builder / name).iterdir()))})" for name in classes)
        note = f" Skipped: {'; '.join(skipped)}." if skipped else ""
        return f"Classes so far: {counts}.", f"Added class {class_name.strip()!r}.{note}"

    @user_messages(outputs=4, cleared=DATASET_CLEARED)
    def use_builder(self, split_ratio: float, request: gr.Request, profile: gr.OAuthProfile | None = None) -> tuple:
        builder = self.user_dir(self.visitor(request, profile)) / "builder"
        if not builder.is_dir():
            raise UploadError("the builder is empty: add at least 2 classes with images")
        return self._dataset_outputs(summarize_dataset(builder, split_ratio, label="the builder"), "Using the classes built here.")

    def _dataset_outputs(self, summary: DatasetSummary, message: str) -> tuple:
        return str(summary.root), summary.markdown(), summary.gallery, message

    def saved_dataset(self, root: str | None, split_ratio: float) -> dict:
        """What the browser keeps of the active dataset, to restore it after a reload; {} for none
        (the browser would not overwrite its stored value with a null)."""
        return {"root": root, "split_ratio": split_ratio} if root else {}

    def restore_dataset(self, saved: dict | None, request: gr.Request, profile: gr.OAuthProfile | None = None) -> tuple:
        """On page load: the dataset this browser had, if it is still on disk and in its own folder
        (the stored path comes from the browser, so it is checked like any input)."""
        root = Path(str((saved or {}).get("root") or ""))
        if not (saved and root.is_dir() and root.resolve().is_relative_to(self.user_dir(self.visitor(request, profile)).resolve())):
            return (*DATASET_CLEARED, "")
        try:
            summary = summarize_dataset(root, float(saved.get("split_ratio") or 0.5), label="the dataset")
        except UploadError:
            return (*DATASET_CLEARED, "")
        return self._dataset_outputs(summary, "Dataset restored from your last visit.")

    def backbone_note(self, key: str) -> str:
        return backbones.unavailable_message(key) or f"{backbones.option(key).title}: {backbones.availability(key).status}."

    @user_messages(outputs=3)
    def start_training(
        self, dataset_root: str | None, backbone_key: str, host: str, boosters: list[str] | None, decomposer: str,
        shots: float, epochs: float, lr: float, name: str, request: gr.Request, profile: gr.OAuthProfile | None = None,
    ) -> tuple:
        """Queue a training run; the worker process picks it up. Returns (run id, run id to remember, message)."""
        owner = self.visitor(request, profile)
        root = Path(dataset_root) if dataset_root else None
        if root is None or not root.is_dir() or not root.resolve().is_relative_to(self.user_dir(owner).resolve()):
            raise UploadError("upload a dataset (.zip) or build one before starting")
        problem = backbones.unavailable_message(backbone_key)
        if problem:
            raise UploadError(problem)
        config = RunConfig(
            backbone=backbones.resolve_backbone(backbone_key),
            decomposer=DecomposerConfig(name=decomposer),
            method=MethodConfig(host=host, boosters=list(boosters or [])),
            data=DataConfig(root=str(root), shots=int(shots) or None),
            train=TrainConfig(epochs=int(epochs) or None, lr=float(lr) or None),
        )
        resolve_method_options(config.method)  # unknown methods or options fail here, not in the worker
        label = name.strip() or "+".join([host, *config.method.boosters])
        record = self.jobs.submit(config, root, label, owner=owner)
        position = self.jobs.queue_position(record.run_id)
        running = sum(r.status == "running" for r in self.jobs.list())
        waiting = f" It waits at queue position {position} while {running} training(s) run." if position and running else ""
        return record.run_id, record.run_id, f"Started run {record.run_id}.{waiting}"

    @user_messages(outputs=1)
    def stop_training(self, run_id: str, request: gr.Request, profile: gr.OAuthProfile | None = None) -> str:
        self._owned(run_id, self.visitor(request, profile))
        record = self.jobs.stop(run_id)
        return "Cancelled before it started." if record.status == "cancelled" else "Stopping: the run saves a checkpoint, then its process ends."

    def run_status(self, run_id: str | None, request: gr.Request, profile: gr.OAuthProfile | None = None) -> tuple[str, dict, dict[str, Any]]:
        """Progress bar + status, the loss curve, and the details; read from disk every tick."""
        if not run_id:
            return progress_html(None, None, None), curve(RunProgress()), {}
        try:
            record = self._owned(run_id, self.visitor(request, profile))
        except JobError:
            return f"<div class='specpl-status'>Run {html.escape(run_id)} no longer exists.</div>", curve(RunProgress()), {}
        progress = read_progress(self.jobs.run_dir(run_id))
        position = self.jobs.queue_position(run_id)
        details = {
            "run_id": run_id, "status": record.status, "cause": record.cause, "queue_position": position,
            "step": progress.step, "total_steps": progress.total_steps, "eta_s": progress.eta_s, "metrics": progress.metrics,
        }
        backbone = self._run_config(run_id).get("backbone")
        return progress_html(record, progress, position, backbone), curve(progress), details

    def poll_run(self, run_id: str | None, request: gr.Request, profile: gr.OAuthProfile | None = None) -> tuple:
        """One tick of the status timer: `run_status`, and the timer itself, which stops once the
        watched run is over, so an idle page polls nothing. The Start/Stop message is cleared when
        the run ends, so that "Stopping…" never sits above "Cancelled" or "Finished"."""
        status, curve, details = self.run_status(run_id, request, profile)
        active = details.get("status") in ACTIVE
        return status, curve, details, gr.Timer(active=active), gr.update() if active else ""

    def reattach(self, remembered: str | None, request: gr.Request, profile: gr.OAuthProfile | None = None) -> tuple[str, str]:
        """On page load: the run this browser started while it is active, else the one training
        now (hosted: only the visitor's own), else the remembered run's result."""
        owner = self.visitor(request, profile)
        visible = self._visible_runs(owner)
        known = next((r for r in visible if r.run_id == remembered), None) if remembered else None
        if known and known.active:
            return known.run_id, known.run_id
        active = sorted((r for r in visible if r.active), key=lambda r: (r.status != "running", r.queued_at or r.created))
        chosen = active[0].run_id if active else (known.run_id if known else "")
        return chosen, chosen

    # ----- Bands ---------------------------------------------------------------------------

    @user_messages(outputs=5)
    def bands(self, image_path: str | None, decomposer: str, size: float) -> tuple:
        if not image_path:
            raise UploadError("upload an image or pick one from the dataset")
        view = band_view(self.models, Path(image_path), decomposer, int(size))
        timing = f"{decomposer} at {int(size)} px: {view.compute_s * 1000:.0f} ms" + (f" (loading it first took {view.load_s * 1000:.0f} ms)" if view.load_s > 0.05 else "")
        return (*[view.images[name] for name in BAND_VIEWS], timing)

    def dataset_images(self, root: str | None, query: str = "") -> tuple[dict, str]:
        """Picker choices ("class/file") for a dataset or run data folder: every image whose path
        contains each word of `query`, the first `MAX_PICKER_CHOICES` of them listed."""
        if not root or not Path(root).is_dir():
            return gr.update(choices=[], value=None), ""
        files = sorted(p.relative_to(root).as_posix() for p in Path(root).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        words = (query or "").lower().split()
        matches = [name for name in files if all(word in name.lower() for word in words)]
        choices = [(name, str(Path(root) / name)) for name in matches[:MAX_PICKER_CHOICES]]
        found = f"{len(matches)} of {len(files)} images match {query.strip()!r}" if words else f"{len(files)} images"
        more = f"; the first {MAX_PICKER_CHOICES} are listed, type part of a class or file name to narrow them" if len(matches) > MAX_PICKER_CHOICES else ""
        return gr.update(choices=choices, value=None), f"{found}{more}."

    def picked_image(self, path: str | None, request: gr.Request, profile: gr.OAuthProfile | None = None) -> str | None:
        """A picker's choice, only if it is an image in this visitor's uploads or in a run they may see."""
        if not path or not Path(path).is_file():
            return None
        resolved = Path(path).resolve()
        owner = self.visitor(request, profile)
        if resolved.is_relative_to(self.user_dir(owner).resolve()):
            return path
        runs = self.settings.runs_dir.resolve()
        if resolved.is_relative_to(runs) and len(resolved.relative_to(runs).parts) > 2 and resolved.relative_to(runs).parts[1] == "data":
            try:
                self._owned(resolved.relative_to(runs).parts[0], owner)
                return path
            except JobError:
                return None
        return None

    def run_images(self, run_id: str | None, query: str, request: gr.Request, profile: gr.OAuthProfile | None = None) -> tuple[dict, dict, str]:
        try:
            root = str(self.jobs.run_dir(self._owned(run_id, self.visitor(request, profile)).run_id) / "data") if run_id else None
        except JobError:
            root = None
        picker, found = self.dataset_images(root, query)
        return picker, picker, found

    # ----- Counterfactual ----------------------------------------------------------------------

    @user_messages(outputs=11)
    def counterfactual(self, run_id: str | None, image_a: str | None, image_b: str | None, top_k: float, request: gr.Request, profile: gr.OAuthProfile | None = None) -> tuple:
        if not run_id:
            raise JobError("choose a finished run")
        if not image_a or not image_b:
            raise UploadError("give both image A and image B")
        view = counterfactual_view(self.models, self._model_dir(run_id, self.visitor(request, profile)), Path(image_a), Path(image_b), int(top_k))
        embedding = [view.embedding[pair] if view.embedding else None for pair in PAIRS]
        summary = view.summary if view.embedding else f"{view.summary} (This run has no SpecPL booster, so only the image-space swap is shown.)"
        return (*embedding, *[view.image_space[pair] for pair in PAIRS], *[view.swaps[pair] for pair in PAIRS[2:]], summary)

    # ----- Classify ----------------------------------------------------------------------------

    @user_messages(outputs=5)
    def classify(
        self, source: str, run_id: str | None, classnames: str, backbone_key: str, template: str,
        files: list[str] | None, top_k: float, request: gr.Request, profile: gr.OAuthProfile | None = None,
    ) -> tuple:
        """Top-k for each image, with a trained run or zero-shot CLIP on typed class names; the
        message warns when the model is known to guess (near-chance run, or the SpectralWorld CLIP)."""
        owner = self.visitor(request, profile)
        if source == "zero-shot":
            names = [c.strip() for c in (classnames or "").replace("\n", ",").split(",") if c.strip()]
            if len(names) < 2:
                raise UploadError("type at least 2 class names, separated by commas")
            if "{}" not in (template or ""):
                raise UploadError("the template needs a {} where the class name goes, e.g. 'a photo of a {}.'")
            problem = backbones.unavailable_message(backbone_key)
            if problem:
                raise UploadError(problem)
            backbone = backbones.resolve_backbone(backbone_key)
            try:
                predictor = self.models.zero_shot_predictor(backbone, names, template)
            except BackboneUnavailable as exc:
                raise UploadError(backbones.unavailable_message(backbone_key, reason=f"loading failed ({first_sentence(str(exc)).rstrip('.')})")) from None
            caution = WORLD_CAUTION if backbone.name == defaults.WORLD_MODEL else ""
        else:
            if not run_id:
                raise JobError("choose a finished run, or switch to zero-shot")
            predictor = self.models.bundle_predictor(self._model_dir(run_id, owner))
            caution = self._run_caution(run_id)
        out_dir = self._fresh_user_dir(owner) / "classify"
        result = classify_files(predictor, [Path(f) for f in files or []], int(top_k), self.settings.limits, out_dir)
        note = f" Skipped: {'; '.join(result.skipped)}." if result.skipped else ""
        message = f"Classified {len(result.gallery)} image(s) with the {predictor.precision} image tower.{note}{caution}"
        return result.gallery, result.table, str(result.csv_path), result.first, message

    def _run_caution(self, run_id: str) -> str:
        """The chance warning of a run's test accuracy, or the SpectralWorld note, for Classify."""
        metrics = self._metrics(run_id)
        backbone = self._run_config(run_id).get("backbone")
        accuracy, classes = metrics.get("accuracy"), len(metrics.get("per_class") or self._run_config(run_id).get("classnames") or [])
        if isinstance(accuracy, (int, float)):
            warning = chance_note(float(accuracy), classes, backbone)
            if warning:
                return f" This run's test accuracy was {accuracy:.1f}%.{warning}"
        return WORLD_CAUTION if (backbone or {}).get("name") == defaults.WORLD_MODEL else ""

    # ----- Runs ----------------------------------------------------------------------------------

    def runs_table(self, owner: str) -> pd.DataFrame:
        rows = []
        for record in self._visible_runs(owner):
            config = self._run_config(record.run_id)
            method = config.get("method", {})
            accuracy = self._metrics(record.run_id).get("accuracy")
            rows.append([
                record.run_id, record.name, record.status + (" (imported)" if record.imported else ""),
                "+".join([method.get("host", "?"), *method.get("boosters", [])]),
                config.get("backbone", {}).get("name", "?"),
                f"{accuracy:.1f}%" if isinstance(accuracy, (int, float)) else "",
                pd.Timestamp(record.created, unit="s").strftime("%Y-%m-%d %H:%M"),
            ])
        return pd.DataFrame(rows, columns=RUN_COLUMNS)

    def run_choices(self, owner: str, finished_only: bool) -> list[tuple[str, str]]:
        return [
            (f"{r.name} · {r.status} · {r.run_id}", r.run_id)
            for r in self._visible_runs(owner)
            if not finished_only or (r.status == "finished" and (self.jobs.run_dir(r.run_id) / "model" / "config.json").is_file())
        ]

    def refresh_runs(self, selected: str | None, request: gr.Request, profile: gr.OAuthProfile | None = None) -> tuple:
        """The runs table and the three run pickers (Runs: all runs; Classify, Counterfactual: finished)."""
        owner = self.visitor(request, profile)
        finished = self.run_choices(owner, True)
        everything = self.run_choices(owner, False)
        keep = selected if selected in [v for _, v in everything] else None
        return self.runs_table(owner), gr.update(choices=everything, value=keep), gr.update(choices=finished), gr.update(choices=finished)

    def run_details(self, run_id: str | None, request: gr.Request, profile: gr.OAuthProfile | None = None) -> tuple:
        """Config, metrics, curve and status of the chosen run; the previous run's message and
        bundle are cleared, so nothing on the tab speaks of another run."""
        try:
            record = self._owned(run_id, self.visitor(request, profile))
        except JobError:
            return {}, {}, curve(RunProgress()), "Choose a run.", "", None
        progress = read_progress(self.jobs.run_dir(record.run_id))
        config = self._run_config(record.run_id)
        line = status_line(record, progress, self.jobs.queue_position(record.run_id), config.get("backbone"))
        return config, self._metrics(record.run_id), curve(progress), line, "", None

    @user_messages(outputs=2)
    def export_bundle(self, run_id: str | None, request: gr.Request, profile: gr.OAuthProfile | None = None) -> tuple:
        if not run_id:
            raise JobError("choose a run to download")
        path = export_bundle_zip(self._model_dir(run_id, self.visitor(request, profile)), self.settings.exports_dir, f"specpl-{run_id}")
        return str(path), f"Bundle ready: {path.name} (model.safetensors, config.json, README.md)."

    @user_messages(outputs=1)
    def resume_run(self, run_id: str | None, request: gr.Request, profile: gr.OAuthProfile | None = None) -> str:
        self._owned(run_id, self.visitor(request, profile))
        record = self.jobs.resume(run_id or "")
        return f"Run {record.run_id} is queued again; it continues from its last checkpoint."

    @user_messages(outputs=2)
    def ask_delete(self, run_id: str | None, request: gr.Request, profile: gr.OAuthProfile | None = None) -> tuple:
        record = self._owned(run_id, self.visitor(request, profile))
        if record.active:
            raise JobError(f"run {record.run_id} is {record.status}; stop it before deleting it")
        return gr.update(visible=True), f"Delete run **{record.name}** ({record.run_id}) and all its files? This cannot be undone."

    @user_messages(outputs=3)
    def confirm_delete(self, run_id: str | None, request: gr.Request, profile: gr.OAuthProfile | None = None) -> tuple:
        """Delete the run, its exported bundle and Gradio's served copies of it: a deleted run's
        bundle must not stay downloadable."""
        record = self._owned(run_id, self.visitor(request, profile))
        self.jobs.delete(record.run_id)
        bundle_name = f"specpl-{record.run_id}.zip"
        for copy in [self.settings.exports_dir / bundle_name, *self.settings.gradio_cache_dir.rglob(bundle_name)]:
            copy.unlink(missing_ok=True)
            if copy.parent != self.settings.exports_dir and not any(copy.parent.iterdir()):
                copy.parent.rmdir()
        return gr.update(visible=False), None, f"Deleted run {record.run_id} and its bundle."

    @user_messages(outputs=1)
    def import_bundle(self, zip_path: str | None, request: gr.Request, profile: gr.OAuthProfile | None = None) -> str:
        if not zip_path:
            raise UploadError("choose a bundle .zip first")
        path = Path(zip_path)
        staging_parent = self.settings.data_dir / "imports"
        staging_parent.mkdir(parents=True, exist_ok=True)
        bundle, config = import_bundle_zip(path, staging_parent, self.settings.limits, label=path.name)
        record = self.jobs.add_imported(bundle, name=f"imported {path.stem}", owner=self.visitor(request, profile))
        return f"Imported {path.name} as run {record.run_id} ({len(config['classnames'])} classes, {config['method']['host']})."

    # ----- helpers -----------------------------------------------------------------------------

    def _model_dir(self, run_id: str, owner: str) -> Path:
        model_dir = self.jobs.run_dir(self._owned(run_id, owner).run_id) / "model"
        if not (model_dir / "config.json").is_file():
            raise JobError(f"run {run_id} has no trained model yet")
        return model_dir

    def _run_config(self, run_id: str) -> dict[str, Any]:
        """A trained run's request, or an imported bundle's config."""
        run_dir = self.jobs.run_dir(run_id)
        for path, key in ((run_dir / REQUEST_FILE, "config"), (run_dir / "model" / "config.json", None)):
            if path.is_file():
                raw = json.loads(path.read_text(encoding="utf-8"))
                return raw[key] if key else raw
        return {}

    def _metrics(self, run_id: str) -> dict[str, Any]:
        """metrics.json of a trained run; an imported bundle carries its metrics in its config."""
        run_dir = self.jobs.run_dir(run_id)
        if (run_dir / "metrics.json").is_file():
            return json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
        bundle_config = run_dir / "model" / "config.json"
        return json.loads(bundle_config.read_text(encoding="utf-8")).get("metrics", {}) if bundle_config.is_file() else {}
