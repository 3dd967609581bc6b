"""Fashion-MNIST on local disk: Debian's ``dataset-fashion-mnist`` files when present,
else torchvision's download; and as a folder of PNG files in ImageFolder layout, for
trying the own-images path on real pictures."""

from __future__ import annotations

import gzip
import logging
import re
import shutil
from pathlib import Path

import torch
from torchvision import datasets

from freezetune.config import ConfigError

__all__ = [
    "DEBIAN_FMNIST_DIR",
    "FASHION_MNIST_CLASSES",
    "FMNIST_FILES",
    "ensure_fashion_mnist",
    "export_png_folder",
    "fashion_mnist_index",
    "folder_name",
]

log = logging.getLogger(__name__)

FMNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
DEBIAN_FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

# torchvision.datasets.FashionMNIST.classes, in label order (here so that a config naming them
# is checked without the dataset on disk).
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def name_key(name: str) -> str:
    """Fashion-MNIST names match ignoring case and punctuation: sneaker, Ankle boot, t_shirt_top."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def fashion_mnist_index(name: str) -> int:
    """The Fashion-MNIST class index of ``name`` (as :func:`name_key` matches it); KeyError if none."""
    keys = [name_key(c) for c in FASHION_MNIST_CLASSES]
    if name_key(name) not in keys:
        raise KeyError(name)
    return keys.index(name_key(name))


def ensure_fashion_mnist(root: str | Path, system_dir: Path = DEBIAN_FMNIST_DIR, download: bool = True) -> Path:
    """Make ``ROOT/FashionMNIST/raw/`` hold the four un-gzipped idx files.

    Copies them from Debian's ``dataset-fashion-mnist`` package when present,
    else falls back to torchvision's download. Returns the raw folder."""
    raw = Path(root) / "FashionMNIST" / "raw"
    if all((raw / f).is_file() for f in FMNIST_FILES):
        return raw
    raw.mkdir(parents=True, exist_ok=True)
    if all((system_dir / f"{f}.gz").is_file() or (system_dir / f).is_file() for f in FMNIST_FILES):
        for f in FMNIST_FILES:
            dst = raw / f
            tmp = dst.with_suffix(".part")
            if (system_dir / f).is_file():
                shutil.copyfile(system_dir / f, tmp)
            else:
                with gzip.open(system_dir / f"{f}.gz", "rb") as src, open(tmp, "wb") as out:
                    shutil.copyfileobj(src, out)
            tmp.replace(dst)
        log.info("Fashion-MNIST copied from %s to %s", system_dir, raw)
        return raw
    if not download:
        raise FileNotFoundError(f"Fashion-MNIST not found in {raw} or {system_dir}")
    log.info("Fashion-MNIST not on this machine; downloading with torchvision")
    datasets.FashionMNIST(str(root), train=True, download=True)
    datasets.FashionMNIST(str(root), train=False, download=True)
    return raw


def folder_name(label: str) -> str:
    """A class name as a folder name: ``T-shirt/top`` -> ``t-shirt_top``, ``Ankle boot`` -> ``ankle_boot``."""
    return re.sub(r"[^a-z0-9-]+", "_", label.lower()).strip("_")


def export_png_folder(root: str | Path, out: str | Path, per_class: int, seed: int = 0) -> dict[str, int]:
    """Write ``per_class`` training and ``per_class // 4`` validation images of each class as
    8-bit greyscale PNGs: ``out/train/<class>/<index>.png`` and ``out/val/...`` (from the test split).

    The images are a seeded random choice; the folder must not exist yet (nothing is
    overwritten). Returns the number of files written per split."""
    out = Path(out)
    if out.exists():
        raise ConfigError([f"--imagefolder: {out} already exists; choose a new folder (nothing was written)"])
    ensure_fashion_mnist(root)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    written = {}
    for split, train, n in (("train", True, per_class), ("val", False, max(1, per_class // 4))):
        ds = datasets.FashionMNIST(str(root), train=train)
        g = torch.Generator().manual_seed(seed + (0 if train else 1))
        order = torch.randperm(len(ds), generator=g).tolist()
        counts = dict.fromkeys(range(len(FASHION_MNIST_CLASSES)), 0)
        for i in order:
            label = int(ds.targets[i])
            if counts[label] >= n:
                continue
            folder = tmp / split / folder_name(FASHION_MNIST_CLASSES[label])
            folder.mkdir(parents=True, exist_ok=True)
            ds[i][0].save(folder / f"{i:05d}.png")  # the PIL image, 28x28 greyscale
            counts[label] += 1
            if all(c >= n for c in counts.values()):
                break
        written[split] = sum(counts.values())
    tmp.rename(out)  # whole or not at all
    return written
