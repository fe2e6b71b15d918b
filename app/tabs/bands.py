"""The Bands tab: an image's band maps under any decomposer, with the time they took, and with a
trained run chosen, what its components show of the image (DAPT's foreground mask)."""

from __future__ import annotations

import filecmp
from pathlib import Path

import gradio as gr

from app.files.archives import UploadError
from app.studio import Studio
from app.tabs.shared import RunPicker, Shared, user_messages
from app.views.analysis import (
    BAND_VIEWS,
    CPU_DECOMPOSER,
    MASK_IMAGES,
    MaskView,
    band_view,
    decomposer_choices,
    image_view,
    no_masks,
)
from app.views.widgets import dataset_images, image_input, load_when_opened
from specpl.data import class_display_name

CHOOSE_RUN_NOTE = "Choose a trained run to see the foreground mask its DAPT booster trains with."


def shown_pick(image_path: Path, picked: str | None) -> Path | None:
    """The picked dataset image, when it is the one shown: the handler gets Gradio's copy of the
    image, so the two files are compared (an image uploaded after a pick is not the picked one)."""
    if not picked or not Path(picked).is_file():
        return None
    return Path(picked) if filecmp.cmp(picked, image_path, shallow=False) else None


class BandsTab:
    """The tab's handlers."""

    def __init__(self, studio: Studio) -> None:
        self.studio = studio

    @user_messages(outputs=len(BAND_VIEWS) + len(MASK_IMAGES) + 2)
    def bands(
        self,
        image_path: str | None,
        decomposer: str,
        size: float,
        run_id: str | None,
        picked: str | None,
        request: gr.Request,
        profile: gr.OAuthProfile | None = None,
    ) -> tuple:
        """The band maps of the image and, with a trained run, the foreground mask its DAPT booster
        would train with (or a note why there is none). `picked` is the dataset image last picked
        (`picked_band_image`; the API has none). Returns the band maps, the mask pictures, the
        mask note and the timing line."""
        if not image_path:
            raise UploadError("upload an image or pick one from the dataset")
        view = band_view(self.studio.models, Path(image_path), decomposer, int(size))
        timing = f"{decomposer} at {int(size)} px: {view.compute_s * 1000:.0f} ms" + (
            f" (loading it first took {view.load_s * 1000:.0f} ms)" if view.load_s > 0.05 else ""
        )
        masks = self._image_view(run_id, Path(image_path), picked, self.studio.visitor(request, profile))
        return (
            *[view.images[name] for name in BAND_VIEWS],
            *[masks.images[name] for name in MASK_IMAGES],
            masks.note,
            timing,
        )

    def _image_view(self, run_id: str | None, image_path: Path, picked: str | None, owner: str) -> MaskView:
        """The chosen run's image view (DAPT's mask) of the image. An image picked from a dataset is
        read at its place there, which gives its class (its folder) and its mask file's name."""
        if not run_id:
            return no_masks(CHOOSE_RUN_NOTE)
        model_dir = self.studio.model_dir(run_id, owner)
        source = shown_pick(image_path, picked)
        class_name = class_display_name(source.parent.name) if source else None
        return image_view(
            self.studio.models,
            model_dir,
            source or image_path,
            class_name,
            read_mask_files=not self.studio.settings.multi_user,
        )

    def picked_band_image(
        self, path: str | None, request: gr.Request, profile: gr.OAuthProfile | None = None
    ) -> tuple[str | None, str | None]:
        """A pick in the Bands tab, for the image box and kept as the image's place in its dataset
        (the box hands the handler a copy), both set at once so that a click that follows has both."""
        picked = self.studio.picked_image(path, request, profile)
        return picked, picked


def build(shared: Shared) -> None:
    """The tab's components and events; its dataset picker lists the images of the active dataset."""
    handlers = BandsTab(shared.studio)
    with gr.Tab("Bands", id="bands") as bands_tab:
        gr.Markdown(
            "The low band carries the semantics, the high band the fine grain. "
            "Pick an image and a decomposer (`fft` is weight-free and fast on CPU). "
            "With a trained run chosen, DAPT's foreground mask for the image is shown too."
        )
        with gr.Row():
            with gr.Column(scale=1):
                band_input = image_input("Image", elem_id="band-image")
                band_search = gr.Textbox(
                    label="Search your dataset's images",
                    placeholder="class or file name",
                    elem_id="band-search",
                )
                band_pick = gr.Dropdown([], label="…or pick from your dataset", elem_id="band-pick")
                band_picked = gr.State(None)  # the picked image's place in its dataset (the image box holds a copy)
                band_found = gr.Markdown(elem_id="band-found")
                band_decomposer = gr.Dropdown(
                    decomposer_choices(shared.studio.settings.multi_user),
                    value=CPU_DECOMPOSER,
                    label="Decomposer",
                    elem_id="band-decomposer",
                )
                band_size = gr.Slider(64, 512, value=224, step=32, label="Resolution (px)")
                band_run = gr.Dropdown(
                    [],
                    label="Trained run (for its DAPT foreground mask)",
                    allow_custom_value=True,
                    elem_id="band-run",
                )
                band_go = gr.Button("Compute bands", variant="primary")
                band_time = gr.Markdown()
            with gr.Column(scale=3):
                with gr.Row():
                    band_images = [
                        gr.Image(type="pil", label=label, interactive=False)
                        for label in (
                            "Original",
                            "Low band (decoded)",
                            "High band magnitude",
                            "Latent channels",
                        )
                    ]
                with gr.Row():
                    mask_images = [
                        gr.Image(type="pil", label=label, interactive=False, elem_id=f"band-{name}")
                        for name, label in zip(
                            MASK_IMAGES,
                            (
                                "DAPT saliency map (as the model sees the image)",
                                "DAPT foreground (outside the mask darkened)",
                            ),
                            strict=True,
                        )
                    ]
                mask_note = gr.Markdown(elem_id="band-mask-note")
    load_when_opened(bands_tab)
    shared.run_pickers.append(RunPicker(band_run, finished_only=True))
    shared.list_runs_after.append(bands_tab.select)

    shared.dataset_root.change(dataset_images, shared.dataset_root, [band_pick, band_found], api_visibility="private")
    band_search.submit(
        dataset_images, [shared.dataset_root, band_search], [band_pick, band_found], api_name="search_dataset_images"
    )
    band_pick.input(  # a pick by the user, not the reset of a new search: that keeps the image
        handlers.picked_band_image, band_pick, [band_input, band_picked], api_visibility="private"
    )
    band_go.click(
        handlers.bands,
        [band_input, band_decomposer, band_size, band_run, band_picked],
        [*band_images, *mask_images, mask_note, band_time],
        api_name="bands",
    )
