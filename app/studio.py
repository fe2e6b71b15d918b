"""Everything the UI's events do, as plain methods on `Studio` (settings, the job manager and the
warm model cache). The Blocks layout in `app.ui` only wires these to components.

Each event handler reports a problem the user can fix as a one-line message in its tab
(`user_messages`): bad uploads, unknown runs, an unavailable backbone or library part. An
unexpected error is logged with its traceback on the server and shown as one line, never as a
stack trace.
"""
from __future__ import annotations

import functools
import html
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Callable

import gradio as gr
import pandas as pd

from app import backbones
from app.analysis import BAND_VIEWS, PAIRS, FeatureUnavailable, band_view, counterfactual_view
from app.archives import UploadError
from app.bundles import export_bundle_zip, import_bundle_zip
from app.classify import classify_files
from app.jobs import ACTIVE, REQUEST_FILE, JobError, JobManager
from app.messages import first_sentence
from app.models import ModelCache
from app.progress import RunProgress, loss_frame, progress_html, read_progress, status_line
from app.settings import AppSettings
from app.uploads import DatasetSummary, add_builder_class, extract_dataset_zip, session_dir, summarize_dataset
from specpl import defaults
from specpl.backbone import BackboneUnavailable
from specpl.config import DataConfig, DecomposerConfig, MethodConfig, RunConfig, TrainConfig
from specpl.data import IMAGE_SUFFIXES
from specpl.methods import resolve_method_options
from specpl.registry import UnknownNameError

log = logging.getLogger(__name__)

USER_ERRORS = (UploadError, JobError, FeatureUnavailable, UnknownNameError, BackboneUnavailable, FileNotFoundError, ValueError)
RUN_COLUMNS = ["run", "name", "status", "method", "backbone", "accuracy", "created"]
MAX_PICKER_IMAGES = 500


def user_messages(outputs: int) -> Callable:
    """Turn a handler's errors into its last output (the tab's message); other outputs keep their value."""

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
            return message if outputs == 1 else (*[gr.update()] * (outputs - 1), message)

        return wrapper

    return decorate


