"""Loaders: Fashion-MNIST read from tiny idx files written here, FakeData, subsets."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest
import torch

from freezetune.config import ConfigError, resolve_data
from freezetune.config import DataConfig as _DataConfig
from freezetune.data import FMNIST_FILES, build_loaders, ensure_fashion_mnist, num_classes_of


def DataConfig(**kwargs) -> _DataConfig:  # noqa: N802 - stands in for the class in these tests
    """A data section with its preprocessing resolved from the dataset's defaults (no weights)."""
    return resolve_data(_DataConfig(**kwargs))[0]


def write_idx(folder: Path, n: int, gz: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Write a tiny Fashion-MNIST (idx format: big-endian header, then uint8 data)."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g)
    labels = torch.arange(n, dtype=torch.uint8) % 10
    blobs = {
        "images": struct.pack(">IIII", 2051, n, 28, 28) + images.numpy().tobytes(),
        "labels": struct.pack(">II", 2049, n) + labels.numpy().tobytes(),
    }
    for name in FMNIST_FILES:
        data = blobs["images" if "images" in name else "labels"]
        if gz:
            with gzip.open(folder / f"{name}.gz", "wb") as f:
                f.write(data)
        else:
            (folder / name).write_bytes(data)
    return images, labels


def test_fashion_mnist_from_idx_files(tmp_path: Path) -> None:
    images, labels = write_idx(tmp_path / "FashionMNIST" / "raw", 40)
    cfg = DataConfig(dataset="fashion_mnist", root=str(tmp_path), image_size=32, batch_size=8)
    loaders = build_loaders(cfg, seed=0)
    assert loaders.num_classes == 10
    assert len(loaders.train.dataset) == 40 and len(loaders.val.dataset) == 40
    x, y = next(iter(loaders.val))  # not shuffled: the first 8 images in file order
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])  # grey -> 3 equal channels
    assert y.tolist() == labels[:8].tolist()


def test_native_size_pixels_are_normalised_file_bytes(tmp_path: Path) -> None:
    images, _ = write_idx(tmp_path / "FashionMNIST" / "raw", 8)
    cfg = DataConfig(dataset="fashion_mnist", root=str(tmp_path), image_size=28, batch_size=8)
    x, _ = next(iter(build_loaders(cfg, seed=0).val))
    expected = (images.float() / 255 - 0.2860) / 0.3530
    torch.testing.assert_close(x[:, 0], expected)


def test_class_subset_is_relabelled_in_the_given_order(tmp_path: Path) -> None:
    _, labels = write_idx(tmp_path / "FashionMNIST" / "raw", 50)
    cfg = DataConfig(dataset="fashion_mnist", root=str(tmp_path), classes=[7, 5], batch_size=100)
    loaders = build_loaders(cfg, seed=0)
    assert loaders.num_classes == 2 == num_classes_of(cfg)
    _, y = next(iter(loaders.val))
    expected = [{7: 0, 5: 1}[int(t)] for t in labels if int(t) in (7, 5)]
    assert y.tolist() == expected


def test_caps_pick_a_seeded_subset(tmp_path: Path) -> None:
    write_idx(tmp_path / "FashionMNIST" / "raw", 60)
    cfg = DataConfig(dataset="fashion_mnist", root=str(tmp_path), train_samples=10, val_samples=5)
    a, b = build_loaders(cfg, seed=3), build_loaders(cfg, seed=3)
    assert len(a.train.dataset) == 10 and len(a.val.dataset) == 5
    assert a.train.dataset.indices == b.train.dataset.indices
    assert a.train.dataset.indices != build_loaders(cfg, seed=4).train.dataset.indices


def test_training_order_is_reproducible_from_the_seed(tmp_path: Path) -> None:
    write_idx(tmp_path / "FashionMNIST" / "raw", 30)
    cfg = DataConfig(dataset="fashion_mnist", root=str(tmp_path), batch_size=30)
    first = lambda seed: next(iter(build_loaders(cfg, seed).train))[1].tolist()  # noqa: E731
    assert first(1) == first(1)
    assert first(1) != first(2)


def test_missing_fashion_mnist_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data.root"):
        build_loaders(DataConfig(dataset="fashion_mnist", root=str(tmp_path)), seed=0)


