"""Published numbers (CLIP ViT-B/16, 16 shots, 3 seeds), for the sweep's comparison.

Transcribed from the papers' tables as the project's method notes collected them (each value's
source is in its entry below and in docs/methods/): the per-dataset base-to-new columns are the
CasPL paper's main table (its CLIP, CoOp, CoCoOp, MaPLe and PromptSRC columns equal the PromptSRC
paper's). Keys are this library's method strings (``host`` or ``host+booster``). Per-dataset HMs
are recomputed from base and new; the specs checked that the published HMs agree within 0.02.

Transfer (a model trained on ImageNet, evaluated elsewhere): the specs hold domain-generalisation
numbers only, and no per-target cross-dataset numbers. the SpecPL paper's "ImageNet cross-dataset
source accuracy of 72.12" names no host and is unverified, so it is left out.
"""

from __future__ import annotations

from dataclasses import dataclass

COLUMNS = (
    "zeroshot",
    "coop",
    "coop+caspl",
    "cocoop",
    "cocoop+caspl",
    "maple",
    "maple+caspl",
    "promptsrc",
    "promptsrc+caspl",
)
PER_DATASET_SOURCE = "CasPL paper main table (= PromptSRC paper for the host columns)"

# dataset: one value per COLUMNS entry
_BASE = {
    "imagenet": (72.43, 76.47, 77.90, 75.98, 77.40, 76.66, 78.20, 77.60, 78.97),
    "caltech101": (96.84, 98.00, 98.63, 97.96, 98.60, 97.74, 98.47, 98.10, 98.60),
    "oxford_pets": (91.17, 93.67, 94.83, 95.20, 95.23, 95.43, 95.37, 95.33, 95.53),
    "stanford_cars": (63.37, 78.12, 80.23, 70.49, 76.37, 72.94, 78.10, 78.27, 82.33),
    "oxford_flowers": (72.08, 97.60, 98.27, 94.87, 96.63, 95.92, 97.73, 98.07, 98.73),
    "food101": (90.10, 88.33, 90.60, 90.70, 91.50, 90.71, 91.43, 90.67, 91.27),
    "fgvc_aircraft": (27.19, 40.44, 45.83, 33.41, 42.93, 37.44, 43.60, 42.73, 48.23),
    "sun397": (69.36, 80.60, 81.77, 79.74, 80.20, 80.82, 82.23, 82.67, 83.10),
    "dtd": (53.24, 79.44, 82.57, 77.01, 80.57, 80.36, 82.73, 83.37, 84.73),
    "eurosat": (56.48, 92.19, 94.80, 87.49, 94.50, 94.07, 94.60, 92.90, 96.67),
    "ucf101": (70.53, 84.69, 87.10, 82.33, 86.00, 83.00, 86.83, 87.10, 89.00),
}
_NEW = {
    "imagenet": (68.14, 67.88, 67.43, 70.43, 71.40, 70.54, 71.47, 70.73, 70.50),
    "caltech101": (94.00, 89.81, 95.50, 93.81, 94.63, 94.36, 96.03, 94.03, 95.70),
    "oxford_pets": (97.26, 95.29, 97.37, 97.69, 98.10, 97.76, 98.13, 97.30, 98.07),
    "stanford_cars": (74.89, 60.40, 75.77, 73.59, 81.07, 74.00, 81.97, 74.97, 79.93),
    "oxford_flowers": (77.80, 59.67, 73.47, 71.75, 76.50, 72.46, 77.63, 76.50, 80.13),
    "food101": (91.22, 82.26, 91.03, 91.29, 92.93, 92.05, 92.93, 91.53, 92.20),
    "fgvc_aircraft": (36.29, 22.30, 37.30, 23.71, 41.23, 35.61, 42.20, 37.87, 41.97),
    "sun397": (75.35, 65.89, 72.77, 76.86, 79.10, 78.70, 79.80, 78.47, 79.53),
    "dtd": (59.90, 41.18, 54.23, 56.00, 62.43, 59.18, 66.77, 62.97, 69.63),
    "eurosat": (64.05, 54.74, 82.23, 60.04, 83.63, 73.23, 89.40, 73.90, 85.87),
    "ucf101": (77.50, 56.05, 72.30, 73.45, 78.33, 78.66, 79.10, 78.80, 81.37),
}


@dataclass(frozen=True)
class PublishedAverage:
    """An 11-dataset average row: mean base, mean new, HM of the two means."""

    base: float
    new: float
    hm: float
    source: str


# methods whose per-dataset numbers were not retrievable: only the 11-dataset average compares
AVERAGE_ONLY = {
    "kgcoop": PublishedAverage(80.73, 73.60, 77.00, "KgCoOp README"),
    "promptsrc+dapt": PublishedAverage(86.11, 77.05, 81.32, "DAPT README results image"),
    "mmrl": PublishedAverage(85.68, 77.16, 81.20, "third-party summaries, unverified (docs/methods/mmrl.md)"),
}


def published_base_new(method: str, dataset: str) -> tuple[float, float] | None:
    """The published (base, new) of `method` on `dataset`, or None when there is none."""
    if method not in COLUMNS or dataset not in _BASE:
        return None
    column = COLUMNS.index(method)
    return _BASE[dataset][column], _NEW[dataset][column]


def published_average(method: str) -> PublishedAverage | None:
    """An average-only method's published 11-dataset row (per-dataset methods average their rows)."""
    return AVERAGE_ONLY.get(method)


TRANSFER_SOURCE = "imagenet"  # every published transfer number below was trained on it
CASPL_DG_TARGETS = ("imagenetv2", "imagenet_sketch", "imagenet_r")  # the CasPL paper: "ImageNet -> V2/S/R average"


@dataclass(frozen=True)
class PublishedTransfer:
    """A method trained on ImageNet: its published accuracy per dataset (the source included), and
    where only an average over some targets was published, that average and its targets."""

    accuracy: dict[str, float]
    reference: str
    average: float | None = None
    average_over: tuple[str, ...] = ()


TRANSFER = {
    "domain-generalisation": {
        "promptsrc": PublishedTransfer({"imagenet": 71.27}, "the CasPL paper", 63.90, CASPL_DG_TARGETS),
        "promptsrc+caspl": PublishedTransfer({"imagenet": 72.80}, "the CasPL paper", 64.44, CASPL_DG_TARGETS),
        "mmrl": PublishedTransfer(
            {
                "imagenet": 72.03,
                "imagenetv2": 64.47,
                "imagenet_sketch": 49.17,
                "imagenet_a": 51.20,
                "imagenet_r": 77.53,
            },
            "a third-party (VaMP) summary, unverified (docs/methods/mmrl.md)",
        ),
    },
    "cross-dataset": {},
}


def published_transfer(protocol: str, method: str, source: str) -> PublishedTransfer | None:
    """The published transfer numbers of `method` under `protocol` when trained on `source`."""
    return TRANSFER.get(protocol, {}).get(method) if source == TRANSFER_SOURCE else None
