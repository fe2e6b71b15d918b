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

Several processes (``accelerate launch``): the fill is sharded. Each process computes a contiguous
share of the missing (image, view) entries (``split_between_processes``), and the shares are
all-gathered chunk by chunk, so every process ends up holding the full cache. The alternative,
each process keeping only the entries its sampler needs, would tie the cache to the sampler's
sharding of each epoch's order; the full copy costs little (16 shots x 1000 ImageNet classes is
about 37 MB a view at the sizes above) and keeps batches, resume and bank initialisation identical
to one process.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from accelerate import PartialState
from accelerate.utils import gather
from torchvision import transforms

from specpl.config import AUGMENT_ALIASES
from specpl.data import ImageItem, load_image
from specpl.frozen import FrozenInput, flatten, seeded_cpu_rng

AUGMENT_PRESETS = ("dassl", "clip", "none")


def content_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def dassl_train_transform(image_size: int, mean: Sequence[float], std: Sequence[float], min_scale: float) -> Callable:
    """Dassl's ``random_resized_crop`` (bicubic) + ``random_flip`` + CLIP normalisation."""
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(
                image_size, scale=(min_scale, 1.0), interpolation=transforms.InterpolationMode.BICUBIC
            ),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )


def train_transform(preset: str, backbone, min_scale: float) -> Callable:
    """The training transform of an augmentation preset for `backbone` (``reference`` is read as
    ``dassl``, its name before 2026-12-06)."""
    preset = AUGMENT_ALIASES.get(preset, preset)
    if preset == "dassl":
        mean, std = backbone.normalization
        return dassl_train_transform(backbone.image_size, mean, std, min_scale)
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
        with seeded_cpu_rng(self.draw_seed(path, view)):
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
    processes into pinned memory, so the device never waits on JPEG decoding. With `processes`
    (accelerate's state, several processes), each process computes its share of the missing
    entries and receives the others' (see the module notes); every process must then call `get`
    with the same items in the same order, as the trainer does."""

    def __init__(
        self,
        views: AugmentedViews,
        inputs: Sequence[FrozenInput],
        device: torch.device,
        batch_size: int = 32,
        enabled: bool = True,
        on_progress: Callable[[int, int], None] | None = None,
        workers: int = 0,
        processes: PartialState | None = None,
    ) -> None:
        self.views = views
        self.inputs = list(inputs)
        self.device = device
        self.batch_size = batch_size
        self.enabled = enabled
        self.on_progress = on_progress  # (done, total) while new inputs are being computed
        self.workers = workers
        self.processes = processes if processes is not None and processes.num_processes > 1 else None
        self._store: dict[str, dict[str, torch.Tensor]] = {}  # "<view key>:<input>=<signature>" -> its tensors

    def __len__(self) -> int:
        return len(self._store)

    def compute(
        self,
        images: torch.Tensor,
        items: list[ImageItem] | None = None,
        view: int | None = None,
        inputs: Sequence[FrozenInput] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Frozen inputs (all, or `inputs`) of a batch of preprocessed images (no caching)."""
        images = images.to(self.device, non_blocking=True)
        out: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for frozen_input in self.inputs if inputs is None else inputs:
                if frozen_input.needs_items:
                    value = frozen_input(images, items=items, view=view, views=self.views)
                else:
                    value = frozen_input(images)
                out.update(flatten(frozen_input.name, value))
        return out

    def _view_batches(
        self, items: list[ImageItem], indices: list[int], view: int | None
    ) -> Iterator[tuple[list[int], torch.Tensor]]:
        """(chunk of indices, their stacked views), decoded in workers when asked."""
        chunks = list(_chunks(indices, self.batch_size))
        if self.workers <= 0:
            for chunk in chunks:
                yield chunk, torch.stack([self.views.load(items[i].path, view) for i in chunk])
            return
        dataset = _ViewDataset(self.views, [items[i].path for i in indices], view)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )
        yield from zip(chunks, loader, strict=True)

    def get(self, items: list[ImageItem], view: int | None) -> dict[str, torch.Tensor]:
        """Stacked inputs for `items` (in order); computes only the inputs missing for some image,
        so an input whose signature changed is recomputed alone."""
        if not self.inputs or not items:
            return {}
        if not self.enabled:
            computed: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
            for row, name, entry in self._fill(items, list(range(len(items))), view, self.inputs):
                computed[row, name] = entry
            return self._stacked([[computed[row, i.name] for row in range(len(items))] for i in self.inputs])
        views = [self.views.key(item.path, view) for item in items]
        keys = {i.name: [f"{v}:{i.name}={i.signature}" for v in views] for i in self.inputs}
        missing = [row for row in range(len(items)) if any(keys[i.name][row] not in self._store for i in self.inputs)]
        stale = [i for i in self.inputs if any(keys[i.name][row] not in self._store for row in missing)]
        for row, name, entry in self._fill(items, missing, view, stale):
            self._store[keys[name][row]] = entry
        return self._stacked([[self._store[key] for key in keys[i.name]] for i in self.inputs])

    def _fill(
        self, items: list[ImageItem], rows: list[int], view: int | None, inputs: Sequence[FrozenInput]
    ) -> Iterator[tuple[int, str, dict[str, torch.Tensor]]]:
        """(row, input name, its tensors on the CPU) for every row in `rows` and every input in
        `inputs`, each view decoded once. Under several processes this process computes its
        contiguous share of `rows` (padded by repeating the last row, so every share has the same
        length and the same number of chunks) and each chunk is all-gathered; a padded row comes
        back twice with the same values."""
        if not rows or not inputs:
            return
        share = rows
        if self.processes is not None:
            with self.processes.split_between_processes(rows, apply_padding=True) as own:
                share = list(own)
        world = self.processes.num_processes if self.processes is not None else 1
        for done, (chunk, images) in enumerate(self._view_batches(items, share, view)):
            computed = {i.name: self.compute(images, [items[row] for row in chunk], view, [i]) for i in inputs}
            chunk_rows = torch.tensor(chunk, device=self.device)
            if self.processes is not None:
                chunk_rows, computed = gather((chunk_rows, computed))
            for position, row in enumerate(chunk_rows.tolist()):
                for name, tensors in computed.items():
                    yield row, name, {key: value[position].cpu() for key, value in tensors.items()}
            if self.on_progress is not None:
                self.on_progress(min((done + 1) * self.batch_size * world, len(rows)), len(rows))

    @staticmethod
    def _stacked(entries_per_input: list[list[dict[str, torch.Tensor]]]) -> dict[str, torch.Tensor]:
        """One (N, ...) tensor per output name from each input's per-row entries."""
        out: dict[str, torch.Tensor] = {}
        for entries in entries_per_input:
            out.update({name: torch.stack([entry[name] for entry in entries]) for name in entries[0]})
        return out


def _chunks(indices: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(indices), size):
        yield indices[start : start + size]