def test_ensure_copies_and_unzips_the_debian_files(tmp_path: Path) -> None:
    system = tmp_path / "system"
    write_idx(system, 12, gz=True)
    raw = ensure_fashion_mnist(tmp_path / "data", system_dir=system, download=False)
    assert sorted(p.name for p in raw.iterdir()) == sorted(FMNIST_FILES)
    assert (raw / "t10k-labels-idx1-ubyte").read_bytes()[:8] == struct.pack(">II", 2049, 12)
    # A second call finds the files and touches nothing.
    mtime = (raw / FMNIST_FILES[0]).stat().st_mtime_ns
    ensure_fashion_mnist(tmp_path / "data", system_dir=tmp_path / "nowhere", download=False)
    assert (raw / FMNIST_FILES[0]).stat().st_mtime_ns == mtime


def test_ensure_without_any_source_and_no_download_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        ensure_fashion_mnist(tmp_path, system_dir=tmp_path / "none", download=False)


def test_fake_data_is_deterministic_and_disjoint_from_val() -> None:
    cfg = DataConfig(dataset="fake", image_size=16, batch_size=4, train_samples=8, val_samples=4)
    a, b = build_loaders(cfg, seed=0, num_classes=3), build_loaders(cfg, seed=0, num_classes=3)
    xa, ya = a.train.dataset[0]
    xb, _ = b.train.dataset[0]
    assert xa.shape == (3, 16, 16) and torch.equal(xa, xb) and 0 <= ya < 3
    assert not torch.equal(a.val.dataset[0][0], xa)


def test_fake_data_class_subset() -> None:
    cfg = DataConfig(dataset="fake", image_size=8, train_samples=40, val_samples=40, classes=[1, 3])
    loaders = build_loaders(cfg, seed=0)
    labels = {int(loaders.train.dataset[i][1]) for i in range(len(loaders.train.dataset))}
    assert loaders.num_classes == 2 and labels <= {0, 1}


def test_fashion_mnist_as_a_png_folder_in_imagefolder_layout(tmp_path: Path) -> None:
    from PIL import Image

    from freezetune.data import export_png_folder, folder_classes

    images, labels = write_idx(tmp_path / "FashionMNIST" / "raw", 60)  # 6 of each class, train and test alike
    written = export_png_folder(tmp_path, tmp_path / "png", per_class=4)
    assert written == {"train": 40, "val": 10}
    assert folder_classes(tmp_path / "png" / "train")[:3] == ["ankle_boot", "bag", "coat"]
    first = sorted((tmp_path / "png" / "train" / "t-shirt_top").iterdir())[0]
    index = int(first.stem)  # the file name is the image's index in the split
    assert labels[index] == 0
    assert (Image.open(first).mode, Image.open(first).size) == ("L", (28, 28))
    assert Image.open(first).tobytes() == images[index].numpy().tobytes()
    with pytest.raises(ConfigError, match="already exists"):
        export_png_folder(tmp_path, tmp_path / "png", per_class=4)


def test_fake_images_are_torchvisions_fake_data_without_touching_the_global_generator() -> None:
    """FakeImages draws from a generator of each image's own: the same images and labels as
    torchvision's FakeData (so every fake run trains what it trained before), and torch's global
    generator is left where it was, as FakeData leaves it by restoring it."""
    from torchvision import datasets
    from torchvision.transforms import v2

    from freezetune.data.loaders import FakeImages

    tf = v2.Compose([v2.PILToTensor()])
    theirs = datasets.FakeData(12, (3, 10, 10), 5, transform=tf, random_offset=41)
    ours = FakeImages(12, (3, 10, 10), 5, transform=tf, random_offset=41)
    torch.manual_seed(3)
    before = torch.get_rng_state()
    for i in range(12):
        (a, y), (b, z) = theirs[i], ours[i]
        assert torch.equal(a, b) and y == z and isinstance(z, int)
    assert torch.equal(torch.get_rng_state(), before)
    assert ours.targets == [theirs[i][1] for i in range(12)] and len(set(ours.targets)) > 1
    with pytest.raises(IndexError):
        ours[12]
