"""Models loaded in the app process, kept warm so that Classify, Bands and Counterfactual answer
quickly while trainings run in their own processes. Inference here runs on the CPU, with an int8
image tower unless turned off (``SPECPL_CPU_INT8=0``): about 1.9x faster for ViT-B-32 on 2 cores
at the cost of a rare top-1 change (bench/RESULTS.md)."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Hashable, Sequence

from specpl.backbone import Backbone, load_backbone
from specpl.bands import BandDecomposer, build_decomposer
from specpl.config import BackboneConfig, DecomposerConfig, from_dict
from specpl.inference import Predictor
from specpl.quantize import QuantizationUnavailable

DEVICE = "cpu"


class _LRU:
    """A small least-recently-used cache; `build` runs under the lock so a model loads once."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, build: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            value = build()
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
            return value


class ModelCache:
    def __init__(self, int8: bool = True, backbones: int = 2, predictors: int = 6, decomposers: int = 3) -> None:
        self.int8 = int8
        self._backbones = _LRU(backbones)
        self._predictors = _LRU(predictors)
        self._decomposers = _LRU(decomposers)

    def _ready(self, predictor: Predictor) -> Predictor:
        """The predictor with the int8 tower where it applies; fp32 where it does not."""
        if self.int8 and not predictor.model.needs_image_grad:
            try:
                predictor.use_int8_image_tower()
            except QuantizationUnavailable:
                pass  # this torch has no int8 kernels: fp32 answers the same, only slower
        return predictor

    def backbone(self, config: BackboneConfig) -> Backbone:
        key = (config.name, config.pretrained, config.quick_gelu, config.cache_dir)
        return self._backbones.get(key, lambda: load_backbone(config, device=DEVICE))

    def bundle_predictor(self, model_dir: Path) -> Predictor:
        """The predictor of a model bundle, rebuilt when the bundle's weights change."""
        weights = model_dir / "model.safetensors"
        key = ("bundle", str(model_dir), weights.stat().st_mtime_ns if weights.exists() else None)

        def build() -> Predictor:
            config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
            backbone = self.backbone(from_dict(BackboneConfig, config["backbone"]))
            return self._ready(Predictor.from_bundle(model_dir, device=DEVICE, backbone=backbone))

        return self._predictors.get(key, build)

    def zero_shot_predictor(self, config: BackboneConfig, classnames: Sequence[str], template: str) -> Predictor:
        key = ("zero-shot", config.name, config.pretrained, tuple(classnames), template)
        return self._predictors.get(
            key,
            lambda: self._ready(Predictor.zero_shot(self.backbone(config), list(classnames), template, device=DEVICE)),
        )

    def decomposer(self, config: DecomposerConfig) -> BandDecomposer:
        key = (config.name, config.source, config.lowpass_kernel, config.image_size)
        return self._decomposers.get(key, lambda: build_decomposer(config, device=DEVICE))
