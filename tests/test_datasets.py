"""The benchmark loaders on fixture datasets written in each real on-disk layout, the protocol
(Dassl-seeded shots, the cache, base/new on label ids), the mirror archives and the errors."""

from __future__ import annotations

import json
import random
import shutil
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from specpl.config import DataConfig
from specpl.data import DataError, ImageItem, read_fewshot_folder
from specpl.datasets import BASE_TO_NEW, DATASETS, DOMAIN_TARGETS, dataset_template, read_dataset
from specpl.datasets.protocol import sample_fewshot
from specpl.registry import UnknownNameError

CLASSES = ["zebra", "apple", "mango", "kiwi", "banana"]  # label id order differs from alphabetical order
PER_SPLIT = {"train": 5, "val": 3, "test": 2}
WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361", "n01494475"]
IMAGENET_NAMES = ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead shark"]

SPLIT_FILE_DATASETS = {  # name: (folder, image dir, split file), as CoOp's DATASETS.md lays them out
    "caltech101": ("caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json"),
    "oxford_pets": ("oxford_pets", "images", "split_zhou_OxfordPets.json"),
    "stanford_cars": ("stanford_cars", "", "split_zhou_StanfordCars.json"),
    "oxford_flowers": ("oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json"),
    "food101": ("food-101", "images", "split_zhou_Food101.json"),
    "sun397": ("sun397", "SUN397", "split_zhou_SUN397.json"),
    "dtd": ("dtd", "images", "split_zhou_DescribableTextures.json"),
    "eurosat": ("eurosat", "2750", "split_zhou_EuroSAT.json"),
    "ucf101": ("ucf101", "UCF-101-midframes", "split_zhou_UCF101.json"),
}
TEMPLATES = {  # the CoOp/CoCoOp templates per dataset
    "oxford_pets": "a photo of a {}, a type of pet.",
    "oxford_flowers": "a photo of a {}, a type of flower.",
    "fgvc_aircraft": "a photo of a {}, a type of aircraft.",
    "food101": "a photo of {}, a type of food.",
    "dtd": "{} texture.",
    "eurosat": "a centered satellite photo of {}.",
    "ucf101": "a photo of a person doing {}.",
}


def tiny_image(path: Path, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (shade % 256, 40, 90)).save(path)


def write_split_file_dataset(root: Path, name: str, classes=CLASSES, per_split=PER_SPLIT) -> Path:
    """A dataset folder with images and a CoOp split file listing them (labels as in `classes`)."""
    folder_name, image_dir, split_file = SPLIT_FILE_DATASETS[name]
    folder = root / folder_name
    image_root = folder / image_dir if image_dir else folder
    split = {}
    for split_name, count in per_split.items():
        rows = []
        for label, classname in enumerate(classes):
            for i in range(count):
                relative = f"{classname}/{split_name}_{i}.jpg"
                tiny_image(image_root / relative, label * 40 + i)
                rows.append([relative, label, classname])
        split[split_name] = rows
    (folder / split_file).write_text(json.dumps(split))
    return folder


def write_aircraft(root: Path, variants: list[str]) -> Path:
    folder = root / "fgvc_aircraft"
    (folder / "images").mkdir(parents=True)
    (folder / "variants.txt").write_text("\n".join(variants) + "\n")
    for split_name, count in PER_SPLIT.items():
        lines = []
        for label, variant in enumerate(variants):
            for i in range(count):
                image_id = f"{label}{split_name[:2]}{i:03d}"
                tiny_image(folder / "images" / f"{image_id}.jpg", label * 40 + i)
                lines.append(f"{image_id} {variant}")
        (folder / f"images_variant_{split_name}.txt").write_text("\n".join(lines) + "\n")
    return folder


