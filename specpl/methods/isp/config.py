"""ISP's options and what its parts share: the choices an option may name, the capabilities the
structural modules need, and the precision the modules compute in. Kept apart so the structural
modules, the probing and the booster read one definition."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from specpl.config import check_choice
from specpl.methods.base import DEEP_TEXT_PROMPTS, PROMPTS_IMAGE_TOWER

IVLP_LAYOUT = frozenset({PROMPTS_IMAGE_TOWER, DEEP_TEXT_PROMPTS})  # hosts whose vision prompts follow the patches
OUTPUT_PROJECTION, INITIAL_DIFFERENCE = "output-projection", "initial-difference"
ZERO_SHOT, JOINT = "zero-shot", "joint"
LINEAR, FOCAL = "linear", "focal"
RUN_TEMPLATE, IMAGENET_TEMPLATES = "run", "openai-imagenet"
AUTO, ON, OFF = "auto", "on", "off"


@dataclass
class ISPConfig:
    structural: Literal["auto", "on", "off"] = (
        AUTO  # the structural modules: auto builds them where the host has IVLP-layout prompts, on requires such a host
    )
    text_structural: bool = False  # also in the text tower (the paper preset; see the module docstring)
    self_structural: bool = True  # vision prompts attend to that layer's [CLS] + patch tokens
    cross_structural: bool = True  # vision prompts attend to the class prompts' end-of-text states
    depth: int = 9  # layers 0..depth-1 carry modules (cut to the towers' depth)
    attn_dim: int = 64  # d of the query/key/value projections
    heads: int = 1
    detach_sources: bool = True  # read the frozen tokens without gradient (spec §7)
    zero_start: str = INITIAL_DIFFERENCE  # or "output-projection" (W_o = 0, the spec's)
    sample_probing: bool = True
    difficulty: str = ZERO_SHOT  # "zero-shot": 1 - p0; "joint": 1 - p0 * p (prompted model)
    weighting: str = LINEAR  # "linear": 1 + d, mean-normalised; "focal": d ** focal_gamma
    focal_gamma: float = 2.0
    normalise_weights: bool = True  # mean 1 per batch (spec §7's recommendation); False: the raw 1 + d (or d ** gamma)
    probe_templates: str = RUN_TEMPLATE  # "run", "openai-imagenet" (80, averaged) or a template with "{}"
    probe_logit_scale: float | None = None  # None: the frozen CLIP's own exp(logit_scale)

    def __post_init__(self) -> None:
        if isinstance(self.structural, bool):  # bundles written before "auto": True meant auto
            self.structural = AUTO if self.structural else OFF
        check_isp_choice("structural", self.structural, (AUTO, ON, OFF))


def check_isp_choice(option: str, value: str, allowed: tuple[str, ...]) -> None:
    check_choice(f"isp.{option}", value, allowed)


@torch.no_grad()
def at_least_fp32(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` in fp32 when it is in a half type (a bf16 frozen tower), else as it is: ISP's modules
    compute in their own precision, fp32 in training and fp64 in the equivalence test."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor
