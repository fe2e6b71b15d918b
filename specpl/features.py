"""Frozen per-image work, done once: augmented views and the named frozen inputs of a method.

Augmentation draws are deterministic: view ``v`` of an image is seeded by (run seed, the file's
content hash, v), so a cached input and a freshly computed one are the same tensor, and a cached
and an uncached run see identical batches. Every frozen input (`specpl.frozen`) is computed once
per (image, view) and reused; ``max_views`` caps how many views per image are kept.

Augmentation presets (`TrainConfig.augment`):
- ``reference``: the data path of every host's released code (Dassl): a random resized crop of
  scale (s, 1) with s from the host (0.08 for the Dassl hosts, 0.5 for MMRL), bicubic, and a
  horizontal flip, drawn afresh every epoch; the frozen inputs (band statistics included) are
  computed on that same view.
- ``clip``: open_clip's own train transform (a crop of scale 0.9-1, no flip).
- ``none``: the eval transform (no resampling crop to blur fine texture).
Test images always get the eval transform: resize the shorter side (bicubic), centre crop.

Memory: a cached view costs its frozen inputs, e.g. 2 KiB for a 512-d image feature plus 256 B
for SpecPL's 2x32 band statistics (fp32); 16 shots x 100 classes x 100 views is about 36 MB.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from torchvision import transforms

from specpl.data import ImageItem, load_image
from specpl.frozen import FrozenInput, flatten

AUGMENT_PRESETS = ("reference", "clip", "none")


def content_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def reference_train_transform(image_size: int, mean: Sequence[float], std: Sequence[float], min_scale: float) -> Callable:
    """Dassl's ``random_resized_crop`` (bicubic) + ``random_flip`` + CLIP normalisation."""
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(image_size, scale=(min_scale, 1.0), interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )


def train_transform(preset: str, backbone, min_scale: float) -> Callable:
    """The training transform of an augmentation preset for `backbone`."""
    if preset == "reference":
        mean, std = backbone.normalization
        return reference_train_transform(backbone.image_size, mean, std, min_scale)
    if preset == "clip":
        return backbone.preprocess_train
    if preset == "none":
        return backbone.preprocess_eval
    raise ValueError(f"unknown augmentation preset {preset!r}; use one of {', '.join(AUGMENT_PRESETS)}")


class AugmentedViews:
    """Loads an image as a preprocessed tensor: view ``None`` is the eval transform, view ``v`` a
    seeded draw of the train transform."""

    def __init__(self, preprocess_train: Callable, preprocess_eval: Callable, seed: int) -> None:
        self.preprocess_train = preprocess_train
        self.preprocess_eval = preprocess_eval
        self.seed = seed
        self._hashes: dict[Path, str] = {}

    @property
    def signature(self) -> str:
        """Identifies the preprocessing, so cached features are never reused across transforms."""
        return hashlib.sha256(f"{self.preprocess_train}|{self.preprocess_eval}|{self.seed}".encode()).hexdigest()[:16]

    def key(self, path: Path, view: int | None) -> str:
        if path not in self._hashes:
            self._hashes[path] = content_hash(path)
        return f"{self._hashes[path]}:{self.signature}:{'eval' if view is None else view}"

    def draw_seed(self, path: Path, view: int) -> int:
        """The seed of view `view` of `path`: a paired input (a mask) replayed under it with the
        same geometric transform gets the same crop and flip as the image."""
        return int(hashlib.sha256(self.key(path, view).encode()).hexdigest()[:15], 16)

    def load(self, path: Path, view: int | None) -> torch.Tensor:
        image = load_image(path)
        if view is None:
            return self.preprocess_eval(image)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.draw_seed(path, view))
            return self.preprocess_train(image)


class _ViewDataset(torch.utils.data.Dataset):
    """Decodes and augments views in DataLoader workers while the device computes."""

    def __init__(self, views: AugmentedViews, paths: list[Path], view: int | None) -> None:
        self.views, self.paths, self.view = views, paths, view

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.views.load(self.paths[index], self.view)


