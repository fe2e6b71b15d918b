"""Where the app may write and how much a user may send, read once from the environment.

Every file the app writes lives under `data_dir` (``SPECPL_DATA_DIR``, default ``./.specpl-data``):
runs, per-visitor uploads, exports and Gradio's own upload cache.

Hosted mode (`multi_user`) is on for a Hugging Face Space (``SPACE_ID`` is set there) or with
``SPECPL_MULTI_USER=1`` (``0`` forces it off): each visitor then sees and controls only their own
runs. The local single-user default shares every run with every tab, as a desktop tool does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

MB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """Caps on user input; each one is reported by name when it is hit."""

    max_upload_bytes: int = 200 * MB
    max_extracted_bytes: int = 1024 * MB  # bytes an archive may really write (declared sizes only refuse earlier)
    max_compression_ratio: int = 100  # photos barely compress; a 1000x entry is a zip bomb
    ratio_free_bytes: int = 1 * MB  # a small entry may expand this much whatever its ratio
    max_archive_entries: int = 20_000
    max_images: int = 5_000
    max_image_pixels: int = 40_000_000
    max_classify_images: int = 100


@dataclass(frozen=True)
class AppSettings:
    data_dir: Path
    limits: Limits = field(default_factory=Limits)
    training_slots: int = 1  # trainings at once; one per GPU
    stop_grace_s: float = 20.0  # after a cooperative stop request, terminate the worker after this
    cpu_int8: bool = True  # classify with an int8 image tower on the CPU
    multi_user: bool = False  # hosted: runs belong to the visitor who started them
    on_space: bool = False  # on a Hugging Face Space: cookies must work inside its iframe
    oauth: bool = False  # the Space has Hugging Face OAuth enabled: offer "Sign in" and key runs by user
    zero_gpu: bool = False  # a ZeroGPU Space: train in GPU calls from visitors' requests (`app.runtime.zerogpu`)
    gpu_slice_s: int = 120  # on ZeroGPU, the seconds each GPU call asks for (ZeroGPU allows at most 300)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "AppSettings":
        on_space = bool(environ.get("SPACE_ID"))
        zero_gpu = environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")  # set on ZeroGPU Spaces
        limits = Limits(
            max_upload_bytes=int(float(environ.get("SPECPL_MAX_UPLOAD_MB", Limits.max_upload_bytes / MB)) * MB),
            max_images=int(environ.get("SPECPL_MAX_IMAGES", Limits.max_images)),
            max_image_pixels=int(environ.get("SPECPL_MAX_IMAGE_PIXELS", Limits.max_image_pixels)),
        )
        return cls(
            data_dir=Path(environ.get("SPECPL_DATA_DIR", ".specpl-data")).resolve(),
            limits=limits,
            # ZeroGPU lends each visitor's call its own GPU, so runs need not wait for each other there
            training_slots=max(1, int(environ.get("SPECPL_TRAINING_SLOTS", 4 if zero_gpu else 1))),
            stop_grace_s=float(environ.get("SPECPL_STOP_GRACE_S", 20.0)),
            cpu_int8=environ.get("SPECPL_CPU_INT8", "1") != "0",
            multi_user=environ.get("SPECPL_MULTI_USER", "1" if on_space else "0") != "0",
            on_space=on_space,
            oauth=on_space and bool(environ.get("OAUTH_CLIENT_ID")),
            zero_gpu=zero_gpu,
            gpu_slice_s=min(300, max(30, int(environ.get("SPECPL_GPU_SLICE_S", 120)))),
        )

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"

    @property
    def sessions_dir(self) -> Path:
        return self.data_dir / "sessions"

    @property
    def exports_dir(self) -> Path:
        return self.data_dir / "exports"

    @property
    def gradio_cache_dir(self) -> Path:
        return self.data_dir / "gradio-cache"
