"""Classify tab: top-k labels for one or many images, as a table, a captioned gallery and a CSV."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from pandas.io.formats.style import Styler

from app.files.archives import UploadError
from app.files.uploads import split_usable
from app.runtime.settings import Limits
from app.views.reports import percent
from specpl.inference import Predictor
from specpl.io import atomic_write_text

COLUMNS = ["image", "rank", "label", "probability"]


@dataclass
class Classification:
    table: pd.DataFrame
    gallery: list[tuple[str, str]]  # (image path, "label (prob)")
    csv_path: Path
    first: dict[str, float]  # the first image's ranking, for the probability bars
    skipped: list[str] = field(default_factory=list)

    @property
    def shown_table(self) -> Styler:
        """The table as the tab shows it, probabilities as percentages ("85.7%"); the data under it
        (what an API client and the CSV get) keeps the probabilities as numbers."""
        return self.table.style.format({"probability": lambda p: percent(100 * p)})


def classify_files(
    predictor: Predictor, paths: list[Path], top_k: int, limits: Limits, out_dir: Path
) -> Classification:
    """Rank every usable image in `paths`; unusable ones are listed in `skipped`."""
    if not paths:
        raise UploadError("add one or more images to classify")
    if len(paths) > limits.max_classify_images:
        raise UploadError(f"{len(paths)} images is over the limit of {limits.max_classify_images} per request")
    usable, skipped = split_usable(paths, limits)
    if not usable:
        raise UploadError("no usable image: " + "; ".join(skipped))
    ranked = predictor.predict(usable, top_k=top_k)
    rows = [
        (path.name, rank, label, round(prob, 6))
        for path, result in zip(usable, ranked, strict=True)
        for rank, (label, prob) in enumerate(result, 1)
    ]
    table = pd.DataFrame(rows, columns=COLUMNS)
    csv_path = out_dir / f"predictions-{secrets.token_hex(4)}.csv"
    atomic_write_text(csv_path, table.to_csv(index=False))
    gallery = [(str(path), f"{result[0][0]} ({result[0][1]:.0%})") for path, result in zip(usable, ranked, strict=True)]
    return Classification(table, gallery, csv_path, dict(ranked[0]), skipped)
