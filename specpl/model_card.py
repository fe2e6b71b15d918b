"""The model card written beside every exported bundle: what the model is, how it was trained (the
preset included), its test scores, and how it compares with zero-shot CLIP (the trainer's
``zero_shot``, ``gain_over_zero_shot`` and ``verdict`` metrics)."""

from __future__ import annotations

import json
from typing import Any

from specpl.config import PRESET_ALIASES
from specpl.selection import BASE_NEW_NOTE

# What each preset means (`specpl.config.PRESETS`); configs written before 2026-12-05 say "reference" for "paper"
PRESET_TEXT = {
    "default": (
        "the product's settings, chosen by measurement: "
        "the training budget derived from the number of training images, "
        "and the epoch kept chosen on held-out validation images: "
        "the last, unless validation shows an earlier one (the initial prompts included) clearly better, "
        "or zero-shot CLIP itself when validation cannot see the run beat it"
    ),
    "paper": "the published papers' settings: each host's published epochs and batch size, and the last epoch kept",
}
COMPARISON_KEYS = ("zero_shot", "gain_over_zero_shot", "verdict", "validation_note")


def render_model_card(config: dict[str, Any]) -> str:
    backbone = config["backbone"]
    method = config["method"]
    boosters = " + ".join(method.get("boosters") or []) or "none"
    metrics = config.get("metrics") or {}
    preset = PRESET_ALIASES.get(str(method.get("preset") or "default"), str(method.get("preset") or "default"))
    lines = [
        f"# SpecPL Studio model: {method['host']} + {boosters}",
        "",
        *([f"Method: {config['label']}.", ""] if config.get("label") else []),
        (
            f"{learned_text(config)} a frozen CLIP **{backbone['name']}** "
            f"(pretrained: `{backbone['pretrained']}`, QuickGELU: {backbone['quick_gelu']})."
        ),
        "",
        "## Classes",
        ", ".join(config["classnames"]),
        "",
        "## Files",
        (
            "- `model.safetensors`: the method's own tensors (prompts, bank, refiner, fusion); "
            "the frozen CLIP is not included."
        ),
        "- `config.json`: backbone, full method config, ordered class names, template, preprocessing, versions.",
        "",
        "## Training",
        f"Preset: `{preset}`" + (f", {PRESET_TEXT[preset]}." if preset in PRESET_TEXT else "."),
        "",
        "```json",
        json.dumps(
            {"train": config.get("train"), "data": config.get("data"), "decomposer": config.get("decomposer")}, indent=2
        ),
        "```",
        "",
        "## Evaluation on the run's test split",
        *(
            f"- {name}: {value:.2f}" if isinstance(value, float) else f"- {name}: {value}"
            for name, value in metrics.items()
            if name not in COMPARISON_KEYS
        ),
        "",
        *zero_shot_section(metrics),
        "## Use",
        "```python",
        "from specpl.inference import Predictor",
        "predictor = Predictor.from_bundle('path/to/model')",
        "print(predictor.predict(['image.jpg'], top_k=3))",
        "```",
        "",
        f"Versions: {json.dumps(config.get('versions', {}))}",
        "",
    ]
    return "\n".join(lines)


def learned_text(config: dict[str, Any]) -> str:
    """What the bundle holds: learned prompts, or zero-shot CLIP (asked for, or exported by model
    selection in place of the method a run trained, `trained_method` in the run record)."""
    if config["method"]["host"] != "zeroshot":
        return "Prompts learned for"
    if config.get("trained_method"):
        return (
            f"Zero-shot CLIP, nothing learned: model selection exported it in place of the "
            f"{config['trained_method']} run, which validation could not see beat it (the verdict below), on"
        )
    return "Zero-shot CLIP, nothing learned, on"


def zero_shot_section(metrics: dict[str, Any]) -> list[str]:
    """ "Compared with zero-shot CLIP": zero-shot CLIP's scores on the same test images, the gain in
    points (on the HM for a base-to-new run) and the trainer's verdict; nothing when the run has
    none of them (the paper preset does not score zero-shot; a checkpoint has no metrics)."""
    zero = metrics.get("zero_shot") if isinstance(metrics.get("zero_shot"), dict) else {}
    gain, verdict = metrics.get("gain_over_zero_shot"), metrics.get("verdict")
    if not zero and not isinstance(gain, (int, float)) and not verdict:
        return []
    base_new = all(isinstance(metrics.get(key), (int, float)) for key in ("base", "new", "hm"))
    lines = ["## Compared with zero-shot CLIP"]
    if zero:
        scores = ", ".join(
            f"{name} {zero[name]:.1f}%"
            for name in ("accuracy", "base", "new", "hm")
            if isinstance(zero.get(name), (int, float))
        )
        lines.append(f"- Zero-shot CLIP (same backbone, template and test images): {scores}")
    if isinstance(gain, (int, float)):
        lines.append(f"- Gain over zero-shot: {gain:+.1f} points ({'HM' if base_new else 'accuracy'})")
    if verdict:
        lines.append(f"- {verdict}")
    if base_new:
        lines.append(f"- {BASE_NEW_NOTE}")
    return [*lines, ""]
