"""The Classify tab: top-k labels for one or many images, as a gallery, a table and a CSV, from a
trained run or zero-shot CLIP with class names the visitor types."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from app.files.archives import UploadError
from app.messages import first_sentence
from app.runtime import backbones
from app.runtime.jobs import JobError
from app.studio import Studio
from app.tabs.shared import RunPicker, Shared, user_messages
from app.views.classification import classify_files
from app.views.progress import chance_note, read_metrics, read_run_config
from app.views.widgets import load_when_opened
from specpl import defaults
from specpl.backbone import BackboneUnavailable
from specpl.world.demo_zip import DEMO_CLASSES

WORLD_EXAMPLES = ", ".join(DEMO_CLASSES[:3])
WORLD_CAUTION = (
    " ⚠️ The SpectralWorld CLIP knows only SpectralWorld images: "
    "on photos its labels and probabilities are guesses, however confident they look."
)


class ClassifyTab:
    """The tab's handlers."""

    def __init__(self, studio: Studio) -> None:
        self.studio = studio

    @user_messages(outputs=5)
    def classify(
        self,
        source: str,
        run_id: str | None,
        classnames: str,
        backbone_key: str,
        template: str,
        files: list[str] | None,
        top_k: float,
        request: gr.Request,
        profile: gr.OAuthProfile | None = None,
    ) -> tuple:
        """Top-k for each image, with a trained run or zero-shot CLIP on typed class names; the
        message warns when the model is known to guess (near-chance run, or the SpectralWorld CLIP)."""
        owner = self.studio.visitor(request, profile)
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
                predictor = self.studio.models.zero_shot_predictor(backbone, names, template)
            except BackboneUnavailable as exc:
                raise UploadError(
                    backbones.unavailable_message(
                        backbone_key, reason=f"loading failed ({first_sentence(str(exc)).rstrip('.')})"
                    )
                ) from None
            caution = WORLD_CAUTION if backbone.name == defaults.WORLD_MODEL else ""
        else:
            if not run_id:
                raise JobError("choose a finished run, or switch to zero-shot")
            predictor = self.studio.models.bundle_predictor(self.studio.model_dir(run_id, owner))
            caution = self._run_caution(run_id)
        out_dir = self.studio.fresh_user_dir(owner) / "classify"
        result = classify_files(
            predictor, [Path(f) for f in files or []], int(top_k), self.studio.settings.limits, out_dir
        )
        note = f" Skipped: {'; '.join(result.skipped)}." if result.skipped else ""
        message = (
            f"Classified {len(result.gallery)} image(s) with the {predictor.precision} image tower.{note}{caution}"
        )
        return result.gallery, result.shown_table, str(result.csv_path), result.first, message

    def _run_caution(self, run_id: str) -> str:
        """The chance warning of a run's test accuracy, or the SpectralWorld note, for Classify."""
        run_dir = self.studio.jobs.run_dir(run_id)
        metrics = read_metrics(run_dir)
        backbone = read_run_config(run_dir).get("backbone")
        accuracy, classes = (
            metrics.get("accuracy"),
            len(metrics.get("per_class") or read_run_config(run_dir).get("classnames") or []),
        )
        if isinstance(accuracy, (int, float)):
            warning = chance_note(float(accuracy), classes, backbone)
            if warning:
                return f" This run's test accuracy was {accuracy:.1f}%.{warning}"
        return WORLD_CAUTION if (backbone or {}).get("name") == defaults.WORLD_MODEL else ""


def build(shared: Shared) -> None:
    """The tab's components and events."""
    handlers = ClassifyTab(shared.studio)
    default_backbone = backbones.default_backbone_key()
    fallback = backbones.fallback_note()  # set when offline: the world CLIP is the default
    with gr.Tab("Classify", id="classify") as classify_tab:
        with gr.Row():
            with gr.Column():
                source = gr.Radio(
                    [("A trained run", "run"), ("Zero-shot CLIP", "zero-shot")], value="run", label="Model"
                )
                classify_run = gr.Dropdown([], label="Trained run", allow_custom_value=True)
                zs_classes = gr.Textbox(
                    label="Class names for zero-shot (comma-separated)",
                    placeholder=WORLD_EXAMPLES if fallback else "cat, dog, horse",
                )
                zs_backbone = gr.Dropdown(
                    backbones.dropdown_choices(),
                    value=default_backbone,
                    label="Zero-shot backbone",
                    elem_id="zs-backbone",
                )
                zs_note = gr.Markdown(
                    backbones.fallback_note(hint=f"type SpectralWorld class names, e.g. {WORLD_EXAMPLES}")
                    if fallback
                    else backbones.note(default_backbone),
                    elem_id="zs-note",
                )
                zs_template = gr.Textbox("a photo of a {}.", label="Prompt template")
                classify_images = gr.File(label="Images", file_count="multiple", file_types=["image"])
                top_k = gr.Slider(1, 10, value=3, step=1, label="Top-k")
                classify_go = gr.Button("Classify", variant="primary")
                classify_message = gr.Markdown()
            with gr.Column():
                top_label = gr.Label(label="First image")
                classify_gallery = gr.Gallery(label="Results", columns=4, height=260)
                classify_table = gr.Dataframe(label="Top-k per image", interactive=False)
                classify_csv = gr.File(label="CSV", interactive=False)
    load_when_opened(classify_tab)
    shared.run_pickers.append(RunPicker(classify_run, finished_only=True))
    shared.list_runs_after.append(classify_tab.select)

    zs_backbone.change(backbones.note, zs_backbone, zs_note, api_visibility="private")
    classify_go.click(
        handlers.classify,
        [source, classify_run, zs_classes, zs_backbone, zs_template, classify_images, top_k],
        [classify_gallery, classify_table, classify_csv, top_label, classify_message],
        api_name="classify",
    )
