"""How far each host (and host + booster) is from zero-shot CLIP before its first step, under a preset.

Text-only hosts start from the template's words and boosters start as the identity, so their gap
is float rounding; deep hosts add tokens to the image tower, which no initialisation can make a
no-op, so theirs is measured here. Images: the demo set's test split through the world CLIP.

    python bench/step_zero.py [--preset default|paper] [--boosters specpl ...]
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
            torch.manual_seed(0)
            method = MethodConfig(host=host, boosters=boosters, preset=args.preset)
            model = build_method(
                method, backbone, data.classnames, "a photo of a {}.", DecomposerConfig(name="fft", image_size=64)
            )
            logits = Predictor(model).logits(images).softmax(-1)
            gap = float((logits - reference).abs().max())
            agree = float((logits.argmax(-1) == reference.argmax(-1)).float().mean() * 100)
            accuracy = float((logits.argmax(-1) == labels).float().mean() * 100)
            print(
                f"| {'+'.join([host, *boosters])} | {gap:.2e} | {agree:.1f}% | {accuracy:.1f}% | "
                f"{float((reference.argmax(-1) == labels).float().mean() * 100):.1f}% |"
            )


if __name__ == "__main__":
    main()