def write_classnames(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{w} {n}\n" for w, n in zip(WNIDS, IMAGENET_NAMES, strict=True)))


def write_imagenet(root: Path) -> Path:
    folder = root / "imagenet"
    write_classnames(folder / "classnames.txt")
    for subfolder, count in (("train", 5), ("val", 2)):
        for label, wnid in enumerate(WNIDS):
            for i in range(count):
                tiny_image(folder / "images" / subfolder / wnid / f"{wnid}_{i}.JPEG", label * 40 + i)
    return folder


VARIANTS = {  # name: (folder, image dir, folders are labels 0..n-1, wnids present)
    "imagenetv2": ("imagenetv2", "imagenetv2-matched-frequency-format-val", True, WNIDS),
    "imagenet_sketch": ("imagenet-sketch", "images", False, WNIDS),
    "imagenet_a": ("imagenet-adversarial", "imagenet-a", False, [WNIDS[3], WNIDS[1]]),
    "imagenet_r": ("imagenet-rendition", "imagenet-r", False, [WNIDS[4], WNIDS[0], WNIDS[2]]),
}


def write_variant(root: Path, name: str) -> Path:
    folder_name, image_dir, numbered, wnids = VARIANTS[name]
    folder = root / folder_name
    write_classnames(folder / "classnames.txt")
    for label, wnid in enumerate(wnids):
        class_dir = folder / image_dir / (str(label) if numbered else wnid)
        for i in range(2):
            tiny_image(class_dir / f"{i}.jpg", label * 40 + i)
    if name == "imagenet_a":
        (folder / image_dir / "README.txt").write_text("not a class")  # as in the real archive
    return folder


def write_dataset(root: Path, name: str) -> Path:
    if name in SPLIT_FILE_DATASETS:
        return write_split_file_dataset(root, name)
    if name == "fgvc_aircraft":
        return write_aircraft(root, CLASSES)
    if name == "imagenet":
        return write_imagenet(root)
    return write_variant(root, name)


def read(name: str, root: Path, cache: Path, shots: int | None = 2, seed: int = 1, subsample: str = "all"):
    return DATASETS.get(name)().read(DataConfig(root=str(root), shots=shots, seed=seed, subsample=subsample), cache)


def labels_per_class(items: list[ImageItem]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for item in items:
        counts[item.label] = counts.get(item.label, 0) + 1
    return counts


@pytest.mark.parametrize("name", BASE_TO_NEW)
def test_each_benchmark_layout_reads_with_the_protocol_shots(tmp_path, name):
    write_dataset(tmp_path / "DATA", name)
    data = read(name, tmp_path / "DATA", tmp_path / "cache", shots=2)
    expected_names = IMAGENET_NAMES if name == "imagenet" else CLASSES
    assert data.classnames == expected_names
    assert labels_per_class(data.train) == {label: 2 for label in range(5)}
    assert labels_per_class(data.val) == (
        {} if name == "imagenet" else {label: 2 for label in range(5)}
    )  # ImageNet has no val
    assert labels_per_class(data.test) == {label: 2 for label in range(5)}
    assert all(item.path.is_file() for item in data.train + data.val + data.test)
    assert data.template == TEMPLATES.get(name, "a photo of a {}.") == dataset_template(name)


@pytest.mark.parametrize("name", DOMAIN_TARGETS)
def test_imagenet_variants_are_test_only_with_imagenet_names(tmp_path, name):
    write_variant(tmp_path, name)
    data = read(name, tmp_path, tmp_path / "cache")
    wnids = VARIANTS[name][3]
    expected = wnids if VARIANTS[name][2] else sorted(wnids)  # V2 folders are labels; the others sort by wnid
    assert data.classnames == [IMAGENET_NAMES[WNIDS.index(w)] for w in expected]
    assert not data.train and labels_per_class(data.test) == {label: 2 for label in range(len(wnids))}


def test_class_names_get_the_standard_clean_ups(tmp_path):
    raw = ["Apply_Eye_Makeup", "airplanes", "Faces", "SeaLake", "american_bulldog"]
    write_split_file_dataset(tmp_path, "ucf101", classes=raw)
    assert read("ucf101", tmp_path, tmp_path / "c").classnames == [
        "Apply Eye Makeup",
        "airplanes",
        "Faces",
        "SeaLake",
        "american bulldog",
    ]
    write_split_file_dataset(tmp_path, "caltech101", classes=raw)  # Caltech's own renames apply only to it
    assert read("caltech101", tmp_path, tmp_path / "c").classnames == [
        "Apply Eye Makeup",
        "airplane",
        "face",
        "SeaLake",
        "american bulldog",
    ]
    write_split_file_dataset(tmp_path, "eurosat", classes=raw)
    assert read("eurosat", tmp_path, tmp_path / "c").classnames[3] == "Sea or Lake"


def dassl_reference(train: list[ImageItem], val: list[ImageItem], shots: int, seed: int):
    """Dassl's generate_fewshot_dataset as the reference runs it: the global `random`, seeded once
    by set_random_seed, one random.sample per label in first-appearance order; train, then val."""
    random.seed(seed)
    out = []
    for items, k in ((train, shots), (val, min(shots, 4))):
        tracker: dict[int, list[ImageItem]] = {}
        for item in items:
            tracker.setdefault(item.label, []).append(item)
        out.append([x for group in tracker.values() for x in (random.sample(group, k) if len(group) >= k else group)])
    return tuple(out)


def test_shot_sampling_reproduces_dassl_and_is_deterministic():
    # labels interleaved and not sorted, one class smaller than K: every branch of the reference
    train = [ImageItem(Path(f"t{i}.jpg"), label) for i, label in enumerate([3, 0, 3, 1, 0, 3, 1, 0, 3, 0, 1, 3, 2])]
    val = [ImageItem(Path(f"v{i}.jpg"), i % 4) for i in range(20)]
    for seed in (1, 2, 3):
        assert sample_fewshot(train, val, 3, seed) == dassl_reference(train, val, 3, seed)
    sampled, sampled_val = sample_fewshot(train, val, 3, 1)
    assert [i.label for i in sampled][:3] == [3, 3, 3] and labels_per_class(sampled) == {3: 3, 0: 3, 1: 3, 2: 1}
    assert labels_per_class(sampled_val) == {0: 3, 1: 3, 2: 3, 3: 3}  # min(K, 4) = 3
    assert sample_fewshot(train, val, 3, 1) == (sampled, sampled_val)
    assert sample_fewshot(train, val, 3, 2) != (sampled, sampled_val)
    _, val16 = sample_fewshot(train, val, 16, 1)
    assert labels_per_class(val16) == {0: 4, 1: 4, 2: 4, 3: 4}  # val is capped at 4 shots


def test_base_and_new_follow_label_ids_not_folder_names(tmp_path):
    write_split_file_dataset(tmp_path, "dtd")  # label ids: zebra apple mango kiwi banana
    base = read("dtd", tmp_path, tmp_path / "cache", subsample="base")
    new = read("dtd", tmp_path, tmp_path / "cache", subsample="new")
    assert base.classnames == ["zebra", "apple", "mango"] and new.classnames == ["kiwi", "banana"]
    assert {i.label for i in base.train} == {0, 1, 2} and {i.label for i in new.test} == {0, 1}  # relabelled from 0
    assert all(i.path.parent.name == "kiwi" for i in new.test if i.label == 0)
    full = read("dtd", tmp_path, tmp_path / "cache")
    assert {i.path for i in base.train} | {i.path for i in new.train} == {
        i.path for i in full.train
    }  # one sample, cut in two
    # the same classes as a class-folder tree are labelled by sorted folder name instead
    assert read_fewshot_folder(tmp_path / "dtd" / "images", shots=1, subsample="base", split_ratio=0.5).classnames == [
        "apple",
        "banana",
        "kiwi",
    ]


def test_aircraft_labels_follow_variants_txt(tmp_path):
    variants = ["A380", "707-320", "Boeing 747", "ATR-72"]  # not alphabetical
    write_aircraft(tmp_path, variants)
    assert read("fgvc_aircraft", tmp_path, tmp_path / "c", subsample="base").classnames == ["A380", "707-320"]
    assert read("fgvc_aircraft", tmp_path, tmp_path / "c", subsample="new").classnames == ["Boeing 747", "ATR-72"]


def test_samples_are_cached_per_dataset_shots_and_seed(tmp_path):
    folder = write_split_file_dataset(tmp_path, "oxford_pets")
    cache = tmp_path / "cache"
    first = read("oxford_pets", tmp_path, cache, shots=2, seed=1)
    files = sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*.json"))
    assert len(files) == 1 and files[0].startswith("oxford_pets-") and files[0].endswith("/shot_2-seed_1.json")
    split_file = folder / "split_zhou_OxfordPets.json"
    split = json.loads(split_file.read_text())
    split["train"].reverse()  # a fresh draw would now differ; the cached one must not
    split_file.write_text(json.dumps(split))
    assert read("oxford_pets", tmp_path, cache, shots=2, seed=1).train == first.train
    read("oxford_pets", tmp_path, cache, shots=2, seed=2)
    read("oxford_pets", tmp_path, cache, shots=4, seed=1)
    assert len(list(cache.rglob("*.json"))) == 3
    cache_file = next(cache.rglob("shot_2-seed_1.json"))
    cache_file.write_text("{not json")
    with pytest.raises(DataError, match="few-shot cache .*shot_2-seed_1.json cannot be used.*delete it"):
        read("oxford_pets", tmp_path, cache, shots=2, seed=1)


def test_a_cached_sample_spares_the_imagenet_train_scan(tmp_path):
    write_imagenet(tmp_path)
    first = read("imagenet", tmp_path, tmp_path / "cache", shots=1)
    for wnid in WNIDS:  # the train images not in the sample are no longer needed
        for path in (tmp_path / "imagenet" / "images" / "train" / wnid).iterdir():
            if path not in {i.path for i in first.train}:
                path.unlink()
    assert read("imagenet", tmp_path, tmp_path / "cache", shots=1).train == first.train


def test_all_images_when_shots_is_none(tmp_path):
    write_split_file_dataset(tmp_path, "eurosat")
    data = read("eurosat", tmp_path, tmp_path / "cache", shots=None)
    assert len(data.train) == 25 and len(data.val) == 15 and not (tmp_path / "cache").exists()


def test_the_root_may_be_the_dataset_folder_itself(tmp_path):
    folder = write_split_file_dataset(tmp_path, "sun397")
    assert read("sun397", folder, tmp_path / "cache").classnames == CLASSES


def zip_folder(folder: Path, archive: Path) -> None:
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in sorted(folder.rglob("*")):
            bundle.write(path, path.relative_to(folder.parent).as_posix())


MIRRORED = [name for name in [*BASE_TO_NEW, *DOMAIN_TARGETS] if DATASETS.get(name)().archive]


def test_the_mirror_carries_every_dataset_but_imagenet():
    assert sorted(MIRRORED) == sorted(n for n in [*BASE_TO_NEW, *DOMAIN_TARGETS] if n != "imagenet")
    assert DATASETS.get("food101")().archive == "food101" and DATASETS.get("food101")().folder == "food-101"


@pytest.mark.parametrize("name", MIRRORED)
def test_hugging_face_mirror_archive_is_extracted_once(tmp_path, name):
    # each mirror zip (e.g. food101.zip) holds the CoOp folder (food-101/): read as if never unzipped
    def listing(data, root: Path) -> list[tuple[str, int]]:
        return [(Path(item.path).relative_to(root).as_posix(), item.label) for item in data.test]

    expected = read(name, write_dataset(tmp_path / "unzipped", name).parent, tmp_path / "cache-unzipped")
    spec = DATASETS.get(name)()
    folder = write_dataset(tmp_path / "DATA", name)
    zip_folder(folder, tmp_path / "DATA" / f"{spec.archive}.zip")
    shutil.rmtree(folder)
    data = read(name, tmp_path / "DATA", tmp_path / "cache")
    assert data.classnames == expected.classnames
    assert listing(data, tmp_path / "DATA") == listing(expected, tmp_path / "unzipped") != []
    assert (tmp_path / "DATA" / spec.folder).is_dir()
    assert not [p for p in (tmp_path / "DATA").iterdir() if p.name.startswith(".")]  # no scratch folder left
    (tmp_path / "DATA" / f"{spec.archive}.zip").unlink()
    assert read(name, tmp_path / "DATA", tmp_path / "cache").train == data.train


def test_unsafe_or_damaged_mirror_archives_are_refused(tmp_path):
    with zipfile.ZipFile(tmp_path / "dtd.zip", "w") as bundle:
        bundle.writestr("../escape.txt", "x")
    with pytest.raises(DataError, match=r"dtd.zip has an unsafe member path '\.\./escape.txt'"):
        read("dtd", tmp_path, tmp_path / "cache")
    assert not (tmp_path / "dtd").exists() and not (tmp_path.parent / "escape.txt").exists()
    (tmp_path / "dtd.zip").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DataError, match="dtd.zip is damaged or incomplete"):
        read("dtd", tmp_path, tmp_path / "cache")


def break_split_entry(root: Path) -> None:
    split_file = root / "dtd" / "split_zhou_DescribableTextures.json"
    split = json.loads(split_file.read_text())
    split["val"][2] = ["apple/val_0.jpg", "1"]
    split_file.write_text(json.dumps(split))


def relabel_entry(root: Path) -> None:
    split_file = root / "dtd" / "split_zhou_DescribableTextures.json"
    split = json.loads(split_file.read_text())
    split["test"][0][2] = "lion"
    split_file.write_text(json.dumps(split))


@pytest.mark.parametrize(
    "damage, first_problem",
    [
        (lambda root: shutil.rmtree(root / "dtd"), r"DATA has no dtd/ folder \(nor the mirror archive dtd.zip\)"),
        (
            lambda root: (root / "dtd" / "split_zhou_DescribableTextures.json").unlink(),
            r"split file .*split_zhou_DescribableTextures.json does not exist",
        ),
        (
            lambda root: (root / "dtd" / "split_zhou_DescribableTextures.json").write_text("[1, 2]"),
            "must hold a JSON object",
        ),
        (
            break_split_entry,
            r"val\[2\] is \[\"apple/val_0.jpg\", \"1\"\], expected \[relative_path, label, classname\]",
        ),
        (relabel_entry, r"label 0 is 'zebra' and also 'lion' \(test\[0\]\)"),
        (lambda root: shutil.rmtree(root / "dtd" / "images"), r"image folder .*dtd/images does not exist"),
        (
            lambda root: (root / "dtd" / "images" / "mango" / "test_1.jpg").unlink(),
            r"lists .*images/mango/test_1.jpg, which does not exist",
        ),
    ],
)
def test_a_wrong_layout_names_the_first_problem_and_the_expected_layout(tmp_path, damage, first_problem):
    root = tmp_path / "DATA"
    write_split_file_dataset(root, "dtd")
    damage(root)
    with pytest.raises(DataError, match=first_problem) as info:
        read("dtd", root, tmp_path / "cache")
    message = str(info.value)
    assert message.startswith("DTD (dtd): ")
    assert f"Expected under the data root {root}:" in message and "dtd/split_zhou_DescribableTextures.json" in message


def test_other_layout_errors(tmp_path):
    with pytest.raises(DataError, match=r"data root .*nowhere does not exist.*\n.*Expected"):
        read("oxford_pets", tmp_path / "nowhere", tmp_path / "cache")
    write_aircraft(tmp_path, ["A380", "ATR-72"])
    (tmp_path / "fgvc_aircraft" / "images_variant_val.txt").write_text("0001 A380\n0002 Concorde\n")
    with pytest.raises(DataError, match=r"images_variant_val.txt line 2: variant 'Concorde' is not in .*variants.txt"):
        read("fgvc_aircraft", tmp_path, tmp_path / "cache")
    write_imagenet(tmp_path)
    shutil.rmtree(tmp_path / "imagenet" / "images" / "val" / WNIDS[2])
    with pytest.raises(DataError, match=rf"class folder .*val/{WNIDS[2]} \(from classnames.txt\) does not exist"):
        read("imagenet", tmp_path, tmp_path / "cache")
    write_variant(tmp_path, "imagenet_r")
    (tmp_path / "imagenet-rendition" / "imagenet-r" / "n99999999").mkdir()
    with pytest.raises(DataError, match="n99999999 is not a wnid listed in"):
        read("imagenet_r", tmp_path, tmp_path / "cache")


def write_user_split(root: Path, template: str | None = "a photo of a {}, a type of bird.") -> Path:
    classes = ["wren", "owl", "finch"]  # label ids, not alphabetical
    split = {"train": [], "test": []}
    for label, name in enumerate(classes):
        for i in range(4):
            tiny_image(root / "pics" / f"{name}{i}.png", label * 50 + i)
            split["train" if i < 3 else "test"].append([f"pics/{name}{i}.png", label, name])
    if template:
        split["template"] = template
    (root / "birds.json").write_text(json.dumps(split))
    return root / "birds.json"


def test_a_users_split_json_needs_no_code(tmp_path):
    split_file = write_user_split(tmp_path)
    data = read("split_json", split_file, tmp_path / "cache", shots=2, subsample="base")
    assert data.classnames == ["wren", "owl"] and data.template == "a photo of a {}, a type of bird."
    assert labels_per_class(data.train) == {0: 2, 1: 2} and not data.val
    split_file.rename(tmp_path / "split.json")  # or a folder holding split.json
    assert read("split_json", tmp_path, tmp_path / "cache", shots=2, subsample="new").classnames == ["finch"]


def test_a_users_split_json_errors_show_the_format(tmp_path):
    split_file = write_user_split(tmp_path, template="no placeholder")
    with pytest.raises(
        DataError, match=r"'template' must be a string with a \{\} for the class name(.|\n)*Expected:\n  a JSON file"
    ):
        read("split_json", split_file, tmp_path / "cache")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"split file .*empty/split.json does not exist"):
        read("split_json", tmp_path / "empty", tmp_path / "cache")


def test_read_dataset_dispatches_on_the_config(tmp_path, cifar_root):
    folder = read_dataset(DataConfig(root=str(cifar_root), shots=2, dataset="folder"))
    assert folder == read_fewshot_folder(cifar_root, shots=2) and folder.template is None
    write_split_file_dataset(tmp_path, "ucf101")
    data = read_dataset(
        DataConfig(root=str(tmp_path), shots=1, dataset="ucf101", subsample="new"), cache_dir=tmp_path / "cache"
    )
    assert data.classnames == ["kiwi", "banana"] and data.template == "a photo of a person doing {}."
    with pytest.raises(UnknownNameError, match="unknown dataset 'cifar'; available: caltech101, dtd"):
        read_dataset(DataConfig(root=str(tmp_path), dataset="cifar"))
