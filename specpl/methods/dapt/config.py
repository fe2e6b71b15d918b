"""DAPT's options and the names its parts share: the mask sources and maps an option may name, the
background words, and when the alignment phase starts. Kept apart so the masks, the saliency maps
and the booster read one definition."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from specpl.config import check_choice

DAPT_INPUT = "dapt"  # the frozen input's name; the batch carries dapt.mask
MASK = "mask"
MASK_SOURCES = ("gradcam", "folder")
CAMS = ("head-gradcam", "rollout", "gradcam", "grad-attention")  # DAPT-G's maps (`specpl.methods.dapt.saliency`)
CAM_NAMES = {
    "head-gradcam": "per-head GradCAM",
    "rollout": "attention rollout",
    "grad-attention": "gradient-weighted attention",
}
NORMALISATIONS = ("image", "batch")  # a map's maximum: its own, or the batch's (the reference's)
GENERAL_BACKGROUNDS = (
    "ground",
    "land",
    "grass",
    "tree",
    "building",
    "wall",
    "sky",
    "lake",
    "water",
    "river",
    "sea",
    "railway",
    "railroad",
    "keyboard",
    "helmet",
    "cloud",
    "house",
    "mountain",
    "ocean",
    "road",
    "rock",
    "street",
    "valley",
    "bridge",
    "sign",
)
FOOD_BACKGROUNDS = ("table", "forks", "tablecloth", "hands", "spoon", "glasses", "dishes")
BACKGROUND_WORDS = (*GENERAL_BACKGROUNDS, *FOOD_BACKGROUNDS)
# the reference trains with the last 25 only: its first 7 fall into the class slice of its logits
REFERENCE_BACKGROUND_WORDS = BACKGROUND_WORDS[-25:]


@dataclass
class DAPTConfig:
    masks: str = "gradcam"  # "gradcam" (DAPT-G, from the current model) or "folder" (mask files in mask_dir)
    cam: str = "head-gradcam"  # DAPT-G's map, one of CAMS; chosen by measurement (`specpl.methods.dapt.saliency`)
    mask_dir: str = ""  # the mask folder for masks="folder"
    mask_ignore_value: int | None = 255  # a mask value read as background (SEEM's ignore label)
    gradcam_threshold: float = 0.5
    gradcam_normalise: str = "image"  # "image" (per-image maximum) or "batch" (the reference's batch maximum)
    gradcam_align_corners: bool = False  # upsample the patch grid with align_corners (the reference's: True)
    switch_epoch: int | None = None  # first epoch index (0-based) of the alignment phase; None: floor(0.7 E)
    triplet_weight: float = 0.8
    triplet_margin: float = 1.5
    foreground_weight: float = 0.1
    background_weight: float = 0.5
    background_template: str = "a clean origami {}."
    background_words: list[str] = field(default_factory=lambda: list(BACKGROUND_WORDS))

    def __post_init__(self) -> None:
        check_choice("dapt.masks", self.masks, MASK_SOURCES)
        check_choice("dapt.cam", self.cam, CAMS)
        check_choice("dapt.gradcam_normalise", self.gradcam_normalise, NORMALISATIONS)


def switch_epoch(config: DAPTConfig, epochs: int) -> int:
    """The first epoch index of the alignment phase."""
    return config.switch_epoch if config.switch_epoch is not None else math.floor(0.7 * epochs)
