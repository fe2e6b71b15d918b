"""The model card written beside every exported bundle."""
from __future__ import annotations

import json
from typing import Any


def render_model_card(config: dict[str, Any]) -> str:
    backbone = config["backbone"]
    method = config["method"]
    boosters = " + ".join(method.get("boosters") or []) or "none"
    metrics = config.get("metrics") or {}
    lines = [
        f"# SpecPL Studio model: {method['host']} + {boosters}",
        "",
        f"Prompts learned for a frozen CLIP **{backbone['name']}** (pretrained: `{backbone['pretrained']}`, QuickGELU: {backbone['quick_gelu']}).",
        "",
        "## Classes",
        ", ".join(config["classnames"]),
        "",
        "## Files",
        "- `model.safetensors`: the method's own tensors (prompts, bank, refiner, fusion); the frozen CLIP is not included.",
        "- `config.json`: backbone, full method config, ordered class names, template, preprocessing, versions.",
        "",
        "## Training",
        "```json",
        json.dumps({"train": config.get("train"), "data": config.get("data"), "decomposer": config.get("decomposer")}, indent=2),
        "```",
        "",
        "## Evaluation on the run's test split",
        *(f"- {name}: {value:.2f}" if isinstance(value, float) else f"- {name}: {value}" for name, value in metrics.items()),
        "",
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
