"""Latency of classifying one image on the CPU, through the library and through the app's path.

    python bench/classify.py path/to/image.jpg --model ViT-B-32

Zero-shot predictor with random weights (the cost is the same as pretrained ones), 10 classes; the
text features are computed once by a warm-up call, as in the app. Prints the median of N calls for
the fp32 image tower and for the int8 one the app uses on the CPU, then what int8 costs in accuracy
where accuracy means something: the pretrained world CLIP on 360 fresh SpectralWorld test images.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from app.runtime.settings import Limits
from app.views.classification import classify_files
from specpl.backbone import load_backbone
from specpl.config import BackboneConfig
from specpl.defaults import world_backbone_config
from specpl.inference import Predictor
from specpl.world.generator import fewshot_images, world_classnames
from specpl.world.zeroshot import WORLD_TEMPLATE

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def median_ms(call, repeats: int) -> tuple[float, float]:
    call()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times), min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", type=Path)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    backbone = load_backbone(BackboneConfig(args.model, pretrained=None))
    fp32 = Predictor.zero_shot(backbone, CLASSES, "a photo of a {}.")
    int8 = Predictor(fp32.model, fp32.config).use_int8_image_tower()
    out = Path(tempfile.mkdtemp())
    print(f"{args.model}, CPU, {torch.get_num_threads()} threads, one image, median of {args.repeats}:")
    for predictor in (fp32, int8):
        library = median_ms(lambda p=predictor: p.predict([args.image], top_k=5), args.repeats)
        app = median_ms(lambda p=predictor: classify_files(p, [args.image], 5, Limits(), out), args.repeats)
        print(
            f"  {predictor.precision:8s} library Predictor.predict {library[0]:6.1f} ms (min {library[1]:.1f}), "
            f"app classify_files {app[0]:6.1f} ms (min {app[1]:.1f})"
        )
    print("world-clip zero-shot, 36 classes x 10 fresh test images:")
    world = Predictor.zero_shot(load_backbone(world_backbone_config()), world_classnames(), WORLD_TEMPLATE)
    labels = torch.tensor(
        [world_classnames().index(name) for _, name, _, _ in fewshot_images(world_classnames(), 0, 10, seed=777)]
    )
    batch = world.preprocess([image for _, _, _, image in fewshot_images(world_classnames(), 0, 10, seed=777)])
    reference = world.logits(batch).argmax(-1)
    for predictor in (world, Predictor(world.model, world.config).use_int8_image_tower()):
        top1 = predictor.logits(batch).argmax(-1)
        print(
            f"  {predictor.precision:8s} top-1 {100 * (top1 == labels).float().mean():.2f}%, "
            f"same top-1 as fp32 on {100 * (top1 == reference).float().mean():.2f}%"
        )


if __name__ == "__main__":
    main()
