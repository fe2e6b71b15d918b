"""The composite model: one host and its boosters over a frozen CLIP (`PromptModel`), as
`specpl.factory.build_method` composes it from registered parts. It knows the contracts of
`specpl.methods.base` and nothing of any one method.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from specpl.bundle import versions, write_bundle
from specpl.frozen import FrozenInput
from specpl.methods.base import (
    FEATURES,
    IMAGE_FEATURES,
    Batch,
    Booster,
    BuildContext,
    Component,
    ForwardState,
    Host,
    compose_hooks,
    stack_label,
)
from specpl.model_card import render_model_card
from specpl.slots import PromptGroup
from specpl.text import TextHook
from specpl.vision import PromptImageEncoder


class PromptModel(nn.Module):
    """Host + boosters over one frozen CLIP. ``forward(batch)`` returns the weighted loss terms."""

    def __init__(
        self, context: BuildContext, host: Host, boosters: list[Booster], options: dict[str, dict[str, Any]]
    ) -> None:
        super().__init__()
        self.context = context
        self.backbone = context.backbone
        self.frozen_clip = context.backbone.model  # registered so .to(device) moves it; excluded from checkpoints
        self.host = host
        self.boosters = nn.ModuleDict({b.name: b for b in boosters})
        clip_scale = context.backbone.model.logit_scale.detach().exp()
        # a 0-d buffer, not a Python float: no host sync to read it, and it moves with the model
        self.register_buffer(
            "logit_scale",
            clip_scale.new_tensor(host.fixed_logit_scale) if host.fixed_logit_scale else clip_scale.clone(),
            persistent=False,
        )
        self.image_encoder = PromptImageEncoder(context.backbone.model) if self._prompts_image_tower() else None
        self.method_options = options  # as requested; `resolved_options` adds build-time values
        self.epoch, self.epochs = 0, 1
        for component in self.components:
            component.attach(self)

    # --- structure -------------------------------------------------------------------------
    @property
    def components(self) -> list[Component]:
        return [self.host, *self.boosters.values()]

    @property
    def name(self) -> str:
        return "+".join(c.name for c in self.components)

    @property
    def preset(self) -> str:
        return self.context.preset

    def label(self) -> str:
        """The stack in words, as built (`stack_label`)."""
        return stack_label(type(self.host), [type(b) for b in self.boosters.values()], self.resolved_options())

    def resolved_options(self) -> dict[str, dict[str, Any]]:
        return {c.name: c.resolved_options() for c in self.components}

    def train(self, mode: bool = True) -> "PromptModel":
        """Switch the method's own modules; the frozen CLIP stays in eval mode whatever is asked.
        Its outputs must not depend on when they are computed: in eval mode PyTorch's attention
        takes a fused path that rounds differently, so a cached feature computed at the start of
        a run (eval) and one computed after a resume (train) differed by about 5e-7, and a
        resumed run drifted from an uninterrupted one. CLIP has no dropout to switch anyway."""
        super().train(mode)
        self.frozen_clip.eval()
        return self

    def _prompts_image_tower(self) -> bool:
        return any(c.image_prompts() or c.image_hook() is not None for c in self.components)

    def image_prompt_groups(self) -> list[PromptGroup]:
        return [g for c in self.components for g in c.image_prompts()]

    @property
    def needs_image_grad(self) -> bool:
        """Whether any trainable tensor sits in the image path (then images are encoded every step
        with gradients; otherwise image outputs are a frozen input, cached per view)."""
        with torch.enable_grad():
            if any(t.requires_grad for g in self.image_prompt_groups() for t in g.tokens):
                return True
        return any(c.trains_image_path for c in self.components)

    @property
    def classnames(self) -> list[str]:
        return self.host.classnames

    def set_classnames(self, classnames: list[str], novel: bool = False) -> None:
        """Build the class prompts; `novel` marks classes the model was not trained on (MMRL sends
        them through its class branch only)."""
        self.host.set_classnames(list(classnames), novel=novel)
        for booster in self.boosters.values():
            booster.set_classnames(list(classnames), novel=novel)

    def frozen_inputs(self) -> list["FrozenInput"]:
        """Every frozen per-image input the components need, once each by name; plus the image
        outputs themselves when no trainable tensor sits in the image path."""
        found: dict[str, "FrozenInput"] = {}
        for component in self.components:
            for item in component.frozen_inputs():
                if item.name in found and found[item.name].signature != item.signature:
                    raise ValueError(f"two components need the frozen input {item.name!r} computed differently")
                found.setdefault(item.name, item)
        if not self.needs_image_grad:
            found[IMAGE_FEATURES] = ImageOutputs(self)
        return list(found.values())

    # --- encoding ---------------------------------------------------------------------------
    def encode_image(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Image outputs with every component's image prompts and hooks applied."""
        if self.image_encoder is None:
            return {FEATURES: self.frozen_clip.encode_image(images)}
        hooks = [c.image_hook() for c in self.components]
        hook = compose_hooks([h for h in hooks if h is not None])
        return self.host.image_outputs(self.image_encoder(images, self.image_prompt_groups(), hook))

    def text_hooks(self) -> list[TextHook]:
        hooks = [c.text_hook() for c in self.components]
        return [h for h in hooks if h is not None]

    def text_features(self, image_features: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(raw, refined) text features; refinement applies every booster in order."""
        groups = [g for b in self.boosters.values() for g in b.text_prompts()]
        raw = self.host.encode_text(image_features, groups, self.text_hooks())
        refined = raw
        for booster in self.boosters.values():
            refined = booster.refine_text(refined)
        return raw, refined

    def logits(
        self, image: dict[str, torch.Tensor], raw: torch.Tensor | None = None, refined: torch.Tensor | None = None
    ) -> torch.Tensor:
        if raw is None or refined is None:
            raw, refined = self.text_features(image[FEATURES] if self.host.conditions_text_on_image else None)
        return self.host.logits(image, raw, refined, self.logit_scale)

    def image_from_batch(self, batch: Batch) -> dict[str, torch.Tensor]:
        cached = {
            k[len(IMAGE_FEATURES) + 1 :]: v for k, v in batch.frozen.items() if k.startswith(IMAGE_FEATURES + ".")
        }
        if cached:
            return cached
        if batch.images is None:
            raise ValueError("the batch has neither images nor cached image outputs")
        return self.encode_image(batch.images)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        image = self.image_from_batch(batch)
        raw, refined = self.text_features(image[FEATURES] if self.host.conditions_text_on_image else None)
        logits = self.host.logits(image, raw, refined, self.logit_scale)
        state = ForwardState(batch, image, raw, refined, logits, self.logit_scale, self.epoch, self.epochs)
        state.anchor = self.host.anchor_logits(image, raw, self.logit_scale)
        for booster in self.boosters.values():
            weights = booster.sample_weights(state)
            if weights is not None:
                state.sample_weights = weights if state.sample_weights is None else state.sample_weights * weights
        losses = self.host.host_losses(state)
        for booster in self.boosters.values():
            losses.update({f"{booster.name}.{k}" if k in losses else k: v for k, v in booster.losses(state).items()})
        return losses

    # --- lifecycle --------------------------------------------------------------------------
    def prepare(self, batches: list[Batch]) -> None:
        with torch.no_grad():
            for component in self.components:
                component.prepare(batches)

    def on_epoch_end(self, epoch: int, epochs: int) -> None:
        self.epoch, self.epochs = epoch, epochs
        for component in self.components:
            component.on_epoch_end(epoch, epochs)

    def finalise(self) -> None:
        for component in self.components:
            component.finalise()

    # --- bundle -----------------------------------------------------------------------------
    def bundle_config(self, run: dict[str, Any]) -> dict[str, Any]:
        """config.json of this model: everything needed to rebuild it, plus the run's record (`run`:
        train settings, data, metrics, ...)."""
        backbone = self.backbone
        preprocessing = dict(getattr(backbone.model.visual, "preprocess_cfg", {}) or {})
        preprocessing.update(
            image_size=backbone.image_size,
            mean=list(backbone.normalization[0]),
            std=list(backbone.normalization[1]),
        )
        decomposer = self.context.decomposer
        return {
            "backbone": dataclasses.asdict(backbone.config),
            "method": {
                "host": self.host.name,
                "boosters": list(self.boosters),
                "preset": self.preset,
                "options": self.resolved_options(),
            },
            "label": self.label(),
            "decomposer": dataclasses.asdict(decomposer) if decomposer is not None else None,
            "classnames": list(self.classnames),
            "template": self.context.template,
            "preprocessing": preprocessing,
            **run,
            "versions": versions(),
        }

    def save_bundle(self, directory: str | Path, run: dict[str, Any] | None = None) -> Path:
        """Write the exported model (tensors, config.json, model card) into `directory`, atomically;
        `specpl.factory.load_bundle` rebuilds it."""
        config = self.bundle_config(run or {})
        return write_bundle(Path(directory), self.learned_state_dict(), config, render_model_card(config))

    # --- state ------------------------------------------------------------------------------
    def learned_state_dict(self) -> dict[str, torch.Tensor]:
        """The method's own tensors (prompts, bank, refiner, fusion, ...), never the frozen CLIP."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("frozen_clip.")}

    def load_learned_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load tensors saved by `learned_state_dict`; any mismatch is an error."""
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("frozen_clip.")]
        if missing or unexpected:
            raise ValueError(
                f"checkpoint does not match the method: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )


class ImageOutputs:
    """The method's own image outputs when no trainable tensor is in the image path (CoOp, KgCoOp,
    CoCoOp): computed once per view instead of every step."""

    name = "image"
    needs_items = False

    def __init__(self, model: PromptModel) -> None:
        self.model = model
        self.signature = f"image path of {model.name}"

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: v.float() for k, v in self.model.encode_image(images).items()}
