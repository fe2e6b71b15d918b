"""CoCoOp (Zhou et al., CVPR 2022): CoOp's context plus an image-conditioned shift.

A meta-net h (Linear(D -> D/16) -> ReLU -> Linear(D/16 -> W)) maps the normalised image feature
to one bias added to every context token, so the text is recomputed per image for every class
(docs/methods/cocoop.md). The shared-prefix encoder makes that one [SOS] + context pass per image plus the class
suffixes; evaluation runs in chunks of images x classes so a 1,000-class list fits in memory.
Defaults: 4 context tokens from "a photo of a", batch 1, SGD 0.002, 10 epochs. With SpecPL the
bank's tau is 0.02 (docs/methods/specpl.md); at test the paper preset blends raw and refined text 0.5/0.5
(§4) and the default preset uses the refined text it trained on (`specpl.methods.specpl`).

The meta-net's init (``meta_init``): by default ("zero") its last Linear starts with zero weight
and bias, so the shift is 0 at step 0 and CoCoOp starts as CoOp with the same context, rather than
with every class prompt moved by a random per-image shift; the last layer learns from the first
step, the first layer from the second. "pytorch" keeps PyTorch's default init, as the released
code does. Both draw the same random numbers, so the context is the same for a given seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Sequence, get_args

import torch
import torch.nn.functional as F
from torch import nn

from specpl.config import check_choice
from specpl.methods.adapter import ADAPTER_SOURCES, AdapterOptions
from specpl.methods.base import BuildContext
from specpl.methods.coop import ContextHost
from specpl.methods.registry import HOSTS
from specpl.methods.sourcing import context_sources, schedule_sources
from specpl.slots import PromptGroup
from specpl.text import TextHook

MetaInit = Literal["zero", "pytorch"]  # a Literal, so forms offer the choices
META_INITS: tuple[str, ...] = get_args(MetaInit)

COCOOP_CONFIG = "KaiyangZhou/CoOp configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml"


@dataclass
class CoCoOpConfig(AdapterOptions):
    n_ctx: int = 4
    ctx_init: str = "a photo of a"
    init_std: float = 0.02
    ctx_from_template: bool = True  # start from the run's template words (see specpl.methods.coop)
    tail: str = "{}."  # the frozen text after the context, {} = the class name
    meta_reduction: int = 16  # meta-net hidden width = feature dim / this
    eval_pairs_per_chunk: int = 4096  # images x classes encoded at once at evaluation
    meta_init: MetaInit = (
        "zero"  # "zero": the meta-net's last layer starts at 0 (CoCoOp starts as CoOp); "pytorch": the released code's
    )

    def __post_init__(self) -> None:
        check_choice("cocoop.meta_init", self.meta_init, META_INITS)


@HOSTS.register("cocoop")
class CoCoOp(ContextHost):
    name = "cocoop"
    title = "CoCoOp"
    description = "CoCoOp: CoOp's context shifted per image by a small meta-net (CVPR 2022)"
    config_class: ClassVar[type] = CoCoOpConfig
    conditions_text_on_image = True
    training_defaults: ClassVar[dict[str, Any]] = {
        "epochs": 10,
        "batch_size": 1,
        "lr": 0.002,
        "optimizer": "sgd",
        "crop_scale": 0.08,
    }
    presets: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {
        "paper": {"cocoop": {"ctx_from_template": False, "meta_init": "pytorch", "linear_adapter": False}}
    }
    sources: ClassVar[dict[str, str]] = {
        **context_sources("KaiyangZhou/CoOp trainers/cocoop.py"),
        **ADAPTER_SOURCES,
        **schedule_sources(COCOOP_CONFIG, training_defaults),
        "n_ctx": f"{COCOOP_CONFIG} (N_CTX 4)",
        "ctx_init": f"{COCOOP_CONFIG} (CTX_INIT 'a photo of a')",
        "meta_reduction": "KaiyangZhou/CoOp trainers/cocoop.py (meta_net: vis_dim -> vis_dim // 16 -> ctx_dim)",
        "eval_pairs_per_chunk": "ours: images x classes encoded at once at evaluation; memory only, changes no result",
        "meta_init": "KaiyangZhou/CoOp trainers/cocoop.py (nn.Linear's default init)",
    }

    def __init__(self, config: CoCoOpConfig, context: BuildContext) -> None:
        super().__init__(config, context)
        dim, width = context.embed_dim, self.text_encoder.width
        hidden = max(1, dim // config.meta_reduction)
        self.meta_net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, width))
        if config.meta_init == "zero":  # zeroed after PyTorch's init: the same random draws as "pytorch"
            nn.init.zeros_(self.meta_net[-1].weight)
            nn.init.zeros_(self.meta_net[-1].bias)

    def encode_text(
        self,
        image_features: torch.Tensor | None = None,
        groups: Sequence[PromptGroup] = (),
        hooks: Sequence[TextHook] = (),
    ) -> torch.Tensor:
        """(B, C, D): the prompts of every class conditioned on each image."""
        if image_features is None:
            raise ValueError("CoCoOp's text depends on the image: pass the image features")
        shift = self.meta_net(F.normalize(image_features, dim=-1).to(self.meta_net[0].weight.dtype))
        groups = [*self.own_text_prompts(), *groups]
        if self.training:
            return self.prompt_learner(shift, groups, hooks=hooks)
        return self._chunked(shift, groups, hooks)

    def _chunked(self, shift: torch.Tensor, groups: list[PromptGroup], hooks: Sequence[TextHook]) -> torch.Tensor:
        """The same features as one call, computed in memory-bounded blocks of images x classes."""
        n_cls = len(self.classnames)
        per_chunk = max(1, self.config.eval_pairs_per_chunk)
        classes = max(1, min(n_cls, per_chunk))
        images = max(1, per_chunk // classes)
        rows = []
        for start in range(0, shift.shape[0], images):
            block = shift[start : start + images]
            rows.append(
                torch.cat(
                    [
                        self.prompt_learner(block, groups, slice(c, c + classes), hooks)
                        for c in range(0, n_cls, classes)
                    ],
                    dim=1,
                )
            )
        return torch.cat(rows, dim=0)
