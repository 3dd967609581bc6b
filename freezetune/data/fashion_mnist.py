"""Fashion-MNIST on local disk: Debian's ``dataset-fashion-mnist`` files when present,
else torchvision's download."""

from __future__ import annotations

import gzip
import logging
import shutil
from pathlib import Path

from torchvision import datasets

__all__ = ["DEBIAN_FMNIST_DIR", "FMNIST_FILES", "ensure_fashion_mnist"]

log = logging.getLogger(__name__)

FMNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
DEBIAN_FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


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
