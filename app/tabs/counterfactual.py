"""The Counterfactual tab: swap the low and high bands of two images and see a trained run's
predictions, in SpecPL's granule path as trained and as a decoded image-space swap."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from app.files.archives import UploadError
from app.runtime.jobs import JobError
from app.studio import Studio
from app.tabs.shared import RunPicker, Shared, user_messages
from app.views.analysis import PAIRS, counterfactual_view
from app.views.widgets import dataset_images, image_input, load_when_opened


def modulation_note(cosines: dict[str, float] | None) -> str:
    """cos(image feature before FiLM, after) for each pair of the granule path; 1.0 means unmoved."""
    if not cosines:
        return "No granule path: this run has no booster that trains on band swaps."
    pairs = "; ".join(f"{pair}: {value:.4f}" for pair, value in cosines.items())
    return f"**Modulation cosine** (image feature before vs. after FiLM, 1 = not moved): {pairs}."


class CounterfactualTab:
    """The tab's handlers."""

    def __init__(self, studio: Studio) -> None:
        self.studio = studio

    def run_images(
        self, run_id: str | None, query: str, request: gr.Request, profile: gr.OAuthProfile | None = None
    ) -> tuple[dict, dict, str]:
        try:
            root = (
                str(
                    self.studio.jobs.run_dir(self.studio.owned(run_id, self.studio.visitor(request, profile)).run_id)
                    / "data"
                )
                if run_id
                else None
            )
        except JobError:
            root = None
        picker, found = dataset_images(root, query)
        return picker, picker, found

    @user_messages(outputs=12)
    def counterfactual(
        self,
        run_id: str | None,
        image_a: str | None,
        image_b: str | None,
        top_k: float,
        request: gr.Request,
        profile: gr.OAuthProfile | None = None,
    ) -> tuple:
        """Both paths for A, B and their band swaps; the granule path's modulation cosine per pair
        (how far FiLM moves the image feature) is stated in the modulation note."""
        if not run_id:
            raise JobError("choose a finished run")
        if not image_a or not image_b:
            raise UploadError("give both image A and image B")
        view = counterfactual_view(
            self.studio.models,
            self.studio.model_dir(run_id, self.studio.visitor(request, profile)),
            Path(image_a),
            Path(image_b),
            int(top_k),
        )
        embedding = [view.embedding[pair] if view.embedding else None for pair in PAIRS]
        summary = (
            view.summary
            if view.embedding
            else f"{view.summary} (The exported model, {view.model_label}, has no SpecPL booster, "
            "so only the image-space swap is shown.)"
        )
        return (
            *embedding,
            *[view.image_space[pair] for pair in PAIRS],
            *[view.swaps[pair] for pair in PAIRS[2:]],
            modulation_note(view.modulation_cosine),
            summary,
        )


def build(shared: Shared) -> None:
    """The tab's components and events; images are picked from the chosen run's data."""
    handlers = CounterfactualTab(shared.studio)
    with gr.Tab("Counterfactual", id="counterfactual") as counterfactual_tab:
        gr.Markdown(
            "Swap bands between two images and watch the prediction: "
            "does the model follow the semantics (low band) or the grain (high band)?"
        )
        cf_run = gr.Dropdown([], label="Trained run", allow_custom_value=True, elem_id="cf-run")
        cf_search = gr.Textbox(label="Search the run's images", placeholder="class or file name", elem_id="cf-search")
        cf_found = gr.Markdown(elem_id="cf-found")
        with gr.Row():
            with gr.Column():
                cf_a = image_input("Image A", elem_id="cf-a")
                cf_pick_a = gr.Dropdown([], label="…or pick A from the run's data", elem_id="cf-pick-a")
            with gr.Column():
                cf_b = image_input("Image B", elem_id="cf-b")
                cf_pick_b = gr.Dropdown([], label="…or pick B from the run's data", elem_id="cf-pick-b")
        cf_top_k = gr.Slider(1, 10, value=3, step=1, label="Top-k")
        cf_go = gr.Button("Run counterfactual", variant="primary")
        cf_summary = gr.Markdown(elem_id="cf-summary")
        cf_modulation = gr.Markdown(elem_id="cf-modulation")
        cf_labels = []
        for title in ("SpecPL's granule path (as trained)", "As a decoded image-space swap"):
            gr.Markdown(f"#### {title}")
            with gr.Row():
                cf_labels += [gr.Label(label=pair) for pair in PAIRS]
        with gr.Row():
            cf_swaps = [gr.Image(type="pil", label=f"Decoded: {pair}", interactive=False) for pair in PAIRS[2:]]
    load_when_opened(counterfactual_tab)
    shared.run_pickers.append(RunPicker(cf_run, finished_only=True))
    shared.list_runs_after.append(counterfactual_tab.select)

    cf_run.change(handlers.run_images, [cf_run, cf_search], [cf_pick_a, cf_pick_b, cf_found], api_visibility="private")
    cf_search.submit(
        handlers.run_images, [cf_run, cf_search], [cf_pick_a, cf_pick_b, cf_found], api_name="search_run_images"
    )
    # the images follow the user's picks only: a search (for B) lists new matches in both pickers
    # and empties them, which cleared image A while they followed every change
    cf_pick_a.input(shared.studio.picked_image, cf_pick_a, cf_a, api_visibility="private")
    cf_pick_b.input(shared.studio.picked_image, cf_pick_b, cf_b, api_visibility="private")
    cf_go.click(
        handlers.counterfactual,
        [cf_run, cf_a, cf_b, cf_top_k],
        [*cf_labels, *cf_swaps, cf_modulation, cf_summary],
        api_name="counterfactual",
    )
