"""The benchmarks of the published tables: the 11 base-to-new datasets and the four ImageNet variants.

Folder names, image folders and split files follow CoOp's DATASETS.md (the layout every fork of
CoOp / CoCoOp / MaPLe / PromptSRC reads), so a ``$DATA`` folder prepared for any of them works
here unchanged. The Hugging Face mirror's archives extract to the same folders (`mirror`).
Templates are the hand-crafted per-dataset ones (CoOp's ``CUSTOM_TEMPLATES``, also used by
KgCoOp, CasPL and MMRL).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Collection

from specpl.config import DataConfig
from specpl.data import DataError, FewShotData
from specpl.datasets.layouts import LabelledSplits, read_aircraft, read_imagenet, read_imagenet_variant, read_split_json
from specpl.datasets.mirror import extract_archive, find_archive
from specpl.datasets.protocol import fewshot_data

PLAIN_TEMPLATE = "a photo of a {}."

Reader = Callable[[Path, Collection[str]], LabelledSplits]

# CoOp's class-name fixes for the raw folder names; the reference split files already carry the
# fixed names, so these matter only for a split file regenerated from the raw folders.
CALTECH_RENAMES = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}
EUROSAT_RENAMES = {
    "AnnualCrop": "Annual Crop Land",
    "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings",
    "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land",
    "Residential": "Residential Buildings",
    "SeaLake": "Sea or Lake",
}


@dataclass(frozen=True)
class StandardDataset:
    """One benchmark: where it lives under the data root, how to read it, and its template."""

    name: str  # the registry name (CoOp's config name)
    title: str  # as the published tables name it
    folder: str  # the folder under the data root
    template: str
    layout: str  # the expected tree, shown when something is wrong
    reader: Reader
    marker: str  # a file or folder that identifies `folder` itself, so the root may also be the dataset folder
    archive: str | None = None  # the Hugging Face mirror's archive name, without suffix
    test_only: bool = False  # the ImageNet variants: evaluation targets, nothing to train on

    def locate(self, root: Path) -> Path:
        """The dataset folder: ``root/<folder>``, `root` itself, or the mirror archive extracted."""
        if not root.is_dir():
            raise self.error(f"data root {root} does not exist or is not a folder", root)
        if (root / self.folder).is_dir():
            return root / self.folder
        if (root / self.marker).exists():
            return root
        archive = find_archive(root, self.archive) if self.archive else None
        if archive is not None:
            try:
                return extract_archive(archive, root / self.folder)
            except DataError as exc:
                raise self.error(str(exc), root) from None
        mirror = f" (nor the mirror archive {self.archive}.zip)" if self.archive else ""
        raise self.error(f"{root} has no {self.folder}/ folder{mirror}", root)

    def read(self, config: DataConfig, cache_dir: Path | None = None) -> FewShotData:
        root = Path(config.root).expanduser()
        folder = self.locate(root)
        try:
            return fewshot_data(
                self.name,
                folder,
                partial(self.reader, folder),
                config.shots,
                config.seed,
                config.subsample,
                self.template,
                cache_dir,
            )
        except DataError as exc:
            raise self.error(str(exc), root) from None

    def error(self, problem: str, root: Path) -> DataError:
        return DataError(f"{self.title} ({self.name}): {problem}.\nExpected under the data root {root}:\n{self.layout}")


def _split_file_dataset(
    name: str,
    title: str,
    folder: str,
    image_dir: str,
    split_file: str,
    template: str,
    renames: dict[str, str] | None = None,
    archive: str | None = None,
) -> StandardDataset:
    """The common case: images under ``<folder>/<image_dir>`` and CoOp's ``split_zhou_*.json``."""
    image_root = f"{folder}/{image_dir}/" if image_dir else f"{folder}/"
    layout = (
        f"  {image_root}...  the images; paths in the split file are relative to {image_root}\n"
        f'  {folder}/{split_file}  {{"train"|"val"|"test": [[relative_path, label, classname], ...]}}'
    )

    def reader(path: Path, wanted: Collection[str]) -> LabelledSplits:
        return read_split_json(path / split_file, path / image_dir if image_dir else path, wanted, renames)

    return StandardDataset(name, title, folder, template, layout, reader, marker=split_file, archive=archive or folder)


