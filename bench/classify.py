"""Latency of classifying one image on the CPU, through the library and through the app's path.

    python bench/classify.py ../shared/data/cifar10-fewshot/test/cat/0004.jpg --model ViT-B-32

Zero-shot predictor with random weights (the cost is the same as pretrained ones), 10 classes; the
text features are computed once by a warm-up call, as in the app. Prints the median of N calls.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from app.classify import classify_files
from app.settings import Limits
from specpl.backbone import load_backbone
from specpl.config import BackboneConfig
from specpl.inference import Predictor

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
    predictor = Predictor.zero_shot(load_backbone(BackboneConfig(args.model, pretrained=None)), CLASSES, "a photo of a {}.")
    library = median_ms(lambda: predictor.predict([args.image], top_k=5), args.repeats)
    out = Path(tempfile.mkdtemp())
    app = median_ms(lambda: classify_files(predictor, [args.image], 5, Limits(), out), args.repeats)
    print(f"{args.model}, CPU, {torch.get_num_threads()} threads, one image, median of {args.repeats}:")
    print(f"  library Predictor.predict: {library[0]:.1f} ms (min {library[1]:.1f})")
    print(f"  app classify_files:        {app[0]:.1f} ms (min {app[1]:.1f})")


if __name__ == "__main__":
    main()
