"""Counterfactual predictions: one image's semantics with another image's granularity.

Two views of "A's low band with B's high band":
- the granule path, as trained: a booster that trains on band swaps (SpecPL) reports its own view
  (`Component.inspect` with a `SwapQuery`). For SpecPL that is A's image feature FiLM-modulated by A's
  semantic factor and B's high-band embedding, exactly as in its counterfactual loss, whose target
  is B's class; with how far the modulator moved the feature, cos(v, v');
- the image path: the decomposer decodes low(A) + high(B) into a picture, which is classified.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from specpl.bands import BandDecomposer
from specpl.inference import Predictor
from specpl.methods import SwapQuery, SwapRows
from specpl.visualize import to_pil, to_unit_tensor

Ranked = list[tuple[str, float]]
A, B, A_WITH_B, B_WITH_A = "A", "B", "A low + B high", "B low + A high"
PAIR_INDEX = {A: (0, 0), B: (1, 1), A_WITH_B: (0, 1), B_WITH_A: (1, 0)}  # (semantics from, granularity from)
BARELY_MOVED = 0.99  # cos(v, v') above this: the modulator leaves the feature nearly as it was


@dataclass
class GranulePath:
    """A booster's counterfactual view: per pair, the ranked labels, cos(v, v') and the class its
    counterfactual loss trains toward (the granularity donor's predicted class)."""

    booster: str
    rows: dict[str, Ranked]
    modulation_cosine: dict[str, float]
    targets: dict[str, str]


@dataclass
class CounterfactualResult:
    image_path: dict[str, Ranked]  # keys A, B, A_WITH_B, B_WITH_A
    granule_path: GranulePath | None  # None when no booster trains on band swaps
    swapped_images: dict[str, Image.Image]  # A_WITH_B and B_WITH_A, decoded
    summary: str


def _ranked(probs: torch.Tensor, classnames: list[str], top_k: int) -> Ranked:
    values, indices = probs.topk(min(top_k, len(classnames)))
    return [(classnames[i], float(v)) for v, i in zip(values, indices, strict=True)]


@torch.no_grad()
def granule_path(
    predictor: Predictor, images: torch.Tensor, decomposer: BandDecomposer, top_k: int
) -> GranulePath | None:
    """The first component's own view of a band swap between A and B, preprocessed
    (`Component.inspect` with a `SwapQuery`)."""
    model = predictor.model
    images = images.to(predictor.device)
    for component in model.components:
        view = component.inspect(model, SwapQuery(images, decomposer))
        if not isinstance(view, SwapRows):
            continue
        rows = view.rows
        predicted = model.logits(model.encode_image(images)).argmax(dim=-1).tolist()
        names = predictor.classnames
        ranked, cosines, targets = {}, {}, {}
        for pair, (semantic, granule) in PAIR_INDEX.items():
            logits, cosine = rows[(semantic, granule)]
            ranked[pair] = _ranked(logits.float().softmax(-1).cpu(), names, top_k)
            cosines[pair] = cosine
            targets[pair] = names[predicted[granule]]
        return GranulePath(component.name, ranked, cosines, targets)
    return None


def _granule_sentence(path: GranulePath) -> str:
    (before, p_before), (after, p_after) = path.rows[A][0], path.rows[A_WITH_B][0]
    target = path.targets[A_WITH_B]
    if before == after:
        verdict = f"With B's high band, A's granule-path prediction stays '{before}' ({p_before:.0%} -> {p_after:.0%})"
    else:
        verdict = (
            f"With B's high band, A's granule-path prediction changes from '{before}' ({p_before:.0%}) "
            f"to '{after}' ({p_after:.0%})"
        )
    reached = "and reaches" if after == target else "and does not reach"
    cosine = path.modulation_cosine[A_WITH_B]
    strength = (
        f"The FiLM modulator barely moves A's feature (cos {cosine:.4f} between before and after), so the granule path "
        "is close to the plain classifier; that is how the released initialisation trains (docs/methods/specpl.md)."
        if cosine > BARELY_MOVED
        else f"The FiLM modulator moves A's feature clearly (cos {cosine:.4f} between before and after)."
    )
    return f"{verdict}, {reached} the class {path.booster} trains this swap toward, B's '{target}'. {strength}"


def _image_sentence(results: dict[str, Ranked]) -> str:
    (before, p_before), (after, p_after) = results[A][0], results[A_WITH_B][0]
    if before == after:
        return (
            f"With B's high band, the swapped picture of A is still '{before}' ({p_before:.0%} -> {p_after:.0%}): "
            "its granularity did not decide the label."
        )
    return (
        f"With B's high band, the swapped picture of A changes from '{before}' ({p_before:.0%}) "
        f"to '{after}' ({p_after:.0%}): the label follows the granular detail."
    )


def counterfactual(
    predictor: Predictor,
    image_a: Image.Image,
    image_b: Image.Image,
    decomposer: BandDecomposer,
    top_k: int = 5,
    size: int | None = None,
) -> CounterfactualResult:
    """Predictions for A, B and both band swaps, in the granule path and the image path.
    `size` is the decomposer's resolution (default: the backbone's input size)."""
    size = size or predictor.backbone.image_size
    size -= size % decomposer.downsample
    unit_a, unit_b = to_unit_tensor(image_a, size), to_unit_tensor(image_b, size)
    swapped = {
        A_WITH_B: to_pil(decomposer.swap(unit_a, unit_b)[0]),
        B_WITH_A: to_pil(decomposer.swap(unit_b, unit_a)[0]),
    }
    ranked = predictor.predict([image_a, image_b, swapped[A_WITH_B], swapped[B_WITH_A]], top_k=top_k)
    image_results = dict(zip((A, B, A_WITH_B, B_WITH_A), ranked, strict=True))
    granule = granule_path(predictor, predictor.preprocess([image_a, image_b]), decomposer, top_k)
    summary = " ".join(
        [_granule_sentence(granule) if granule is not None else "", _image_sentence(image_results)]
    ).strip()
    return CounterfactualResult(image_results, granule, swapped, summary)
