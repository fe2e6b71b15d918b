"""DAPT booster (Decouple before Align: Visual Disentanglement Enhances Prompt Tuning, TPAMI 2025).

Documented in docs/methods/dapt.md. Each training image is split by a foreground mask m into
x_f = x * m and x_b = x * (1 - m) (in CLIP-normalised pixel space); the three views go through the
same prompted image path and are L2-normalised (z_I, z_f, z_b). Two phases, switching at the
epoch index `switch_epoch` (0-based):
- triplet phase (e < switch): 0.8 * triplet(z_I, sg z_f, sg z_b; p = 2, margin 1.5);
- alignment phase (e >= switch): 0.1 * CE(s sg(z_f) T_fg, y) + 0.5 * CE(s z_b T_bg, argmax z_b T_bg),
  T_fg the run's class text, T_bg the background prompts ("a clean origami {}.", 32 words; the
  paper preset: the last 25, as the released code trains with).
The host's own loss is untouched; DAPT adds nothing at test time (no prompts, no refinement).

Hosts: only those with image-tower prompts (`requires`). On a host whose image path has nothing to
learn (CoOp, CoCoOp, KgCoOp, zero-shot) z_I, z_f and z_b are fixed features: the triplet and the
background terms carry no gradient and only the foreground term, a second text loss, is left
(measured on the world benchmark: 0.0-0.2 points of effect), so the combination is refused.

Masks: the frozen input ``dapt`` (`specpl.methods.dapt.masks`), cached per (image, view) by the
feature cache: DAPT-G maps of the current model (`specpl.methods.dapt.saliency`, chosen by
measurement) or one mask file per training image (DAPT-S or any segmenter).

Deviations and choices (spec §9), all behind options; the paper preset (`DAPT.presets`, sources in
`DAPT.sources`) restores the released code wherever an option can:
- Classification covers the C classes only: DAPT never adds columns to the host's logits, in
  training or at test (the reference appends 7 background prompts in training and on the base
  test split, and all 32 on the novel split). No legacy-slice flag: a booster cannot widen the
  host's logits. T_bg is the clean set of all 32 background prompts (`background_words`; the
  reference's set is the last 25, which the paper preset gives).
- The switch defaults to floor(0.7 E) instead of the reference's fixed 7 (``e > 6``), so short
  runs (5-epoch base-to-novel) reach the alignment phase; `switch_epoch=7` (paper) reproduces it.
- DAPT-G's map defaults to the per-head GradCAM on the last block's values, not the released
  GradCAM on its ``ln_1`` (`cam="gradcam"`): see `specpl.methods.dapt.saliency`. Maps are
  normalised per image (`gradcam_normalise="batch"` is the reference's maximum over the batch the
  maps are computed in: its mask loader's 50 images, here the feature cache's chunk) and upsampled with
  `align_corners=False` (`gradcam_align_corners=True` is the reference's). Not reproduced: the
  reference adds 1e-6 to the maximum of a map whose scale depends on its 32 leaked columns.
  Unlike the reference, the masks are what the forward pass uses.
- The background prompts keep the template's fixed token embeddings at layer 0 and get the host's
  deep text slots (MMRL: its representation tokens) and every booster's text slots from their
  first layer, as MaPLe does in the reference; a host with more pre-placed context positions than
  the template has words before the background word gets placeholder "X" tokens in front, so the
  word itself is never overwritten.
- T_fg is the text the host classifies with (after any booster's refinement).
- Without item labels (a frozen input called on images alone) the gradient maps target the predicted class.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from specpl.data import DataError, load_image
from specpl.methods.base import (
    FEATURES,
    PROMPTS_IMAGE_TOWER,
    Booster,
    BuildContext,
    ForwardState,
    ImageQuery,
    ImageView,
    SwapQuery,
)
from specpl.methods.dapt.config import CAM_NAMES, DAPT_INPUT, MASK, REFERENCE_BACKGROUND_WORDS, DAPTConfig, switch_epoch
from specpl.methods.dapt.losses import background_alignment, foreground_alignment, triplet_pull_push
from specpl.methods.dapt.masks import DecoupledViews, MaskFolder
from specpl.methods.dapt.saliency import saliency_maps
from specpl.methods.prompt import PLACEHOLDER
from specpl.methods.registry import BOOSTERS
from specpl.slots import START, PromptGroup

if TYPE_CHECKING:  # the composite this booster is attached to; it imports the contracts, not this
    from specpl.model import PromptModel

NO_MASK_FILES_NOTE = (
    "This run's DAPT reads its masks from a folder of files (`dapt.masks=folder`), which a shared server does not open."
)
DAPT_REPO = "Ferenas/DAPT@e556f17"


@BOOSTERS.register("dapt")
class DAPT(Booster):
    name = "dapt"
    title = "DAPT"
    description = (
        "DAPT: foreground/background views from masks (GradCAM or files), pull-push then alignment losses (TPAMI 2025)"
    )
    config_class: ClassVar[type] = DAPTConfig
    requires: ClassVar[frozenset[str]] = frozenset({PROMPTS_IMAGE_TOWER})
    requires_reason: ClassVar[str] = (
        "without them nothing in the image tower learns, so DAPT's pull-push and background terms, which train "
        "the image side, carry no gradient; measured effect on such hosts: 0.0-0.2 points"
    )
    # the released trainer is MaPLe's (trainers/maple.py); the README's table adds DAPT + PromptSRC
    published_hosts: ClassVar[tuple[str, ...]] = ("maple", "promptsrc")

    @classmethod
    def label(cls, options: dict[str, Any]) -> str:
        """DAPT-G (GradCAM masks) or DAPT-S (mask files); our per-head GradCAM and the two
        other maps are ours, and the name says so."""
        if options.get("masks", "gradcam") == "folder":
            return "DAPT-S (mask files)"
        cam = options.get("cam", "head-gradcam")
        return "DAPT-G" if cam == "gradcam" else f"DAPT-G ({CAM_NAMES[cam]}, ours)"

    # the released code (module docstring): its ln_1 GradCAM, batch maximum, corner-aligned
    # upsampling, fixed switch and the 25 background words it trains with
    presets: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {
        "paper": {
            "dapt": {
                "cam": "gradcam",
                "gradcam_normalise": "batch",
                "gradcam_align_corners": True,
                "switch_epoch": 7,
                "background_words": list(REFERENCE_BACKGROUND_WORDS),
            },
        },
    }
    sources: ClassVar[dict[str, str]] = {
        "masks": f"{DAPT_REPO} trainers/maple.py:651-654 (DAPT-G: GradCAM masks, again at :683-686 each epoch)",
        "cam": f"{DAPT_REPO} trainers/util.py:39 (the last image block's ln_1), :202-223 (patch-mean weights, ReLU)",
        "mask_dir": "ours: no folder, the paper preset's masks are DAPT-G maps (DAPT-S reads <dataset>/mask: "
        f"{DAPT_REPO} datasets/data_manager.py:293)",
        "mask_ignore_value": f"{DAPT_REPO} datasets/new_da.py:43 (mask == 255 -> 0)",
        "gradcam_threshold": f"{DAPT_REPO} trainers/util.py:234-236 (threshold 0.5)",
        "gradcam_normalise": f"{DAPT_REPO} trainers/util.py:231-232 (divided by the maximum of the whole batch tensor)",
        "gradcam_align_corners": f"{DAPT_REPO} trainers/util.py:228 (F.upsample, bilinear, align_corners=True)",
        "switch_epoch": f"{DAPT_REPO} trainers/maple.py:330 (alignment when epoch > 6)",
        "triplet_weight": f"{DAPT_REPO} trainers/maple.py:324 (para_vd 0.8)",
        "triplet_margin": f"{DAPT_REPO} trainers/maple.py:308 (triplet_margin_loss, margin 1.5)",
        "foreground_weight": f"{DAPT_REPO} trainers/maple.py:323 (para_fg 0.1)",
        "background_weight": f"{DAPT_REPO} trainers/maple.py:322 (para_bg 0.5)",
        "background_template": f"{DAPT_REPO} trainers/maple.py:164 ('a clean origami {{}}.')",
        "background_words": f"{DAPT_REPO} trainers/maple.py:38-46 (32 words), :298 (it trains with the last 25)",
    }

    def __init__(self, config: DAPTConfig, context: BuildContext) -> None:
        super().__init__(config, context)
        if config.masks == "folder" and not config.mask_dir:
            raise ValueError(
                "dapt.masks='folder' needs dapt.mask_dir, the folder of mask files (one per training image)"
            )
        if "{}" not in config.background_template or not config.background_words:
            raise ValueError("dapt.background_template must contain '{}' and dapt.background_words must not be empty")
        self.tokenizer = context.backbone.tokenizer
        self._model: list[PromptModel] = []
        # the background prompts' embeddings, made once the model is attached (`_embed_background_prompts`)
        for name in ("background_prefix", "background_suffix", "background_eot"):
            self.register_buffer(name, None, persistent=False)

    def attach(self, model: PromptModel) -> None:
        """Keep the composing model: the masked views go through its prompted image path, and
        GradCAM runs on it."""
        self._model[:] = [model]

    @property
    def model(self) -> PromptModel:
        if not self._model:
            raise RuntimeError(
                "the dapt booster is not attached to a PromptModel (build it with specpl.factory.build_method)"
            )
        return self._model[0]

    def set_classnames(self, classnames: list[str], novel: bool = False) -> None:
        if self._model and self.background_prefix is None:
            self._embed_background_prompts()

    def frozen_inputs(self) -> list:
        return [DecoupledViews(self.config, lambda: self.model)]

    def inspect(self, model: PromptModel, query: ImageQuery | SwapQuery) -> ImageView | None:
        """Of one image, the foreground mask this run trains with: its mask file (``masks="folder"``,
        over the whole image), else the DAPT-G map of the trained model thresholded as in training,
        on the image as the model sees it (its evaluation crop). A gradient map targets the query's
        class when the run has that class, else the predicted one."""
        if not isinstance(query, ImageQuery):
            return None
        config = self.config
        if config.masks == "folder":
            return self._mask_file_view(query.image_path) if query.read_files else ImageView(NO_MASK_FILES_NOTE)
        device = model.logit_scale.device
        pixels = model.backbone.preprocess_eval(load_image(query.image_path)).unsqueeze(0).to(device)
        label, target = _target_class(model, pixels, query.class_name)
        labels = torch.tensor([label], device=device)
        maps = saliency_maps(model, pixels, labels, config.gradcam_normalise, config.cam, config.gradcam_align_corners)
        saliency = maps[0, 0].float().cpu().numpy()
        mask = saliency >= config.gradcam_threshold  # exactly `saliency_masks`, as DAPT trains with
        mean, std = (torch.tensor(values).view(3, 1, 1) for values in model.backbone.normalization)
        seen = ((pixels[0].float().cpu() * std + mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        note = (
            f"**DAPT-G mask**: the `{config.cam}` map (`dapt.cam`) of this run's model, divided by its maximum and "
            f"thresholded at {config.gradcam_threshold:g}; it marks {float(mask.mean()) * 100:.0f}% of the image "
            f"as foreground. A gradient map targets {target}."
        )
        return ImageView(note, seen, {"saliency": saliency, "mask": mask})

    def _mask_file_view(self, image_path: Path) -> ImageView:
        """The user's mask file for the image, binarised as DAPT reads it, over the whole image."""
        try:
            folder = MaskFolder(self.config.mask_dir, self.config.mask_ignore_value)
            mask = np.asarray(folder.read(image_path)) > 0
            found = folder.find(image_path)
        except DataError as exc:
            return ImageView(
                "This run's DAPT reads its masks from files (`dapt.masks=folder`), and there is none to show here: "
                f"{exc}."
            )
        note = (
            f"**DAPT mask file** `{found.relative_to(folder.root).as_posix()}` from `{folder.root}`, "
            "binarised as DAPT reads it; "
            f"it marks {mask.mean() * 100:.0f}% of the image as foreground (training gives it each view's crop and "
            "flip)."
        )
        return ImageView(note, np.asarray(load_image(image_path)), {"mask": mask})

    # --- views and text -----------------------------------------------------------------------
    def encode_split(self, images: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z_f, z_b) of x * m and x * (1 - m), in one pass through the model's image path."""
        mask = mask.to(images.dtype)
        features = self.model.encode_image(torch.cat([images * mask, images * (1 - mask)]))[FEATURES]
        return features.chunk(2)

    def _text_slots(self) -> list[PromptGroup]:
        """The slots the host's class prompts get: the host's own, then every booster's."""
        model = self.model
        host = [g for g in model.host.own_text_prompts() if g.at == START]
        return [*host, *(g for b in model.boosters.values() for g in b.text_prompts())]

    def background_text(self) -> torch.Tensor:
        """T_bg (N, D): the background prompts through the host's text tower, with the host's and
        every booster's text slots (fixed template embeddings at layer 0)."""
        return self.model.host.text_encoder.forward_shared_prefix(
            self.background_prefix,
            self.background_suffix,
            self.background_eot,
            self._text_slots(),
            self.model.text_hooks(),
        )[0]

    def _embed_background_prompts(self) -> None:
        """Tokenise and embed the background prompts once (never inside a compiled step), with as
        many template tokens in the shared prefix as the slots pre-place after [SOS]."""
        config, text_encoder = self.config, self.model.host.text_encoder
        placed = sum(g.length for g in self._text_slots() if not g.insert)
        head = config.background_template.split("{}")[0].strip()
        head_tokens = int(self.tokenizer([head])[0].argmax()) - 1 if head else 0
        padding = " ".join([PLACEHOLDER] * max(0, placed - head_tokens))
        tokens = self.tokenizer(
            [f"{padding} {config.background_template.format(word)}".strip() for word in config.background_words]
        )
        eot = tokens.argmax(dim=-1)
        device = text_encoder.model.token_embedding.weight.device
        with torch.no_grad():
            embedded = text_encoder.embed_tokens(tokens[:, : int(eot.max()) + 1].to(device)).float()
        cut = 1 + placed
        self.background_prefix = embedded[:1, :cut].clone()
        self.background_suffix = embedded[:, cut:].clone()
        self.background_eot = (eot - cut).to(device)

    # --- losses -------------------------------------------------------------------------------
    def losses(self, state: ForwardState) -> dict[str, torch.Tensor]:
        batch, config = state.batch, self.config
        mask = batch.require(f"{DAPT_INPUT}.{MASK}", "DAPT")
        if batch.images is None:
            raise ValueError("DAPT needs the batch's images: its masked views go through the trainable image path")
        foreground, background = self.encode_split(batch.images, mask)
        if state.epoch < switch_epoch(config, state.epochs):
            return {
                "triplet": config.triplet_weight
                * triplet_pull_push(state.image_features, foreground, background, config.triplet_margin)
            }
        return {
            "foreground": config.foreground_weight
            * foreground_alignment(foreground, state.refined_text, batch.labels, state.logit_scale),
            "background": config.background_weight
            * background_alignment(background, self.background_text(), state.logit_scale),
        }


def _target_class(model: PromptModel, pixels: torch.Tensor, class_name: str | None) -> tuple[int, str]:
    """The class a gradient map targets, and how it was chosen: the image's dataset class when the
    run has it, else the class the model predicts."""
    classnames = model.classnames
    if class_name in classnames:
        return classnames.index(class_name), f"{class_name!r} (the image's class in the dataset)"
    bf16 = next(model.backbone.model.parameters()).dtype == torch.bfloat16  # as the predictor runs a bf16 CLIP
    with torch.no_grad(), torch.autocast(pixels.device.type, dtype=torch.bfloat16, enabled=bf16):
        label = int(model.logits(model.encode_image(pixels)).argmax(dim=-1)[0])
    unknown = f"; its dataset class {class_name!r} is not one of the run's classes" if class_name else ""
    return label, f"{classnames[label]!r} (predicted{unknown})"
