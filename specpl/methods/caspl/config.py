"""CasPL's options, phase 1's (`CasPLBoostConfig`) and phase 2's (`CasPLConfig`), and the names both
phases share: the phase-1 host's name and where the released code lives. Kept apart so either
phase reads them without importing the other."""

from __future__ import annotations

from dataclasses import dataclass

from specpl.config import check_choice

PHASE_ONE = "caspl-boost"
SEQUENCE, PHASE_ONE_POSITIONS = "sequence", "phase-one"  # CasPLConfig.text_positions
RELEASED = "Martinser/CasPL"  # the authors' released code, where the sources point
ONLY_FOUR = "(the released learners use CTX_INIT only up to 4 tokens; 8 start random)"


@dataclass
class CasPLBoostConfig:
    n_ctx: int = 8  # L text tokens per layer
    n_ctx_vision: int = 8
    depth: int = 12  # cut to the towers' depth
    ctx_init: str = ""  # "": N(0, init_std), as the released code (used when ctx_from_template is off)
    init_std: float = 0.02
    # default: start as close to zero-shot as IVLP's layout allows (the template's words, deep text
    # prompts from the frozen tower's own states); the paper preset starts them random, as released
    ctx_from_template: bool = True
    tail: str = "{}."
    deep_text_init: str = "template"  # see specpl.methods.deep.DeepPromptConfig
    teacher: str | None = None  # None: ViT-L-14 (openai), or world-clip-large for the world CLIP student
    teacher_pretrained: str | None = None  # a tag, a local file, "embedded"; None: the teacher's default
    teacher_template: str | None = None  # None: the run's (the dataset's) template
    temperature: float = 1.0


@dataclass
class CasPLConfig:
    boost_bundle: str | None = None  # folder of a caspl-boost (phase 1) bundle
    # recorded at build time, so a phase-2 bundle (which holds the boosting prompts) loads without
    # the phase-1 folder: [layers, tokens, width] of each tower's boosting prompts
    boost_text_shape: list[int] | None = None
    boost_vision_shape: list[int] | None = None
    # "sequence": the released layout (boosting tokens at the positions after the host's context,
    # the class shifted by L); "phase-one": the boosting tokens at positions 1..L, the class at the host's
    text_positions: str = SEQUENCE

    def __post_init__(self) -> None:
        check_choice("caspl.text_positions", self.text_positions, (SEQUENCE, PHASE_ONE_POSITIONS))
