"""Datasets and loaders: Fashion-MNIST, FakeData and ImageFolder from torchvision.

Every dataset yields 3-channel float images of ``data.image_size``, preprocessed as
the resolved config says (freezetune.data.transforms), so that any torchvision
classifier takes them unchanged. A class subset, by index or by name, is relabelled
to 0..k-1 in the order given; sample caps pick a seeded random subset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets
from torchvision.transforms.functional import to_pil_image

from freezetune.config import ConfigError, DataConfig, Preprocessing
from freezetune.data.fashion_mnist import FASHION_MNIST_CLASSES, fashion_mnist_index
from freezetune.data.imagefolder import checked_image_folder, folder_classes
from freezetune.data.transforms import eval_transform, train_transform

__all__ = ["Loaders", "build_loaders", "class_indices", "class_names", "num_classes_of"]

_FAKE_CLASSES = 10


@dataclass
class Loaders:
    """The training and validation loaders of a run, and the class count they carry."""

    train: DataLoader
    val: DataLoader
    num_classes: int
    skipped_images: list[dict[str, str]] = field(default_factory=list)  # data.on_bad_image: skip
    # The name of each model output (as many as num_classes; an output beyond the data's classes
    # is named by its index).
    classes: list[str] = field(default_factory=list)


def num_classes_of(cfg: DataConfig) -> int:
    """How many outputs the model needs for this data."""
    if cfg.classes is not None:
        return len(cfg.classes)
    if cfg.dataset == "fashion_mnist":
        return 10
    if cfg.dataset == "imagefolder":
        return len(folder_classes(Path(cfg.root).expanduser() / "train"))
    return _FAKE_CLASSES


def _all_names(cfg: DataConfig) -> list[str]:
    """Every class of the dataset, by label index."""
    if cfg.dataset == "fashion_mnist":
        return list(FASHION_MNIST_CLASSES)
    if cfg.dataset == "imagefolder":
        return folder_classes(Path(cfg.root).expanduser() / "train")
    return [str(i) for i in range(_FAKE_CLASSES)]


def class_indices(cfg: DataConfig, names: list[str] | None = None) -> list[int] | None:
    """``data.classes`` as dataset label indices (None: all classes). Names are looked up
    among the dataset's classes (``names``, else read from the dataset); ConfigError lists
    them when one is not there."""
    if cfg.classes is None or all(isinstance(c, int) for c in cfg.classes):
        return cfg.classes
    if cfg.dataset == "fashion_mnist":
        return [fashion_mnist_index(c) for c in cfg.classes]  # checked by freezetune.checks already
    names = names if names is not None else _all_names(cfg)
    unknown = [c for c in cfg.classes if c not in names]
    if unknown:
        near = {c: n for c in unknown for n in names if n.lower() == str(c).lower()}
        hint = f" (case matters: {', '.join(f'{c!r} is {n!r}' for c, n in near.items())})" if near else ""
        raise ConfigError(
            [
                f"data.classes: {unknown} not among the class folders of {cfg.root}/train{hint}; "
                f"it has {len(names)}: {', '.join(names)}"
            ]
        )
    return [names.index(c) for c in cfg.classes]


def class_names(cfg: DataConfig) -> list[str]:
    """The name of each model output of this data, in output order (saved with the model)."""
    everything = _all_names(cfg)
    return _output_names(everything, class_indices(cfg, everything))


def _output_names(everything: list[str], indices: list[int] | None, outputs: int = 0) -> list[str]:
    """The names of the selected labels in output order, then an index for each output beyond them."""
    names = everything if indices is None else [everything[i] if i < len(everything) else str(i) for i in indices]
    return names + [str(i) for i in range(len(names), outputs)]


class _Relabel(Dataset):
    """A subset of a dataset whose labels are mapped to 0..k-1."""

    def __init__(self, base: Dataset, indices: list[int], mapping: dict[int, int] | None) -> None:
        self.base, self.indices, self.mapping = base, indices, mapping

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        x, y = self.base[self.indices[i]]
        return x, (self.mapping[int(y)] if self.mapping else int(y))


class FakeImages(datasets.FakeData):
    """torchvision's FakeData, image for image and label for label, without its cost: FakeData
    seeds torch's global generator for each image, and ``torch.manual_seed`` also queues a
    seeding of every accelerator backend with a formatted stack trace of the caller (torch's
    lazy CUDA/XPU/MTIA calls): 1.5 ms an image here, most of a tiny run's data time. A
    generator of the image's own, seeded as FakeData seeds the global one, draws the same
    numbers (the same CPU algorithm) and leaves the global generator alone, as FakeData does
    by restoring it."""

    def _draw(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if index >= len(self):
            raise IndexError(f"{self.__class__.__name__} index out of range")
        g = torch.Generator().manual_seed(index + self.random_offset)
        img = torch.randn(*self.image_size, generator=g)
        return img, torch.randint(0, self.num_classes, size=(1,), dtype=torch.long, generator=g)[0]

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        img, target = self._draw(index)
        image = to_pil_image(img)
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target.item()

    @property
    def targets(self) -> list[int]:
        """Every image's label, drawn without making the images."""
        return [int(self._draw(i)[1]) for i in range(len(self))]


def _targets(ds: Dataset) -> list[int]:
    if hasattr(ds, "targets"):
        return [int(t) for t in ds.targets]
    return [int(ds[i][1]) for i in range(len(ds))]  # type: ignore[arg-type]


