"""Zero-shot "<texture> <shape>" classification, shared by the pretraining script, tests and benchmarks."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image

from specpl.world.generator import fewshot_images, world_classnames

# One placeholder for the class name, as in CoOp-style templates: "a photo of a striped circle."
WORLD_TEMPLATE = "a photo of a {}."


@torch.no_grad()
def class_text_features(
    model: torch.nn.Module, tokenizer: Callable, classnames: Sequence[str], template: str = WORLD_TEMPLATE
) -> torch.Tensor:
    """(C, D) unit-norm text embeddings of the templated class names."""
    tokens = tokenizer([template.format(name) for name in classnames])
    return model.encode_text(tokens, normalize=True)


@torch.no_grad()
def zero_shot_accuracy(
    model: torch.nn.Module,
    tokenizer: Callable,
    images: torch.Tensor,
    labels: torch.Tensor,
    classnames: Sequence[str],
    template: str = WORLD_TEMPLATE,
    batch_size: int = 256,
) -> float:
    """Top-1 accuracy of nearest-class-text prediction on preprocessed `images` (N, 3, H, W)."""
    text = class_text_features(model, tokenizer, classnames, template)
    correct = 0
    for start in range(0, len(images), batch_size):
        feats = model.encode_image(images[start : start + batch_size], normalize=True)
        correct += int((feats @ text.T).argmax(dim=1).eq(labels[start : start + batch_size]).sum())
    return correct / len(images)


def world_test_set(
    per_class: int, seed: int, preprocess: Callable[[Image.Image], torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The test split of the few-shot world for `seed` (all classes), preprocessed, with labels."""
    classnames = world_classnames()
    images, labels = [], []
    for _, classname, _, image in fewshot_images(classnames, shots=0, test_per_class=per_class, seed=seed):
        images.append(preprocess(image))
        labels.append(classnames.index(classname))
    return torch.stack(images), torch.tensor(labels)


def world_zero_shot_accuracy(
    model: torch.nn.Module,
    tokenizer: Callable,
    preprocess: Callable[[Image.Image], torch.Tensor],
    per_class: int = 50,
    seed: int = 1,
) -> float:
    """Zero-shot top-1 over the full "<texture> <shape>" class set with `WORLD_TEMPLATE`."""
    images, labels = world_test_set(per_class, seed, preprocess)
    return zero_shot_accuracy(model, tokenizer, images, labels, world_classnames())
