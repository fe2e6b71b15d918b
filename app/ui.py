"""The page: a header, then each tab (`app.tabs`, one module each: its layout and its handlers), and
the `launch()` options. No logic lives here."""

from __future__ import annotations

import os
from typing import Any

import gradio as gr
from starlette.middleware import Middleware

from app.runtime.assets import BuildAssetCache
from app.runtime.identity import BrowserCookie, PrivateFiles
from app.runtime.settings import AppSettings
from app.studio import Studio
from app.tabs import bands, classify, counterfactual, runs, train
from app.tabs.shared import Shared
from app.views.widgets import PAGE_CSS

INTRO = (
    "# SpecPL Studio\n"
    "Teach a frozen CLIP model your own classes from a few images: upload a dataset, train in the "
    "background, look at the band maps and counterfactuals, classify, and export the model."
)
TABS = (train, bands, counterfactual, classify, runs)  # in page order; Runs lists every tab's runs, so it comes last


def build_demo(settings: AppSettings | None = None) -> gr.Blocks:
    """The whole app. Gradio's upload cache is moved under the data directory first, so that
    nothing the app receives is written elsewhere."""
    settings = settings or AppSettings.from_env()
    settings.gradio_cache_dir.mkdir(parents=True, exist_ok=True)
    os.environ["GRADIO_TEMP_DIR"] = str(settings.gradio_cache_dir)
    studio = Studio(settings)
    # Gradio's cache: files older than a day are removed
    with gr.Blocks(title="SpecPL Studio", delete_cache=(3600, 24 * 3600)) as demo:
        demo.studio = studio  # type: ignore[attr-defined]  # for tests and app.py shutdown
        gr.Markdown(INTRO)
        if settings.oauth:
            gr.LoginButton()  # on a Space with OAuth: runs then follow the signed-in user
        shared = Shared.create(studio, demo)
        with gr.Tabs():
            for tab in TABS:
                tab.build(shared)
        demo.unload(studio.forget_session)
    return demo


def launch_options(settings: AppSettings) -> dict[str, Any]:
    """`launch()` keywords: the page's style rules (`PAGE_CSS`), the app may return files from the
    data directory (Gradio serves its cached copies; `PrivateFiles` refuses the originals), uploads
    are capped, every browser gets an identity cookie (`app.runtime.identity`), and Gradio's hashed
    front-end files are served from memory (see `app.runtime.assets`)."""
    return {
        "css": PAGE_CSS,
        "allowed_paths": [str(settings.data_dir)],
        "max_file_size": settings.limits.max_upload_bytes,
        "app_kwargs": {
            "middleware": [
                Middleware(PrivateFiles, data_dir=str(settings.data_dir), cache_dir=str(settings.gradio_cache_dir)),
                Middleware(BrowserCookie, cross_site=settings.on_space),
                Middleware(BuildAssetCache),
            ]
        },
    }
