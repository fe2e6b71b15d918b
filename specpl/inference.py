"""Prediction with a trained (or zero-shot) model: load a bundle, classify images, score a split."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from PIL import Image

from specpl.backbone import Backbone, load_backbone
from specpl.checkpoint import read_bundle
from specpl.config import BackboneConfig, MethodConfig, from_dict
from specpl.data import ImageItem, load_image
from specpl.evaluate import EvalResult, evaluate_logits
from specpl.methods import PromptModel, build_method, cosine_logits
from specpl.quantize import int8_image_tower

ImageInput = Image.Image | str | Path


class Predictor:
    """A frozen CLIP + learned prompts, ready to classify. Text features are computed once per
    class set (and per image only for image-conditioned hosts)."""

    def __init__(self, model: PromptModel, config: dict[str, Any] | None = None, device: str | torch.device = "cpu") -> None:
        self.model = model.eval().to(device)
        self.config = config or {}
        self.device = torch.device(device)
        self._text: torch.Tensor | None = None
        self._int8_tower: torch.nn.Module | None = None

    def use_int8_image_tower(self) -> "Predictor":
        """Encode images with an int8 copy of the image tower (CPU only; about 2x faster on a
        small CPU, top-1 nearly always unchanged, see `specpl.quantize`). Hosts that put prompts
        into the image tower keep fp32, since their tower is not CLIP's own."""
        if self.device.type != "cpu":
            raise ValueError(f"the int8 image tower runs on the CPU, this predictor is on {self.device}")
        if self.model.needs_image_grad:
            raise ValueError(f"host {self.model.host.name!r} prompts the image tower; int8 applies only to CLIP's own tower")
        self._int8_tower = int8_image_tower(self.backbone.model.visual, self.backbone.image_size)
        return self

    @property
    def precision(self) -> str:
        return "int8" if self._int8_tower is not None else str(next(self.backbone.model.parameters()).dtype).removeprefix("torch.")

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Raw image features for preprocessed images (B, 3, H, W)."""
        images = images.to(self.device)
        return self._int8_tower(images) if self._int8_tower is not None else self.model.host.encode_image(images)

    @classmethod
    def from_bundle(cls, directory: str | Path, device: str | torch.device = "cpu", backbone: Backbone | None = None) -> "Predictor":
        """Load ``model/`` written by the trainer. The backbone is rebuilt from config.json (pass
        one to reuse an already loaded model of the same name)."""
        tensors, config = read_bundle(Path(directory))
        backbone_config = from_dict(BackboneConfig, config["backbone"])
        if backbone is None:
            backbone = load_backbone(backbone_config, device=device)
        elif (backbone.config.name, backbone.config.pretrained) != (backbone_config.name, backbone_config.pretrained):
            raise ValueError(f"bundle needs backbone {backbone_config.name} ({backbone_config.pretrained}), got {backbone.describe()}")
        method = from_dict(MethodConfig, config["method"])
        model = build_method(method, backbone, list(config["classnames"]), band_stat_dim=config.get("band_stat_dim"))
        model.load_learned_state_dict(tensors)
        return cls(model, config, device)

    @classmethod
    def zero_shot(cls, backbone: Backbone, classnames: Sequence[str], template: str, device: str | torch.device = "cpu") -> "Predictor":
        method = MethodConfig(host="zeroshot", options={"zeroshot": {"template": template}})
        config = {"backbone": dataclasses.asdict(backbone.config), "method": dataclasses.asdict(method), "classnames": list(classnames)}
        return cls(build_method(method, backbone, list(classnames)), config, device)

    @property
    def classnames(self) -> list[str]:
        return self.model.classnames

    @property
    def backbone(self) -> Backbone:
        return self.model.backbone

    def set_classnames(self, classnames: Sequence[str]) -> None:
        self.model.set_classnames(list(classnames))
        self.model.to(self.device)
        self._text = None

    @torch.no_grad()
    def text_features(self) -> torch.Tensor | None:
        """Refined class text features, cached; ``None`` for image-conditioned hosts."""
        if self._text is None and not self.model.host.conditions_text_on_image:
            self._text = self.model.text_features()[1]
        return self._text

    def preprocess(self, images: Sequence[ImageInput]) -> torch.Tensor:
        loaded = [image.convert("RGB") if isinstance(image, Image.Image) else load_image(Path(image)) for image in images]
        return torch.stack([self.backbone.preprocess_eval(image) for image in loaded])

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for preprocessed images (B, 3, H, W)."""
        return self.logits_from_features(self.encode_image(images))

    @torch.no_grad()
    def logits_from_features(self, image_features: torch.Tensor) -> torch.Tensor:
        text = self.text_features()
        if text is None:
            text = self.model.text_features(image_features.to(self.device))[1]
        return cosine_logits(image_features.to(self.device), text, self.model.logit_scale)

    def predict(self, images: Sequence[ImageInput], top_k: int = 5, batch_size: int = 32) -> list[list[tuple[str, float]]]:
        """Top-k (label, probability) per image."""
        results = []
        k = min(top_k, len(self.classnames))
        for start in range(0, len(images), batch_size):
            probs = self.logits(self.preprocess(images[start : start + batch_size])).float().softmax(dim=-1).cpu()
            values, indices = probs.topk(k, dim=-1)
            results += [[(self.classnames[i], float(v)) for v, i in zip(row_v, row_i)] for row_v, row_i in zip(values, indices)]
        return results

    def evaluate(self, items: Sequence[ImageItem], batch_size: int = 32) -> EvalResult:
        return evaluate_logits(self.logits, _batches(self, items, batch_size), self.classnames)


def _batches(predictor: Predictor, items: Sequence[ImageItem], batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        yield predictor.preprocess([item.path for item in chunk]), torch.tensor([item.label for item in chunk])
