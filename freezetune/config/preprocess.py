"""Preprocessing that follows the weights: the image size, resize, interpolation,
normalisation and augmentation a run uses, resolved from the config, the weights and
the dataset, in that order.

Pretrained weights expect the input they were trained on. torchvision's weights carry
it (``weights.transforms()``: resize 256, center crop 224, ImageNet mean/std for most),
and a freezetune ``model.pt`` carries what its run used; a key the config leaves null
takes that value, else the dataset's default. :func:`resolve_data` fills in every key
(what ``config.yaml`` records, so a rerun of it needs no weights to know its preprocessing)
and says, per key, where the value came from. Reading the weights is freezetune.models'
job (``weights_preprocessing``), resolving a whole config freezetune.checks' (``resolve``);
the transforms built from it live in freezetune.data.transforms."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, NamedTuple

from freezetune.config.schema import Config, DataConfig

__all__ = [
    "AUGMENTS",
    "KEYS",
    "Preprocessing",
    "CONFIG",
    "Resolved",
    "Source",
    "dataset_defaults",
    "resolve_data",
]

KEYS = ("image_size", "resize_size", "interpolation", "mean", "std", "augment")
AUGMENTS = ("none", "flip_crop", "trivialaugment", "randaugment", "autoaugment")

_IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
# Per dataset: the size, resize/crop ratio and normalisation used without weights that say otherwise.
# Fake images are already in 0..1 and unnormalised; Fashion-MNIST's own statistics; a folder of
# the user's own photos gets ImageNet's convention (resize 256, crop 224, ImageNet mean/std).
_DATASET = {
    "fake": {"image_size": 32, "ratio": 1.0, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)},
    "fashion_mnist": {"image_size": 32, "ratio": 1.0, "mean": (0.2860,) * 3, "std": (0.3530,) * 3},
    "imagefolder": {"image_size": 224, "ratio": 256 / 224, **_IMAGENET},
}


@dataclass(frozen=True)
class Preprocessing:
    """A resolved preprocessing: what evaluation and training do to an image."""

    image_size: int  # the square the network sees (center crop at evaluation)
    resize_size: int  # evaluation resizes the shorter side to this first
    interpolation: str  # bilinear | bicubic | nearest
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str  # one of AUGMENTS; training only

    @classmethod
    def of(cls, data: DataConfig) -> Preprocessing:
        """The preprocessing of a resolved ``data`` section (:func:`resolve`)."""
        missing = [k for k in KEYS if getattr(data, k) is None]
        if missing:
            raise ValueError(f"data.{', data.'.join(missing)} not resolved: call freezetune.checks.resolve first")
        return cls.from_json({k: getattr(data, k) for k in KEYS})

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Preprocessing:
        """From :meth:`to_json`'s mapping (as model.pt and summary.json hold it)."""
        return cls(
            int(raw["image_size"]),
            int(raw["resize_size"]),
            str(raw["interpolation"]),
            tuple(float(v) for v in raw["mean"]),
            tuple(float(v) for v in raw["std"]),
            str(raw["augment"]),
        )

    def to_json(self) -> dict[str, Any]:
        """Plain data for model.pt, summary.json and export sidecars."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def describe(self) -> str:
        """One line for logs and ``plan.py``."""
        mean = ", ".join(f"{v:.3f}" for v in self.mean)
        std = ", ".join(f"{v:.3f}" for v in self.std)
        return (
            f"resize {self.resize_size} ({self.interpolation}), center crop {self.image_size}, "
            f"mean [{mean}], std [{std}], train augment {self.augment}"
        )


def dataset_defaults(dataset: str) -> dict[str, Any]:
    """The preprocessing of ``dataset`` when neither config nor weights say."""
    d = _DATASET.get(dataset, _DATASET["fake"])
    size = d["image_size"]
    return {
        "image_size": size,
        "resize_size": round(size * d["ratio"]),
        "interpolation": "bilinear",
        "mean": list(d["mean"]),
        "std": list(d["std"]),
        "augment": "none",
    }


@dataclass(frozen=True)
class Source:
    """Where one resolved preprocessing value came from."""

    kind: str  # config | weights | dataset
    name: str = ""  # the weights (torchvision:<enum>, timm:<name>, a file) or the dataset
    # resize_size only: the source's resize/crop ratio, scaled to the image_size the config chose.
    scaled: tuple[int, int] | None = None

    @property
    def origin(self) -> str:
        """``config``, the weights' name or ``<dataset> default``: the source without its scaling."""
        if self.kind == "config":
            return "config"
        return self.name if self.kind == "weights" else f"{self.name} default"

    def __str__(self) -> str:
        return self.origin + (f" (scaled {self.scaled[0]}/{self.scaled[1]})" if self.scaled else "")


CONFIG = Source("config")


class Resolved(NamedTuple):
    """A config with every preprocessing key set, and where each value came from (made once per
    run by freezetune.checks, and passed down)."""

    cfg: Config
    sources: dict[str, Source]


def resolve_data(
    data: DataConfig, base: dict[str, Any] | None = None, source: str | None = None
) -> tuple[DataConfig, dict[str, Source]]:
    """``data`` with every preprocessing key set: from itself, else ``base`` (the weights'
    preprocessing, named ``source``), else the dataset's default."""
    default = dataset_defaults(data.dataset)
    fallback = Source("weights", str(source)) if base is not None else Source("dataset", data.dataset)
    values: dict[str, Any] = {}
    sources: dict[str, Source] = {}
    for key in KEYS:
        if getattr(data, key) is not None:
            values[key], sources[key] = getattr(data, key), CONFIG
        elif key == "resize_size":
            continue  # follows the crop size, below
        else:
            values[key], sources[key] = (base if base is not None else default)[key], fallback
    if data.resize_size is None:
        # The resize keeps the source's margin around the crop (256/224 for ImageNet weights),
        # also when the config chose another image_size.
        ref = base if base is not None else default
        scaled = round(values["image_size"] * ref["resize_size"] / ref["image_size"])
        values["resize_size"] = max(values["image_size"], scaled)
        sources["resize_size"] = fallback
        if sources["image_size"] == CONFIG and values["image_size"] != ref["image_size"]:
            sources["resize_size"] = dataclasses.replace(fallback, scaled=(ref["resize_size"], ref["image_size"]))
    values["mean"] = [float(v) for v in values["mean"]]
    values["std"] = [float(v) for v in values["std"]]
    return dataclasses.replace(data, **values), {k: sources[k] for k in KEYS}
