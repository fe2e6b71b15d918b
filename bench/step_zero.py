"""How far each host (and host + booster) is from zero-shot CLIP before its first step, under a preset.

Text-only hosts start from the template's words and boosters start as the identity, so their gap
is float rounding; deep hosts add tokens to the image tower, which no initialisation can make a
no-op, so theirs is measured here. Images: the demo set's test split through the world CLIP.

    python bench/step_zero.py [--preset default|paper] [--boosters specpl ...] [--seeds 0 1 2]

With several seeds (the draw of every random initial value), each column gives its range over them.
"""

from __future__ import annotations

import argparse

import torch

from specpl.backbone import load_backbone
from specpl.config import DataConfig, DecomposerConfig, MethodConfig
from specpl.datasets import read_dataset
from specpl.defaults import demo_data_dir, world_backbone_config
from specpl.factory import build_method, check_combination
from specpl.inference import Predictor
from specpl.methods import HOSTS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--boosters", nargs="*", default=["specpl"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    backbone = load_backbone(world_backbone_config())
    data = read_dataset(DataConfig(root=str(demo_data_dir()), shots=None))
    paths = [item.path for item in data.test]
    zero_shot = Predictor.zero_shot(backbone, data.classnames, "a photo of a {}.")
    images = zero_shot.preprocess(paths)
    reference = zero_shot.logits(images).softmax(-1)
    print(
        f"| method ({args.preset}) | max abs probability difference | top-1 agreement with zero-shot | "
        "accuracy | zero-shot accuracy |"
    )
    print("|---|---|---|---|---|")
    labels = torch.tensor([item.label for item in data.test])
    for host in [h for h in HOSTS.names() if h != "zeroshot" and HOSTS.get(h).accepts_boosters]:
        for boosters in ([], *[[b] for b in args.boosters]):
            try:
                check_combination(host, boosters)
            except ValueError:
                continue
            gaps, agreements, accuracies = [], [], []
            for seed in args.seeds:
                torch.manual_seed(seed)
                method = MethodConfig(host=host, boosters=boosters, preset=args.preset)
                model = build_method(
                    method, backbone, data.classnames, "a photo of a {}.", DecomposerConfig(name="fft", image_size=64)
                )
                logits = Predictor(model).logits(images).softmax(-1)
                gaps.append(float((logits - reference).abs().max()))
                agreements.append(float((logits.argmax(-1) == reference.argmax(-1)).float().mean() * 100))
                accuracies.append(float((logits.argmax(-1) == labels).float().mean() * 100))
            print(
                f"| {'+'.join([host, *boosters])} | {_span(gaps, '.2e')} | {_span(agreements, '.1f')}% | "
                f"{_span(accuracies, '.1f')}% | {float((reference.argmax(-1) == labels).float().mean() * 100):.1f}% |"
            )


def _span(values: list[float], spec: str) -> str:
    """One value, or the range of several."""
    low, high = min(values), max(values)
    return format(low, spec) if low == high else f"{low:{spec}} to {high:{spec}}"


if __name__ == "__main__":
    main()
