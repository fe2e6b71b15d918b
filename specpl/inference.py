"""Prediction with a trained (or zero-shot) model: load a bundle, classify images, score a split.

`score_split` scores a whole split once however many processes run: under ``accelerate launch``
each process scores its share and the predictions are gathered with ``gather_for_metrics``, which
drops the samples the sharded loader repeats to even out the last round.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from specpl.backbone import Backbone
from specpl.data import ImageItem, load_image
from specpl.evaluate import EvalResult, accuracy_from_predictions, evaluate_logits
from specpl.factory import build_method, load_bundle
from specpl.methods.base import FEATURES
from specpl.methods.zeroshot import zero_shot_method
from specpl.model import PromptModel
from specpl.quantize import int8_image_tower

if TYPE_CHECKING:
    from accelerate import Accelerator

ImageInput = Image.Image | str | Path
MAX_MISCLASSIFIED = 64


class Predictor:
    """A frozen CLIP + learned prompts, ready to classify. Text features are computed once per
    class set (and per image only for image-conditioned hosts). Images go through the model's one
    image path (`PromptModel.encode_image`), with every host and booster prompt applied."""

    def __init__(
        self, model: PromptModel, config: dict[str, Any] | None = None, device: str | torch.device = "cpu"
    ) -> None:
        self.model = model.eval().to(device)
        self.config = config or {}
        self.device = torch.device(device)
        self._text: tuple[torch.Tensor, torch.Tensor] | None = None
        self._int8_tower: torch.nn.Module | None = None

    def use_int8_image_tower(self) -> "Predictor":
        """Encode images with an int8 copy of the image tower (CPU only; about 2x faster on a
        small CPU, top-1 nearly always unchanged, see `specpl.quantize`). Hosts that put prompts
        into the image tower keep fp32, since their tower is not CLIP's own."""
        if self.device.type != "cpu":
            raise ValueError(f"the int8 image tower runs on the CPU, this predictor is on {self.device}")
        if self.model.image_encoder is not None:
            raise ValueError(f"{self.model.name} prompts the image tower; int8 applies only to CLIP's own tower")
        self._int8_tower = int8_image_tower(self.backbone.model.visual, self.backbone.image_size)
        return self

    @property
    def precision(self) -> str:
        return (
            "int8"
            if self._int8_tower is not None
            else str(next(self.backbone.model.parameters()).dtype).removeprefix("torch.")
        )

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Image outputs for preprocessed images (B, 3, H, W); ``[FEATURES]`` is the (B, D) feature."""
        images = images.to(self.device)
        if self._int8_tower is not None:
            return {FEATURES: self._int8_tower(images)}
        with self.autocast():
            return self.model.encode_image(images)

    @classmethod
    def from_bundle(
        cls, directory: str | Path, device: str | torch.device = "cpu", backbone: Backbone | None = None
    ) -> "Predictor":
        """Load ``model/`` written by the trainer. The backbone is rebuilt from config.json (pass
        one to reuse an already loaded model of the same name)."""
        model, config = load_bundle(directory, device, backbone)
        return cls(model, config, device)

    @classmethod
    def zero_shot(
        cls, backbone: Backbone, classnames: Sequence[str], template: str, device: str | torch.device = "cpu"
    ) -> "Predictor":
        method = zero_shot_method(template)
        config = {
            "backbone": dataclasses.asdict(backbone.config),
            "method": dataclasses.asdict(method),
            "classnames": list(classnames),
            "template": template,
        }
        return cls(build_method(method, backbone, list(classnames), template), config, device)

    @property
    def classnames(self) -> list[str]:
        return self.model.classnames

    @property
    def backbone(self) -> Backbone:
        return self.model.backbone

    def set_classnames(self, classnames: Sequence[str], novel: bool = False) -> None:
        """Classify among `classnames`; `novel` marks classes the model was not trained on."""
        self.model.set_classnames(list(classnames), novel=novel)
        self.model.to(self.device)
        self._text = None

    @torch.no_grad()
    def text_features(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(raw, refined) class text features, cached; ``None`` for image-conditioned hosts."""
        if self._text is None and not self.model.host.conditions_text_on_image:
            self._text = self.model.text_features()
        return self._text

    def preprocess(self, images: Sequence[ImageInput]) -> torch.Tensor:
        loaded = [
            image.convert("RGB") if isinstance(image, Image.Image) else load_image(Path(image)) for image in images
        ]
        return torch.stack([self.backbone.preprocess_eval(image) for image in loaded])

    def autocast(self) -> torch.autocast:
        """bf16 autocast when the frozen CLIP is held in bf16 (as training on a GPU holds it), since
        the learned tensors stay fp32; a no-op otherwise."""
        bf16 = next(self.backbone.model.parameters()).dtype == torch.bfloat16
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16)

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for preprocessed images (B, 3, H, W)."""
        with self.autocast():
            return self.logits_from_features(self.encode_image(images)).float()

    @torch.no_grad()
    def logits_from_features(self, image: dict[str, torch.Tensor]) -> torch.Tensor:
        image = {k: v.to(self.device) for k, v in image.items()}
        text = self.text_features()
        raw, refined = text if text is not None else self.model.text_features(image[FEATURES])
        return self.model.logits(image, raw, refined)

    def predict(
        self, images: Sequence[ImageInput], top_k: int = 5, batch_size: int = 32
    ) -> list[list[tuple[str, float]]]:
        """Top-k (label, probability) per image."""
        results = []
        k = min(top_k, len(self.classnames))
        for start in range(0, len(images), batch_size):
            probs = self.logits(self.preprocess(images[start : start + batch_size])).float().softmax(dim=-1).cpu()
            values, indices = probs.topk(k, dim=-1)
            results += [
                [(self.classnames[i], float(v)) for v, i in zip(row_v, row_i, strict=True)]
                for row_v, row_i in zip(values, indices, strict=True)
            ]
        return results

    def evaluate(self, items: Sequence[ImageItem], batch_size: int = 32) -> EvalResult:
        return evaluate_logits(self.logits, _batches(self, items, batch_size), self.classnames)


def _batches(
    predictor: Predictor, items: Sequence[ImageItem], batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        yield predictor.preprocess([item.path for item in chunk]), torch.tensor([item.label for item in chunk])


class _TestImages(Dataset):
    """(eval-preprocessed image, label, index) of each item; decoded in loader workers when asked."""

    def __init__(self, items: Sequence[ImageItem], preprocess: Callable) -> None:
        self.items, self.preprocess = items, preprocess

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        item = self.items[index]
        return self.preprocess(load_image(item.path)), item.label, index


@torch.no_grad()
def score_split(
    predictor: "Predictor",
    items: Sequence[ImageItem],
    accelerator: "Accelerator | None" = None,
    batch_size: int = 32,
    workers: int = 0,
) -> dict[str, Any]:
    """Accuracy, per-class accuracy, the confusion matrix (rows: true class) and the first
    misclassified images with what they were taken for, over every image of `items` exactly once.

    With an `accelerator` of several processes, each process scores its share of the loader and
    every process returns the metrics of the whole split (rows put back in item order)."""
    names = predictor.classnames
    loader = DataLoader(
        _TestImages(items, predictor.backbone.preprocess_eval), batch_size=batch_size, num_workers=workers
    )
    if accelerator is not None:
        loader = accelerator.prepare_data_loader(loader)
    columns: list[list[torch.Tensor]] = [
        [],
        [],
        [],
        [],
        [],
    ]  # predicted, probability, label, index, true-class log-probability
    for images, labels, indices in loader:
        log_probs = predictor.logits(images).float().log_softmax(-1)
        top = log_probs.exp().max(dim=-1)
        labels = labels.to(top.indices.device)
        rows = (
            top.indices,
            top.values,
            labels,
            indices.to(top.indices.device),
            log_probs.gather(1, labels.long()[:, None])[:, 0],
        )
        if accelerator is not None:
            rows = accelerator.gather_for_metrics(rows)
        for column, values in zip(columns, rows, strict=True):
            column.append(values.cpu())
    if columns[0]:
        predicted, probability, labels, indices, true_log_prob = (torch.cat(column) for column in columns)
        order = indices.argsort()
        predicted, probability, labels, true_log_prob = (
            predicted[order],
            probability[order],
            labels[order].long(),
            true_log_prob[order],
        )
    else:
        predicted, probability, labels, true_log_prob = (
            torch.zeros(0, dtype=torch.long),
            torch.zeros(0),
            torch.zeros(0, dtype=torch.long),
            torch.zeros(0),
        )
    result = accuracy_from_predictions(predicted, labels, names)
    confusion = torch.zeros(len(names), len(names), dtype=torch.long)
    confusion.index_put_((labels, predicted), torch.ones_like(labels), accumulate=True)
    wrong = (predicted != labels).nonzero().flatten().tolist()[:MAX_MISCLASSIFIED]
    misclassified = [
        {
            "path": str(items[i].path),
            "label": names[int(labels[i])],
            "predicted": names[int(predicted[i])],
            "probability": float(probability[i]),
        }
        for i in wrong
    ]
    loss = float(-true_log_prob.mean()) if len(true_log_prob) else float("nan")
    return {
        "accuracy": result.accuracy,
        "loss": loss,
        "per_class": result.per_class,
        "test_images": result.count,
        "confusion": confusion.tolist(),
        "misclassified": misclassified,
    }
