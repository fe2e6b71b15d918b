"""DAPT's foreground masks, the frozen input ``dapt`` that the feature cache computes once per
(image, view): DAPT-G maps of the current model (`specpl.methods.dapt.saliency`), or mask files.
Kept apart from the booster: making masks (files paired to views, maps) is not training with them.

- ``gradcam`` (DAPT-G): the input's signature carries the model's epoch, so the cache recomputes
  the masks once per epoch (before training and after every epoch), and the forward pass really
  uses them.
- ``folder`` (DAPT-S or any segmenter): one mask file per training image under `mask_dir`, found by
  the longest matching tail of the image's path (``<class>/<stem>``, then ``<stem>``); binarised as
  the reference does (first channel, `mask_ignore_value` -> 0, any other value >= 1 -> 1). It gets
  the image's own crop and flip: the geometric part of the train transform is replayed under the
  view's seed (`ViewSource.draw_seed`, the feature cache's) on the same-size mask, with nearest interpolation.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch
from open_clip.transform import MaybeConvertMode, MaybeToTensor, _convert_to_rgb
from PIL import Image
from torchvision import transforms

from specpl.data import IMAGE_SUFFIXES, DataError, ImageItem, load_image
from specpl.frozen import ViewSource, seeded_cpu_rng
from specpl.methods.dapt.config import DAPT_INPUT, MASK, DAPTConfig
from specpl.methods.dapt.saliency import saliency_masks

if TYPE_CHECKING:  # the composite DAPT is attached to; it imports the contracts, not this
    from specpl.model import PromptModel

GEOMETRIC = (
    transforms.RandomResizedCrop,
    transforms.Resize,
    transforms.CenterCrop,
    transforms.RandomCrop,
    transforms.RandomHorizontalFlip,
    transforms.RandomVerticalFlip,
)
RESAMPLING = (transforms.RandomResizedCrop, transforms.Resize)
# deterministic format steps: they draw no random numbers and move no pixel
NOT_GEOMETRIC = (
    transforms.ToTensor,
    transforms.Normalize,
    transforms.PILToTensor,
    transforms.ConvertImageDtype,
    MaybeConvertMode,
    MaybeToTensor,
)


def geometric_part(transform: Callable) -> transforms.Compose:
    """The crops, resizes and flips of an image transform, in order, resampling with nearest
    neighbours; run under the image's seed on a same-size mask they draw the same random numbers,
    so the mask gets the same crop and flip. A random transform of another kind would shift the
    random stream, so it is refused."""
    steps = transform.transforms if isinstance(transform, transforms.Compose) else [transform]
    kept = []
    for step in steps:
        if isinstance(step, RESAMPLING):
            nearest = copy.copy(step)
            nearest.interpolation = transforms.InterpolationMode.NEAREST
            kept.append(nearest)
        elif isinstance(step, GEOMETRIC):
            kept.append(step)
        elif not isinstance(step, NOT_GEOMETRIC) and step is not _convert_to_rgb:
            raise ValueError(
                f"DAPT cannot pair masks with the image transform step {step!r}: only crops, resizes, flips and "
                "tensor conversion are supported"
            )
    return transforms.Compose(kept)


class MaskFolder:
    """Mask files paired to images by the longest matching tail of their path, without suffix."""

    def __init__(self, root: str | Path, ignore_value: int | None = 255) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"dapt mask folder {self.root} does not exist or is not a folder")
        self.ignore_value = ignore_value
        self.index = {
            path.relative_to(self.root).with_suffix("").as_posix(): path
            for path in sorted(self.root.rglob("*"))
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
        }
        if not self.index:
            raise DataError(f"dapt mask folder {self.root} holds no image files")

    def find(self, image: Path) -> Path:
        parts = image.with_suffix("").parts
        tried = ["/".join(parts[-k:]) for k in range(len(parts), 0, -1)]
        for key in tried:
            if key in self.index:
                return self.index[key]
        raise DataError(
            f"no mask for {image} in {self.root}: looked for {tried[-2] if len(tried) > 1 else tried[-1]}.* and "
            f"{tried[-1]}.* (any image suffix)"
        )

    def read(self, image: Path) -> Image.Image:
        """The binary mask (mode L, values 0/255) of `image`, checked to have the image's size."""
        path = self.find(image)
        try:
            with Image.open(path) as raw:
                values = np.asarray(raw)
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: unreadable mask ({type(exc).__name__}: {exc})") from exc
        values = values[..., 0] if values.ndim == 3 else values
        binary = values >= 1
        if self.ignore_value is not None:
            binary &= values != self.ignore_value
        size = load_image(image).size  # as the image is decoded: EXIF orientation applied
        if (binary.shape[1], binary.shape[0]) != size:
            raise DataError(
                f"{path}: mask is {binary.shape[1]}x{binary.shape[0]} but its image {image} is {size[0]}x{size[1]}"
            )
        return Image.fromarray((binary * 255).astype(np.uint8))

    def paired(self, items: Sequence[ImageItem], view: int | None, views: "ViewSource") -> torch.Tensor:
        """(B, 1, H, W) bool masks with each image's crop and flip of view `view`."""
        geometry = geometric_part(views.preprocess_train if view is not None else views.preprocess_eval)
        masks = []
        for item in items:
            mask = self.read(item.path)
            if view is None:
                placed = geometry(mask)
            else:
                with seeded_cpu_rng(views.draw_seed(item.path, view)):
                    placed = geometry(mask)
            masks.append(torch.from_numpy(np.asarray(placed) >= 128).unsqueeze(0))
        return torch.stack(masks)


class DecoupledViews:
    """The frozen input ``dapt``: the foreground mask of each view."""

    name = DAPT_INPUT
    needs_items = True

    def __init__(self, config: DAPTConfig, model: Callable[[], PromptModel]) -> None:
        self.config = config
        self.model = model  # the model DAPT is attached to, read when the masks are made (it trains meanwhile)
        self.folder = MaskFolder(config.mask_dir, config.mask_ignore_value) if config.masks == "folder" else None

    @property
    def signature(self) -> str:
        config = self.config
        if self.folder is not None:
            return f"folder:{self.folder.root.resolve()}:ignore{config.mask_ignore_value}"
        model = self.model()
        corners = ":corners" if config.gradcam_align_corners else ""
        normalise = f"{config.gradcam_normalise}{corners}"
        return f"gradcam:{config.cam}:{model.name}@epoch{model.epoch}:t{config.gradcam_threshold}:{normalise}"

    def masks(
        self, images: torch.Tensor, items: Sequence[ImageItem] | None, view: int | None, views: "ViewSource | None"
    ) -> torch.Tensor:
        if self.folder is not None:
            if items is None or views is None:
                raise ValueError(
                    "dapt masks from a folder need the images' items and views (the feature cache passes them)"
                )
            return self.folder.paired(items, view, views).to(images.device)
        config = self.config
        labels = None if items is None else torch.tensor([item.label for item in items], device=images.device)
        return saliency_masks(
            self.model(),
            images,
            labels,
            config.gradcam_threshold,
            config.gradcam_normalise,
            config.cam,
            config.gradcam_align_corners,
        )

    @torch.no_grad()
    def __call__(
        self,
        images: torch.Tensor,
        items: Sequence[ImageItem] | None = None,
        view: int | None = None,
        views: "ViewSource | None" = None,
    ) -> dict[str, torch.Tensor]:
        return {MASK: self.masks(images, items, view, views)}