class Studio:
    def __init__(self, settings: AppSettings) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.jobs = JobManager(settings.runs_dir, settings.training_slots, settings.stop_grace_s)
        self.models = ModelCache(int8=self.settings.cpu_int8)

    def session_dir(self, request: gr.Request | None) -> Path:
        return session_dir(self.settings.sessions_dir, getattr(request, "session_hash", None))

    def forget_session(self, request: gr.Request) -> None:
        """A closed tab's uploads are no longer reachable; runs keep their own copy of the data."""
        shutil.rmtree(self.session_dir(request), ignore_errors=True)

    # ----- Data & Train ----------------------------------------------------------------------

    @user_messages(outputs=4)
    def upload_zip(self, zip_path: str | None, split_ratio: float, request: gr.Request) -> tuple:
        """Unpack a zipped few-shot folder into this session's space and summarise it."""
        if not zip_path:
            raise UploadError("choose a .zip of class folders first")
        path = Path(zip_path)
        return self._dataset_outputs(self._unpack_zip(path, path.name, split_ratio, request), f"Dataset ready: {path.name}.")

    @user_messages(outputs=4)
    def use_demo_set(self, split_ratio: float, request: gr.Request) -> tuple:
        """The embedded SpectralWorld demo set, unpacked and checked exactly as an uploaded zip, so
        that a fresh offline install has data one click away."""
        path = Path(defaults.DEMO_ZIP)  # read at call time: tests substitute a stand-in
        if not path.is_file():
            raise UploadError(f"the demo set {path} is missing from this installation")
        summary = self._unpack_zip(path, "the demo set", split_ratio, request)
        return self._dataset_outputs(summary, f"Demo set ready: {len(summary.classnames)} SpectralWorld classes, which the embedded SpectralWorld CLIP knows.")

    def _unpack_zip(self, path: Path, label: str, split_ratio: float, request: gr.Request) -> DatasetSummary:
        return extract_dataset_zip(path, self.session_dir(request) / "datasets", self.settings.limits, label=label, split_ratio=split_ratio)

    @user_messages(outputs=2)
    def add_class(self, class_name: str, files: list[str] | None, request: gr.Request) -> tuple:
        if not files:
            raise UploadError("add one or more images for this class")
        builder = self.session_dir(request) / "builder"
        skipped = add_builder_class(builder, class_name, [Path(f) for f in files], self.settings.limits)
        classes = sorted(p.name for p in builder.iterdir() if p.is_dir())
        counts = ", ".join(f"{name.replace('_', ' ')} ({len(list((builder / name).iterdir()))})" for name in classes)
        note = f" Skipped: {'; '.join(skipped)}." if skipped else ""
        return f"Classes so far: {counts}.", f"Added class {class_name.strip()!r}.{note}"

    @user_messages(outputs=4)
    def use_builder(self, split_ratio: float, request: gr.Request) -> tuple:
        builder = self.session_dir(request) / "builder"
        if not builder.is_dir():
            raise UploadError("the builder is empty: add at least 2 classes with images")
        return self._dataset_outputs(summarize_dataset(builder, split_ratio, label="the builder"), "Using the classes built here.")

    def _dataset_outputs(self, summary: DatasetSummary, message: str) -> tuple:
        return str(summary.root), summary.markdown(), summary.gallery, message

    def backbone_note(self, key: str) -> str:
        return backbones.unavailable_message(key) or f"{backbones.option(key).title}: {backbones.availability(key).status}."

    @user_messages(outputs=3)
    def start_training(
        self, dataset_root: str | None, backbone_key: str, host: str, boosters: list[str] | None, decomposer: str,
        shots: float, epochs: float, lr: float, name: str, request: gr.Request,
    ) -> tuple:
        """Queue a training run; the worker process picks it up. Returns (run id, run id to remember, message)."""
        root = Path(dataset_root) if dataset_root else None
        if root is None or not root.is_dir() or not root.is_relative_to(self.session_dir(request)):
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
        record = self.jobs.submit(config, root, label)
        position = self.jobs.queue_position(record.run_id)
        running = sum(r.status == "running" for r in self.jobs.list())
        waiting = f" It waits at queue position {position} while {running} training(s) run." if position and running else ""
        return record.run_id, record.run_id, f"Started run {record.run_id}.{waiting}"

    @user_messages(outputs=1)
    def stop_training(self, run_id: str) -> str:
        record = self.jobs.stop(run_id)
        return "Cancelled before it started." if record.status == "cancelled" else "Stopping: the run saves a checkpoint, then its process ends."

    def run_status(self, run_id: str | None) -> tuple[str, pd.DataFrame, dict[str, Any]]:
        """Progress bar + status, the loss curve, and the details; read from disk every tick."""
        if not run_id:
            return progress_html(None, None, None), loss_frame(RunProgress()), {}
        try:
            record = self.jobs.get(run_id)
        except JobError:
            return f"<div class='specpl-status'>Run {html.escape(run_id)} no longer exists.</div>", loss_frame(RunProgress()), {}
        progress = read_progress(self.jobs.run_dir(run_id))
        position = self.jobs.queue_position(run_id)
        details = {
            "run_id": run_id, "status": record.status, "cause": record.cause, "queue_position": position,
            "step": progress.step, "total_steps": progress.total_steps, "eta_s": progress.eta_s, "metrics": progress.metrics,
        }
        return progress_html(record, progress, position), loss_frame(progress), details

    def poll_run(self, run_id: str | None) -> tuple[str, pd.DataFrame, dict[str, Any], gr.Timer]:
        """One tick of the status timer: `run_status`, and the timer itself, which stops once the
        watched run is over, so an idle page polls nothing."""
        status, curve, details = self.run_status(run_id)
        return status, curve, details, gr.Timer(active=details.get("status") in ACTIVE)

    def reattach(self, remembered: str | None) -> tuple[str, str]:
        """On page load: the run this browser started while it is active, else the one training
        now, else the remembered run's result."""
        known = remembered if remembered and self._exists(remembered) else None
        if known and self.jobs.get(known).active:
            return known, known
        chosen = self.jobs.active_run_id() or known or ""
        return chosen, chosen

    # ----- Bands ---------------------------------------------------------------------------

    @user_messages(outputs=5)
    def bands(self, image_path: str | None, decomposer: str, size: float) -> tuple:
        if not image_path:
            raise UploadError("upload an image or pick one from the dataset")
        view = band_view(self.models, Path(image_path), decomposer, int(size))
        timing = f"{decomposer} at {int(size)} px: {view.compute_s * 1000:.0f} ms" + (f" (loading it first took {view.load_s * 1000:.0f} ms)" if view.load_s > 0.05 else "")
        return (*[view.images[name] for name in BAND_VIEWS], timing)

    def dataset_images(self, root: str | None) -> dict:
        """Picker choices ("class/file") for a dataset or run data folder."""
        choices = []
        if root and Path(root).is_dir():
            files = sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            choices = [(str(p.relative_to(root)), str(p)) for p in files[:MAX_PICKER_IMAGES]]
        return gr.update(choices=choices, value=None)

    def picked_image(self, path: str | None) -> str | None:
        """A picker's choice, only if it is a file under the data directory."""
        return path if path and Path(path).is_file() and Path(path).resolve().is_relative_to(self.settings.data_dir) else None

    def run_images(self, run_id: str | None) -> tuple[dict, dict]:
        root = str(self.jobs.run_dir(run_id) / "data") if run_id and self._exists(run_id) else None
        return self.dataset_images(root), self.dataset_images(root)

    # ----- Counterfactual ----------------------------------------------------------------------

    @user_messages(outputs=11)
    def counterfactual(self, run_id: str | None, image_a: str | None, image_b: str | None, top_k: float) -> tuple:
        if not run_id:
            raise JobError("choose a finished run")
        if not image_a or not image_b:
            raise UploadError("give both image A and image B")
        view = counterfactual_view(self.models, self._model_dir(run_id), Path(image_a), Path(image_b), int(top_k))
        embedding = [view.embedding[pair] if view.embedding else None for pair in PAIRS]
        summary = view.summary if view.embedding else f"{view.summary} (This run has no SpecPL booster, so only the image-space swap is shown.)"
        return (*embedding, *[view.image_space[pair] for pair in PAIRS], *[view.swaps[pair] for pair in PAIRS[2:]], summary)

    # ----- Classify ----------------------------------------------------------------------------

    @user_messages(outputs=5)
    def classify(
        self, source: str, run_id: str | None, classnames: str, backbone_key: str, template: str,
        files: list[str] | None, top_k: float, request: gr.Request,
    ) -> tuple:
        """Top-k for each image, with a trained run or zero-shot CLIP on typed class names."""
        if source == "zero-shot":
            names = [c.strip() for c in (classnames or "").replace("\n", ",").split(",") if c.strip()]
            if len(names) < 2:
                raise UploadError("type at least 2 class names, separated by commas")
            if "{}" not in (template or ""):
                raise UploadError("the template needs a {} where the class name goes, e.g. 'a photo of a {}.'")
            problem = backbones.unavailable_message(backbone_key)
            if problem:
                raise UploadError(problem)
            try:
                predictor = self.models.zero_shot_predictor(backbones.resolve_backbone(backbone_key), names, template)
            except BackboneUnavailable as exc:
                raise UploadError(backbones.unavailable_message(backbone_key, reason=f"loading failed ({first_sentence(str(exc)).rstrip('.')})")) from None
        else:
            if not run_id:
                raise JobError("choose a finished run, or switch to zero-shot")
            predictor = self.models.bundle_predictor(self._model_dir(run_id))
        out_dir = self.session_dir(request) / "classify"
        result = classify_files(predictor, [Path(f) for f in files or []], int(top_k), self.settings.limits, out_dir)
        note = f" Skipped: {'; '.join(result.skipped)}." if result.skipped else ""
        return result.gallery, result.table, str(result.csv_path), result.first, f"Classified {len(result.gallery)} image(s) with the {predictor.precision} image tower.{note}"

    # ----- Runs ----------------------------------------------------------------------------------

    def runs_table(self) -> pd.DataFrame:
        rows = []
        for record in self.jobs.list():
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

    def run_choices(self, finished_only: bool) -> list[tuple[str, str]]:
        return [
            (f"{r.name} · {r.status} · {r.run_id}", r.run_id)
            for r in self.jobs.list()
            if not finished_only or (r.status == "finished" and (self.jobs.run_dir(r.run_id) / "model" / "config.json").is_file())
        ]

    def refresh_runs(self, selected: str | None = None) -> tuple:
        """The runs table and the three run pickers (Runs: all runs; Classify, Counterfactual: finished)."""
        finished = self.run_choices(True)
        everything = self.run_choices(False)
        keep = selected if selected in [v for _, v in everything] else None
        return self.runs_table(), gr.update(choices=everything, value=keep), gr.update(choices=finished), gr.update(choices=finished)

    def run_details(self, run_id: str | None) -> tuple:
        if not run_id or not self._exists(run_id):
            return {}, {}, loss_frame(RunProgress()), "Choose a run."
        record = self.jobs.get(run_id)
        progress = read_progress(self.jobs.run_dir(run_id))
        metrics = self._metrics(run_id)
        return self._run_config(run_id), metrics, loss_frame(progress), status_line(record, progress, self.jobs.queue_position(run_id))

    @user_messages(outputs=2)
    def export_bundle(self, run_id: str | None) -> tuple:
        if not run_id:
            raise JobError("choose a run to download")
        path = export_bundle_zip(self._model_dir(run_id), self.settings.exports_dir, f"specpl-{run_id}")
        return str(path), f"Bundle ready: {path.name} (model.safetensors, config.json, README.md)."

    @user_messages(outputs=1)
    def resume_run(self, run_id: str | None) -> str:
        record = self.jobs.resume(run_id or "")
        return f"Run {record.run_id} is queued again; it continues from its last checkpoint."

    @user_messages(outputs=2)
    def ask_delete(self, run_id: str | None) -> tuple:
        record = self.jobs.get(run_id or "")
        if record.active:
            raise JobError(f"run {record.run_id} is {record.status}; stop it before deleting it")
        return gr.update(visible=True), f"Delete run **{record.name}** ({record.run_id}) and all its files? This cannot be undone."

    @user_messages(outputs=2)
    def confirm_delete(self, run_id: str | None) -> tuple:
        self.jobs.delete(run_id or "")
        return gr.update(visible=False), f"Deleted run {run_id}."

    @user_messages(outputs=1)
    def import_bundle(self, zip_path: str | None) -> str:
        if not zip_path:
            raise UploadError("choose a bundle .zip first")
        path = Path(zip_path)
        staging_parent = self.settings.data_dir / "imports"
        staging_parent.mkdir(parents=True, exist_ok=True)
        bundle, config = import_bundle_zip(path, staging_parent, self.settings.limits, label=path.name)
        record = self.jobs.add_imported(bundle, name=f"imported {path.stem}")
        return f"Imported {path.name} as run {record.run_id} ({len(config['classnames'])} classes, {config['method']['host']})."

    # ----- helpers -----------------------------------------------------------------------------

    def _exists(self, run_id: str) -> bool:
        try:
            self.jobs.run_dir(run_id)
            return True
        except JobError:
            return False

    def _model_dir(self, run_id: str) -> Path:
        model_dir = self.jobs.run_dir(run_id) / "model"
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
