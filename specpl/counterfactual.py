"""Counterfactual predictions: one image's semantics with another image's granularity.

Two views of "A's low band with B's high band":
- the embedding path, as trained: A's image feature is FiLM-modulated by (A's predicted class text,
  B's high-band embedding) exactly as in SpecPL's counterfactual loss (needs the SpecPL booster);
- the image path: the decomposer decodes low(A) + high(B) into a picture, which is classified.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from specpl.bands import BandDecomposer
from specpl.features import BandFeaturizer
from specpl.inference import Predictor
from specpl.visualize import to_pil, to_unit_tensor

Ranked = list[tuple[str, float]]
A, B, A_WITH_B, B_WITH_A = "A", "B", "A low + B high", "B low + A high"


@dataclass
class CounterfactualResult:
    image_path: dict[str, Ranked]  # keys A, B, A_WITH_B, B_WITH_A
    embedding_path: dict[str, Ranked] | None  # None when the model has no SpecPL booster
    swapped_images: dict[str, Image.Image]  # A_WITH_B and B_WITH_A, decoded
    summary: str


def _ranked(probs: torch.Tensor, classnames: list[str], top_k: int) -> Ranked:
    values, indices = probs.topk(min(top_k, len(classnames)))
    return [(classnames[i], float(v)) for v, i in zip(values, indices)]


@torch.no_grad()
def embedding_path(predictor: Predictor, images: torch.Tensor, decomposer: BandDecomposer, size: int, top_k: int) -> dict[str, Ranked] | None:
    """Granule-path predictions for the pair (A, B) of preprocessed images, factual and swapped."""
    booster = predictor.model.boosters["specpl"] if "specpl" in predictor.model.boosters else None
    if booster is None:
        return None
    model = predictor.model
    images = images.to(predictor.device)
    features = predictor.encode_image(images)
    featurizer = BandFeaturizer(decomposer, model.backbone.normalization, size).to(predictor.device)
    _, high = booster.band_embeddings(*featurizer(images))
    raw, refined = model.text_features(features if model.host.conditions_text_on_image else None)
    predicted = predictor.logits_from_features(features).argmax(dim=-1)
    shared = raw[torch.arange(2), predicted] if raw.dim() == 3 else raw[predicted]
    out = {}
    for name, semantic, granule in ((A, 0, 0), (B, 1, 1), (A_WITH_B, 0, 1), (B_WITH_A, 1, 0)):
        text = refined[semantic] if refined.dim() == 3 else refined
        logits = booster.modulated_logits(features[[semantic]], shared[[semantic]], high[[granule]], text, model.logit_scale)
        out[name] = _ranked(logits[0].float().softmax(-1).cpu(), predictor.classnames, top_k)
    return out


def _sentence(results: dict[str, Ranked]) -> str:
    (before, p_before), (after, p_after) = results[A][0], results[A_WITH_B][0]
    if before == after:
        return f"With B's high band, A is still '{before}' ({p_before:.0%} -> {p_after:.0%}): its granularity did not decide the label."
    return f"With B's high band, A changes from '{before}' ({p_before:.0%}) to '{after}' ({p_after:.0%}): the label follows the granular detail."


def counterfactual(
    predictor: Predictor, image_a: Image.Image, image_b: Image.Image, decomposer: BandDecomposer, top_k: int = 5, size: int | None = None
) -> CounterfactualResult:
    """Predictions for A, B and both band swaps, in the embedding path and the image path.
    `size` is the decomposer's resolution (default: the backbone's input size)."""
    size = size or predictor.backbone.image_size
    size -= size % decomposer.downsample
    unit_a, unit_b = to_unit_tensor(image_a, size), to_unit_tensor(image_b, size)
    swapped = {A_WITH_B: to_pil(decomposer.swap(unit_a, unit_b)[0]), B_WITH_A: to_pil(decomposer.swap(unit_b, unit_a)[0])}
    ranked = predictor.predict([image_a, image_b, swapped[A_WITH_B], swapped[B_WITH_A]], top_k=top_k)
    image_results = dict(zip((A, B, A_WITH_B, B_WITH_A), ranked))
    embedding = embedding_path(predictor, predictor.preprocess([image_a, image_b]), decomposer, size, top_k)
    summary = _sentence(embedding if embedding is not None else image_results)
    return CounterfactualResult(image_results, embedding, swapped, summary)