def _imagenet_variant(
    name: str, title: str, folder: str, image_dir: str, numbered: bool, archive: str
) -> StandardDataset:
    classes = "0/ .. 999/ (folder = label)" if numbered else "<wnid>/ (labels in sorted folder order)"
    layout = (
        f"  {folder}/\n    {image_dir}/{classes}\n"
        "    classnames.txt  (ImageNet's; imagenet/classnames.txt is used when absent)"
    )

    def reader(path: Path, wanted: Collection[str]) -> LabelledSplits:
        candidates = (path / "classnames.txt", path.parent / "imagenet" / "classnames.txt")
        return read_imagenet_variant(path, image_dir, numbered, candidates)

    return StandardDataset(
        name, title, folder, PLAIN_TEMPLATE, layout, reader, marker=image_dir, archive=archive, test_only=True
    )


STANDARD_DATASETS: tuple[StandardDataset, ...] = (
    StandardDataset(
        "imagenet",
        "ImageNet",
        "imagenet",
        PLAIN_TEMPLATE,
        (
            "  imagenet/\n"
            "    classnames.txt  one '<wnid> <class name>' per line, in label order\n"
            "    images/train/<wnid>/*.JPEG\n"
            "    images/val/<wnid>/*.JPEG  (the test split)"
        ),
        read_imagenet,
        marker="classnames.txt",
    ),
    _split_file_dataset(
        "caltech101",
        "Caltech101",
        "caltech-101",
        "101_ObjectCategories",
        "split_zhou_Caltech101.json",
        PLAIN_TEMPLATE,
        CALTECH_RENAMES,
    ),
    _split_file_dataset(
        "oxford_pets",
        "OxfordPets",
        "oxford_pets",
        "images",
        "split_zhou_OxfordPets.json",
        "a photo of a {}, a type of pet.",
    ),
    _split_file_dataset(
        "stanford_cars", "StanfordCars", "stanford_cars", "", "split_zhou_StanfordCars.json", PLAIN_TEMPLATE
    ),
    _split_file_dataset(
        "oxford_flowers",
        "Flowers102",
        "oxford_flowers",
        "jpg",
        "split_zhou_OxfordFlowers.json",
        "a photo of a {}, a type of flower.",
    ),
    _split_file_dataset(
        "food101",
        "Food101",
        "food-101",
        "images",
        "split_zhou_Food101.json",
        "a photo of {}, a type of food.",
        archive="food101",
    ),
    StandardDataset(
        "fgvc_aircraft",
        "FGVCAircraft",
        "fgvc_aircraft",
        "a photo of a {}, a type of aircraft.",
        (
            "  fgvc_aircraft/\n"
            "    images/<image id>.jpg\n"
            "    variants.txt  one variant per line; label = line number\n"
            "    images_variant_train.txt, images_variant_val.txt, images_variant_test.txt  "
            "'<image id> <variant>' per line"
        ),
        read_aircraft,
        marker="variants.txt",
        archive="fgvc_aircraft",
    ),
    _split_file_dataset("sun397", "SUN397", "sun397", "SUN397", "split_zhou_SUN397.json", PLAIN_TEMPLATE),
    _split_file_dataset("dtd", "DTD", "dtd", "images", "split_zhou_DescribableTextures.json", "{} texture."),
    _split_file_dataset(
        "eurosat",
        "EuroSAT",
        "eurosat",
        "2750",
        "split_zhou_EuroSAT.json",
        "a centered satellite photo of {}.",
        EUROSAT_RENAMES,
    ),
    _split_file_dataset(
        "ucf101", "UCF101", "ucf101", "UCF-101-midframes", "split_zhou_UCF101.json", "a photo of a person doing {}."
    ),
    _imagenet_variant(
        "imagenetv2", "ImageNet-V2", "imagenetv2", "imagenetv2-matched-frequency-format-val", True, "imagenetv2"
    ),
    _imagenet_variant("imagenet_sketch", "ImageNet-Sketch", "imagenet-sketch", "images", False, "imagenet-sketch"),
    _imagenet_variant("imagenet_a", "ImageNet-A", "imagenet-adversarial", "imagenet-a", False, "imagenet-adversarial"),
    _imagenet_variant("imagenet_r", "ImageNet-R", "imagenet-rendition", "imagenet-r", False, "imagenet-rendition"),
)

BASE_TO_NEW = tuple(d.name for d in STANDARD_DATASETS if not d.test_only)  # the 11 datasets of the tables
DOMAIN_TARGETS = tuple(d.name for d in STANDARD_DATASETS if d.test_only)
