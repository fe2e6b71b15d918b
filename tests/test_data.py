"""Few-shot folders: layouts, K-shot sampling, base/new split, EXIF, and every kind of bad input."""

import math

import pytest
from conftest import make_image_folder
from PIL import Image

from specpl.data import DataError, base_new_split, load_image, read_fewshot_folder


def test_train_test_layout_and_shots(cifar_root):
    data = read_fewshot_folder(cifar_root, shots=4, seed=1)
    assert data.classnames[:3] == ["airplane", "automobile", "bird"]
    assert len(data.train) == 40 and len(data.test) == 200
    assert not data.skipped


def test_shot_sampling_is_seeded(cifar_root):
    first = read_fewshot_folder(cifar_root, shots=2, seed=1).train
    assert first == read_fewshot_folder(cifar_root, shots=2, seed=1).train
    assert first != read_fewshot_folder(cifar_root, shots=2, seed=2).train


@pytest.mark.parametrize("n", [2, 5, 10])
def test_base_new_split_is_first_ceil_half(n):
    base, new = base_new_split(n)
    assert list(base) == list(range(math.ceil(n / 2))) and list(new) == list(range(math.ceil(n / 2), n))


def test_base_and_new_subsets_relabel(cifar_root):
    base = read_fewshot_folder(cifar_root, shots=1, subsample="base")
    new = read_fewshot_folder(cifar_root, shots=1, subsample="new")
    assert base.classnames == ["airplane", "automobile", "bird", "cat", "deer"]
    assert new.classnames == ["dog", "frog", "horse", "ship", "truck"]
    assert {i.label for i in new.train} == set(range(5))


def test_split_ratio_layout(tmp_path):
    make_image_folder(tmp_path, {"red": 10, "green_apple": 10})
    data = read_fewshot_folder(tmp_path, shots=None, split_ratio=0.8)
    assert data.classnames == ["green apple", "red"]
    assert len(data.train) == 16 and len(data.test) == 4
    assert not {i.path for i in data.train} & {i.path for i in data.test}


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    assert load_image(path).size == (20, 40)


def test_grayscale_and_rgba_become_rgb(tmp_path):
    Image.new("L", (8, 8), 100).save(tmp_path / "gray.png")
    Image.new("RGBA", (8, 8), (1, 2, 3, 4)).save(tmp_path / "rgba.png")
    assert load_image(tmp_path / "gray.png").mode == "RGB"
    assert load_image(tmp_path / "rgba.png").mode == "RGB"


def test_corrupt_and_non_image_files_are_skipped_and_reported(tmp_path):
    make_image_folder(tmp_path, {"a": 3, "b": 3})
    (tmp_path / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (tmp_path / "b" / "notes.txt").write_text("hello")
    with pytest.warns(UserWarning, match="broken.jpg") as record:
        data = read_fewshot_folder(tmp_path, shots=None, split_ratio=1.0)
    message = str(record[0].message)
    assert "notes.txt" in message and "not an image file" in message and "unreadable image" in message
    assert {s.path.name for s in data.skipped} == {"broken.jpg", "notes.txt"}
    assert all(i.path.name != "broken.jpg" for i in data.train)


def test_symlinks_are_not_followed(tmp_path):
    make_image_folder(tmp_path, {"a": 2, "b": 2})
    (tmp_path / "a" / "link.png").symlink_to(tmp_path / "b" / "000.png")
    with pytest.warns(UserWarning, match="link.png"):
        data = read_fewshot_folder(tmp_path, shots=None, split_ratio=1.0)
    assert "symbolic links" in data.skipped[0].reason


@pytest.mark.parametrize(
    "layout, message",
    [
        (None, "does not exist"),
        ({}, "no class sub-folders"),
        ({"only": 3}, "one class"),
        ({"full": 3, "empty": 0}, "has no readable images"),
    ],
)
def test_bad_folders_give_clear_errors(tmp_path, layout, message):
    root = tmp_path / "data"
    if layout is not None:
        root.mkdir()
        make_image_folder(root, layout)
        if "empty" in layout:
            (root / "empty").mkdir(exist_ok=True)
    with pytest.raises(DataError, match=message) as info:
        read_fewshot_folder(root)
    assert str(root) in str(info.value)