def _select(ds: Dataset, classes: list[int] | None, cap: int | None, seed: int) -> Dataset:
    targets = _targets(ds) if classes is not None else None
    indices = list(range(len(ds)))  # type: ignore[arg-type]
    mapping = None
    if classes is not None:
        wanted = set(classes)
        indices = [i for i in indices if targets[i] in wanted]  # type: ignore[index]
        mapping = {c: k for k, c in enumerate(classes)}
    if cap is not None and cap < len(indices):
        # A seeded random subset keeps class balance on average and is reproducible.
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(indices), generator=g)[:cap].sort().values.tolist()
        indices = [indices[i] for i in order]
    return _Relabel(ds, indices, mapping) if (mapping or len(indices) != len(ds)) else ds  # type: ignore[arg-type]


def _raw_datasets(
    cfg: DataConfig, seed: int, num_classes: int, check_images: bool = True
) -> tuple[Dataset, Dataset, list[dict[str, str]]]:
    p = Preprocessing.of(cfg)
    tf, train_tf = eval_transform(p), train_transform(p)
    if cfg.dataset == "fashion_mnist":
        try:
            train = datasets.FashionMNIST(cfg.root, train=True, transform=train_tf)
            val = datasets.FashionMNIST(cfg.root, train=False, transform=tf)
        except RuntimeError as exc:  # torchvision: "Dataset not found. You can use download=True"
            hint = f"run `freezetune fetch-data --root {cfg.root}` (`make data` in the repository)"
            raise ConfigError(
                [f"data.root: no Fashion-MNIST under {cfg.root}/FashionMNIST/raw ({exc}); {hint}"]
            ) from None
        return train, val, []
    if cfg.dataset == "imagefolder":
        root = Path(cfg.root).expanduser()
        missing = [str(root / s) for s in ("train", "val") if not (root / s).is_dir()]
        if missing:
            raise ConfigError([f"data.root: imagefolder needs the folders {', '.join(missing)}"])
        # Only the classes data.classes selects are read: a bad file elsewhere in the folder is not this run's.
        names = folder_classes(root / "train")
        indices = class_indices(cfg, names)
        only = None if indices is None else {names[i] for i in indices if i < len(names)}  # beyond: refused below
        train, bad_train = checked_image_folder(root / "train", train_tf, cfg.on_bad_image, check_images, only)
        val, bad_val = checked_image_folder(root / "val", tf, cfg.on_bad_image, check_images, only)
        if train.classes != val.classes:
            only = sorted(set(train.classes) ^ set(val.classes))
            raise ConfigError(
                [
                    f"data.root: {root}/train and {root}/val must hold the same class folders; only in one: "
                    f"{', '.join(only) or '(the same names in another order)'}"
                ]
            )
        return train, val, bad_train + bad_val
    shape = (3, cfg.image_size, cfg.image_size)
    n_train, n_val = cfg.train_samples or 256, cfg.val_samples or 64
    # random_offset keeps the fake validation images distinct from the training ones.
    train = FakeImages(n_train, shape, num_classes, transform=train_tf, random_offset=seed)
    val = FakeImages(n_val, shape, num_classes, transform=tf, random_offset=seed + 1_000_003)
    return train, val, []


def build_loaders(cfg: DataConfig, seed: int, num_classes: int | None = None, check_images: bool = True) -> Loaders:
    """Train and validation loaders; training order is shuffled from ``seed``.

    ``check_images=False`` skips decoding every image of an imagefolder up front: for
    counting samples (plan.py), never for training."""
    k = num_classes or num_classes_of(cfg)
    # Fake labels are drawn from 0..n-1: enough of them for the highest index asked for.
    fake_k = k if cfg.classes is None or cfg.dataset != "fake" else max(cfg.classes) + 1
    train, val, skipped = _raw_datasets(cfg, seed, fake_k, check_images)
    if cfg.dataset == "fake":
        everything = [str(i) for i in range(fake_k)]
    else:
        everything = train.classes if cfg.dataset == "imagefolder" else _all_names(cfg)
    indices = class_indices(cfg, everything)
    if cfg.dataset == "imagefolder":
        _check_folder_classes(cfg, train, indices)
    names = _output_names(everything, indices, k)
    train = _select(train, indices, cfg.train_samples, seed)
    val = _select(val, indices, cfg.val_samples, seed + 1)
    if len(train) == 0 or len(val) == 0:  # type: ignore[arg-type]
        raise ConfigError([f"data.classes: {cfg.classes} leaves no training or validation samples"])
    g = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(train, batch_size=cfg.batch_size, shuffle=True, generator=g, num_workers=cfg.num_workers)
    val_loader = DataLoader(val, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.num_workers)
    return Loaders(train_loader, val_loader, k, skipped, names)


def _check_folder_classes(cfg: DataConfig, train: datasets.ImageFolder, indices: list[int] | None) -> None:
    """data.classes must name classes the folder has (each class has images in train and val:
    freezetune.data.imagefolder checked that)."""
    names = train.classes
    listing = ", ".join(f"{i}: {c}" for i, c in enumerate(names))
    if indices is not None:
        outside = [c for c in indices if c >= len(names)]
        if outside:
            raise ConfigError(
                [f"data.classes: {outside} not in {cfg.root}/train, which has {len(names)} classes ({listing})"]
            )
