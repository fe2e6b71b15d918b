"""CasPL phase 2, the booster ``caspl`` (docs/methods/caspl.md; §8 of its spec, the released code,
overrides the paper where they differ).

The frozen boosting prompts of a phase-1 bundle (buffers, never trained; they are saved in the
phase-2 bundle, which is therefore self-contained) cascaded with the host's learnable prompts. In
both towers the boosting group is inserted at layer 0 and overwritten with its own frozen tokens
at every later layer it has. The hosts keep their own losses; PromptSRC's frozen reference stays
vanilla CLIP (the released code's ``zero_shot_model``), since its regularisers read the bare
backbone.

Hosts: any with a learned text context (`requires`). The boosting text goes between the host's
context and the class name, where phase 1 learned it (its context sat right before the class);
a host whose text is a fixed template (MMRL, zero-shot) has no such place, and the tokens would
land before the template's words. The image tower asks nothing of the host: the boosting tokens
follow the patches and the host's own tokens. The paper reports CoOp, CoCoOp, MaPLe and
PromptSRC (`published_hosts`); on any other host with a context (IVLP, KgCoOp) the stack is
labelled an unpublished combination.

Phase-2 host settings: the ``paper`` preset runs each host with the configuration the released
scripts train the CasPL student with (`CasPL.host_presets`): 8 random context tokens on CoOp
(50 epochs) and CoCoOp, 8 tokens at depth 12 on MaPLe and 8 + 8 at depth 12 on PromptSRC, each
with its host's published schedule. The ``default`` preset keeps the host's own options.

Choices and deviations (written down as the spec asks):
- Text order: ``[SOS][adapt][boost][class]`` on every host, as in the paper and the released code:
  the boosting group is anchored at the end of the text prefix (``at="end"``), after the host's
  context and right before the class tokens.
- Text positions (`text_positions`): ``"sequence"``, in both presets, is the released code's
  layout, one token sequence with CLIP's positional embedding added along it: the layer-0
  boosting tokens take the positions after the host's context and the class tokens shift by L
  (`specpl.slots.PromptGroup.in_sequence`). ``"phase-one"`` is the layout this module used first:
  the boosting tokens carry positions 1..L, where they sat in phase 1, and the class keeps the
  host's positions. No measurement favoured it (the text features differ, cosine about 0.993), so
  the default follows the released code; a phase-2 bundle written before the option existed
  was trained with it and is rebuilt with it (`CasPL.settle_options`).
- Vision order: the boosting tokens follow the host's (``[..., adapt, boost]``, not the paper's
  ``[..., boost, adapt]``). Prompt tokens carry no positional embedding and attention is
  permutation-equivariant, so the order changes no feature (beyond float summation order).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch

from specpl.methods.base import CONTEXT_TOKENS, Booster, BuildContext
from specpl.methods.caspl.config import ONLY_FOUR, PHASE_ONE_POSITIONS, RELEASED, SEQUENCE, CasPLConfig
from specpl.methods.caspl.phase_one import read_boosting_prompts
from specpl.methods.registry import BOOSTERS
from specpl.slots import END, PromptGroup
from specpl.vision import PromptImageEncoder

# the configuration files the released base-to-new scripts train each phase-2 host with
COOP_CONFIG = f"{RELEASED} configs/trainers/CasPL_CoOp/vit_b16_ep50.yaml"
COCOOP_CONFIG = f"{RELEASED} configs/trainers/CasPL_CoCoOp/vit_b16_c8_ep10_batch1.yaml"
MAPLE_CONFIG = f"{RELEASED} configs/trainers/CasPL_MaPLe/vit_b16_c8_ep5_batch4_8ctx_l12.yaml"
PROMPTSRC_CONFIG = f"{RELEASED} configs/trainers/CasPL_PromptSRC/vit_b16_c2_ep20_batch4_8+8ctx_l12.yaml"


@BOOSTERS.register("caspl")
class CasPL(Booster):
    """CasPL phase 2: a phase-1 bundle's boosting prompts, frozen, cascaded with the host's
    learnable prompts (see the module docstring for the layout)."""

    name = "caspl"
    title = "CasPL"
    description = (
        "CasPL phase 2: frozen boosting prompts from a caspl-boost bundle cascaded with the host's prompts (ECCV 2024)"
    )
    config_class: ClassVar[type] = CasPLConfig
    requires: ClassVar[frozenset[str]] = frozenset({CONTEXT_TOKENS})
    requires_reason: ClassVar[str] = (
        "its frozen boosting prompts go between the host's context and the class name, where phase 1 learned them; "
        "a host whose text is a fixed template has no such place"
    )
    published_hosts: ClassVar[tuple[str, ...]] = ("coop", "cocoop", "maple", "promptsrc")  # the paper's main table
    # the host configurations the released base-to-new scripts train the phase-2 student with
    # (8 random context tokens: the released learners use CTX_INIT only up to 4 tokens)
    host_presets: ClassVar[dict[str, dict[str, dict[str, dict[str, Any]]]]] = {
        "paper": {
            "coop": {"coop": {"n_ctx": 8, "ctx_init": ""}, "train": {"epochs": 50, "batch_size": 32, "lr": 0.002}},
            "cocoop": {"cocoop": {"n_ctx": 8, "ctx_init": ""}, "train": {"epochs": 10, "batch_size": 1, "lr": 0.002}},
            "maple": {
                "maple": {"n_ctx": 8, "ctx_init": "", "tail": "{}.", "depth": 12},
                "train": {"epochs": 5, "batch_size": 4, "lr": 0.0035},
            },
            "promptsrc": {
                "promptsrc": {"n_ctx": 8, "n_ctx_vision": 8, "ctx_init": "", "depth": 12},
                "train": {"epochs": 20, "batch_size": 4, "lr": 0.0025},
            },
        },
    }
    sources: ClassVar[dict[str, str]] = {
        "boost_bundle": f"{RELEASED} scripts/caspl/coop/main_student.sh:31-34 (phase 2 loads phase 1's epoch 20)",
        "boost_text_shape": "ours: recorded at build so a phase-2 bundle loads without the phase-1 folder",
        "boost_vision_shape": "ours: recorded at build so a phase-2 bundle loads without the phase-1 folder",
        "text_positions": f"{RELEASED} trainers/caspl_coop.py:52,160-172 (one sequence, positions added along it)",
    }
    host_sources: ClassVar[dict[str, dict[str, str]]] = {
        "coop": {
            "coop.n_ctx": f"{COOP_CONFIG}:33",
            "coop.ctx_init": f"{COOP_CONFIG}:34 and trainers/caspl_coop.py:101-116",
            "train.epochs": f"{COOP_CONFIG}:18",
            "train.batch_size": f"{COOP_CONFIG}:3",
            "train.lr": f"{COOP_CONFIG}:17",
        },
        "cocoop": {
            "cocoop.n_ctx": f"{COCOOP_CONFIG}:33",
            "cocoop.ctx_init": f"{COCOOP_CONFIG}:34 and trainers/caspl_cocoop.py:92-96",
            "train.epochs": f"{COCOOP_CONFIG}:18",
            "train.batch_size": f"{COCOOP_CONFIG}:3",
            "train.lr": f"{COCOOP_CONFIG}:17",
        },
        "maple": {
            "maple.n_ctx": f"{MAPLE_CONFIG}:33",
            "maple.ctx_init": f"{RELEASED} trainers/caspl_maple.py:89-103 {ONLY_FOUR}",
            "maple.tail": f"{RELEASED} trainers/caspl_maple.py:130 (the class name and '.' after the context)",
            "maple.depth": f"{MAPLE_CONFIG}:36",
            "train.epochs": f"{MAPLE_CONFIG}:18",
            "train.batch_size": f"{MAPLE_CONFIG}:3",
            "train.lr": f"{MAPLE_CONFIG}:17",
        },
        "promptsrc": {
            "promptsrc.n_ctx": f"{PROMPTSRC_CONFIG}:35",
            "promptsrc.n_ctx_vision": f"{PROMPTSRC_CONFIG}:34",
            "promptsrc.ctx_init": f"{RELEASED} trainers/caspl_promptsrc.py:100-114 {ONLY_FOUR}",
            "promptsrc.depth": f"{PROMPTSRC_CONFIG}:38-39",
            "train.epochs": f"{PROMPTSRC_CONFIG}:19",
            "train.batch_size": f"{PROMPTSRC_CONFIG}:4",
            "train.lr": f"{PROMPTSRC_CONFIG}:18",
        },
    }

    def __init__(self, config: CasPLConfig, context: BuildContext) -> None:
        super().__init__(config, context)
        text_width = int(context.backbone.model.token_embedding.weight.shape[1])
        vision = PromptImageEncoder(context.backbone.model)
        device = context.backbone.model.token_embedding.weight.device
        found = config.boost_bundle is not None and (Path(config.boost_bundle) / "config.json").is_file()
        if found:
            text, vision_tokens = read_boosting_prompts(config.boost_bundle, context.backbone)
        elif config.boost_text_shape and config.boost_vision_shape:  # rebuilt from a phase-2 bundle
            text = [torch.zeros(config.boost_text_shape[1:]) for _ in range(config.boost_text_shape[0])]
            vision_tokens = [torch.zeros(config.boost_vision_shape[1:]) for _ in range(config.boost_vision_shape[0])]
        elif config.boost_bundle is None:
            raise ValueError(
                "caspl needs boost_bundle: the folder of a caspl-boost (phase 1) bundle; train one with host "
                "'caspl-boost'"
            )
        else:
            raise FileNotFoundError(
                f"caspl.boost_bundle {config.boost_bundle}: no bundle there "
                f"({Path(config.boost_bundle) / 'config.json'} is missing)"
            )
        self._check(text, text_width, len(context.backbone.model.transformer.resblocks), "text")
        self._check(vision_tokens, vision.width, vision.depth, "vision")
        self.awaiting_state = not found  # placeholders until a phase-2 bundle's tensors are loaded
        for i, tokens in enumerate(text):
            self.register_buffer(f"boost_text_{i}", tokens.float().to(device).clone())
        for i, tokens in enumerate(vision_tokens):
            self.register_buffer(f"boost_vision_{i}", tokens.float().to(device).clone())
        self.text_layers, self.vision_layers = len(text), len(vision_tokens)
        config.boost_text_shape = [len(text), *text[0].shape]
        config.boost_vision_shape = [len(vision_tokens), *vision_tokens[0].shape]
        self.in_sequence = config.text_positions == SEQUENCE  # the text encoder then places them
        if not self.in_sequence:
            positions = context.backbone.model.positional_embedding[1 : 1 + text[0].shape[0]].detach()
            self.register_buffer("phase_one_positions", positions.float().clone(), persistent=False)
        self.register_load_state_dict_post_hook(lambda module, keys: setattr(module, "awaiting_state", False))

    @classmethod
    def settle_options(cls, options: CasPLConfig, given: set[str]) -> None:
        """A bundle records every option; one that records the boosting shapes but no
        `text_positions` was written before the option existed, with the phase-one layout."""
        if "boost_text_shape" in given and "text_positions" not in given:
            options.text_positions = PHASE_ONE_POSITIONS

    @staticmethod
    def _check(layers: list[torch.Tensor], width: int, depth: int, tower: str) -> None:
        if not layers or layers[0].shape[-1] != width or len(layers) > depth:
            shape = [len(layers), *layers[0].shape] if layers else []
            raise ValueError(
                f"caspl: the {tower} boosting prompts {shape} do not fit this backbone ({tower} width {width}, depth "
                f"{depth})"
            )

    def _layers(self, kind: str, count: int) -> list[torch.Tensor]:
        return [self.get_buffer(f"boost_{kind}_{i}") for i in range(count)]

    def text_prompts(self) -> list[PromptGroup]:
        if self.awaiting_state:  # every logit goes through the text: checked once here
            raise RuntimeError(
                f"caspl's boosting prompts were neither read from boost_bundle ({self.config.boost_bundle}) nor "
                "loaded from a phase-2 bundle"
            )
        layers = self._layers("text", self.text_layers)
        if not self.in_sequence:
            layers[0] = layers[0] + self.phase_one_positions.to(layers[0].dtype)
        return [PromptGroup(layers, first_layer=0, at=END, name="caspl.text", in_sequence=self.in_sequence)]

    def image_prompts(self) -> list[PromptGroup]:
        return [PromptGroup(self._layers("vision", self.vision_layers), first_layer=0, at=END, name="caspl.vision")]
