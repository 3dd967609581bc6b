"""The checks of a config against its dataset (freezetune.data.data_problems): class names and
indices the dataset lacks, an imagefolder's missing folders; nothing read but folder names."""

from __future__ import annotations

from pathlib import Path

from freezetune.config import from_dict
from freezetune.data import data_problems


def problems(**data: object) -> list[str]:
    return data_problems(from_dict({"name": "d", "data": data}))


def test_a_fine_dataset_has_no_problems(tmp_path: Path) -> None:
    assert problems(dataset="fashion_mnist", classes=["sneaker", "Ankle boot", "t_shirt_top"]) == []
    assert problems(dataset="fake", classes=[0, 1]) == []
    for split in ("train", "val"):
        for name in ("cat", "dog"):
            (tmp_path / split / name).mkdir(parents=True)
    assert problems(dataset="imagefolder", root=str(tmp_path), classes=["dog", "cat"]) == []


def test_fashion_mnist_names_and_indices_it_lacks() -> None:
    assert problems(dataset="fashion_mnist", classes=[3, 10]) == [
        "data.classes: [3, 10]: Fashion-MNIST has classes 0..9"
    ]
    assert problems(dataset="fashion_mnist", classes=["sneaker", "sandals"]) == [
        "data.classes: ['sandals'] not among Fashion-MNIST's classes (T-shirt/top, Trouser, Pullover, Dress, Coat, "
        "Sandal, Shirt, Sneaker, Bag, Ankle boot)"
    ]


def test_an_imagefolder_without_its_folders(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    assert problems(dataset="imagefolder", root=str(tmp_path)) == [
        f"data.root: imagefolder needs the folders {tmp_path / 'val'}"
    ]
    assert problems(dataset="imagefolder", root=str(tmp_path / "none")) == [
        f"data.root: imagefolder needs the folders {tmp_path / 'none' / 'train'}, {tmp_path / 'none' / 'val'}"
    ]