class FeatureCache:
    """Per-(image, view) cache of a method's frozen inputs, keyed by content hash, preprocessing
    signature and each input's own signature.

    An input whose signature changes (say, once per epoch for one computed by the model being
    trained) is recomputed. An input with ``needs_items = True`` is also given the items and the
    view (``input(images, items=..., view=..., views=...)``) to read files of its own, such as a
    mask paired with each image. With `workers` > 0, views are decoded in DataLoader worker
    processes into pinned memory, so the device never waits on JPEG decoding."""

    def __init__(
        self,
        views: AugmentedViews,
        inputs: Sequence[FrozenInput],
        device: torch.device,
        batch_size: int = 32,
        enabled: bool = True,
        on_progress: Callable[[int, int], None] | None = None,
        workers: int = 0,
    ) -> None:
        self.views = views
        self.inputs = list(inputs)
        self.device = device
        self.batch_size = batch_size
        self.enabled = enabled
        self.on_progress = on_progress  # (done, total) while new inputs are being computed
        self.workers = workers
        self._store: dict[str, dict[str, torch.Tensor]] = {}  # "<view key>:<input>=<signature>" -> its tensors

    def __len__(self) -> int:
        return len(self._store)

    def compute(
        self, images: torch.Tensor, items: list[ImageItem] | None = None, view: int | None = None, inputs: Sequence[FrozenInput] | None = None
    ) -> dict[str, torch.Tensor]:
        """Frozen inputs (all, or `inputs`) of a batch of preprocessed images (no caching)."""
        images = images.to(self.device, non_blocking=True)
        out: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for frozen_input in self.inputs if inputs is None else inputs:
                if getattr(frozen_input, "needs_items", False):
                    value = frozen_input(images, items=items, view=view, views=self.views)
                else:
                    value = frozen_input(images)
                out.update(flatten(frozen_input.name, value))
        return out

    def _view_batches(self, items: list[ImageItem], indices: list[int], view: int | None) -> Iterator[tuple[list[int], torch.Tensor]]:
        """(chunk of indices, their stacked views), decoded in workers when asked."""
        chunks = list(_chunks(indices, self.batch_size))
        if self.workers <= 0:
            for chunk in chunks:
                yield chunk, torch.stack([self.views.load(items[i].path, view) for i in chunk])
            return
        dataset = _ViewDataset(self.views, [items[i].path for i in indices], view)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=self.batch_size, num_workers=self.workers, pin_memory=self.device.type == "cuda", persistent_workers=False
        )
        yield from zip(chunks, loader)

    def get(self, items: list[ImageItem], view: int | None) -> dict[str, torch.Tensor]:
        """Stacked inputs for `items` (in order); computes only the (image, input) pairs missing,
        so an input whose signature changed is recomputed alone."""
        if not self.inputs or not items:
            return {}
        if not self.enabled:
            return self._uncached(items, view)
        views = [self.views.key(item.path, view) for item in items]
        keys = {i.name: [f"{v}:{i.name}={i.signature}" for v in views] for i in self.inputs}
        missing = [row for row in range(len(items)) if any(keys[i.name][row] not in self._store for i in self.inputs)]
        for done, (chunk, images) in enumerate(self._view_batches(items, missing, view)):  # each view decoded once
            for frozen_input in self.inputs:
                if all(keys[frozen_input.name][i] in self._store for i in chunk):
                    continue
                computed = self.compute(images, [items[i] for i in chunk], view, [frozen_input])
                for position, i in enumerate(chunk):
                    self._store[keys[frozen_input.name][i]] = {name: value[position].cpu() for name, value in computed.items()}
            if self.on_progress is not None:
                self.on_progress(min((done + 1) * self.batch_size, len(missing)), len(missing))
        out: dict[str, torch.Tensor] = {}
        for frozen_input in self.inputs:
            stored = [self._store[key] for key in keys[frozen_input.name]]
            out.update({name: torch.stack([entry[name] for entry in stored]) for name in stored[0]})
        return out

    def _uncached(self, items: list[ImageItem], view: int | None) -> dict[str, torch.Tensor]:
        parts = [self.compute(images, [items[i] for i in chunk], view) for chunk, images in self._view_batches(items, list(range(len(items))), view)]
        return {name: torch.cat([p[name].cpu() for p in parts]) for name in parts[0]}


def _chunks(indices: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(indices), size):
        yield indices[start : start + size]
