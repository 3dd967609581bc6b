"""Preprocessing that follows the weights: the image size, resize, interpolation,
normalisation and augmentation a run uses, resolved from the config, the weights and
the dataset, in that order.

Pretrained weights expect the input they were trained on. torchvision's weights carry
it (``weights.transforms()``: resize 256, center crop 224, ImageNet mean/std for most),
and a freezetune ``model.pt`` carries what its run used; a key the config leaves null
takes that value, else the dataset's default. :func:`resolve` returns the config with
every key filled in (what ``config.yaml`` records, so a rerun of it needs no weights to
know its preprocessing) and, per key, where the value came from. The transforms built
from it live in freezetune.data.transforms."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from freezetune.config.schema import Config, DataConfig, ModelConfig
from freezetune.config.validate import timm_name, timm_pretrained_cfg, weights_kind

__all__ = [
    "AUGMENTS",
    "KEYS",
    "Preprocessing",
    "dataset_defaults",
    "resolve",
    "resolve_data",
    "weights_preprocessing",
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
            raise ValueError(f"data.{', data.'.join(missing)} not resolved: call freezetune.config.resolve first")
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


def weights_preprocessing(model: ModelConfig) -> tuple[dict[str, Any] | None, str | None]:
    """The preprocessing ``model.weights`` were trained with, and a name for where it came
    from; (None, None) when the weights do not say (none, or a plain state_dict file).

    Reads no network: torchvision's come from the weights enum's ``transforms()``, timm's
    (``timm/<name>`` with DEFAULT) from its registry's pretrained config, a freezetune file's
    from its ``preprocessing`` entry (memory-mapped, tensors not read)."""
    if not isinstance(model.arch, str) or not isinstance(model.weights, str):
        return None, None
    kind = weights_kind(model.arch, model.weights)
    if kind == "torchvision":
        import torchvision.models as tvm  # here: importing torchvision takes a second (validate.py)

        name = model.weights.split(".")[-1]
        enum = tvm.get_model_weights(model.arch)
        weights = enum.DEFAULT if name == "DEFAULT" else enum[name]
        t = weights.transforms()  # torchvision's ImageClassification: sizes, interpolation, mean/std
        crop, resize = _first(t.crop_size), _first(t.resize_size)
        return {
            "image_size": crop,
            "resize_size": resize,
            "interpolation": t.interpolation.value,
            "mean": list(t.mean),
            "std": list(t.std),
            # torchvision's reference recipes train with RandomResizedCrop + flip.
            "augment": "flip_crop",
        }, f"torchvision:{weights}"
    if kind == "timm":
        return _timm_preprocessing(model.arch)
    if kind == "file":
        saved = _saved_preprocessing(Path(model.weights).expanduser())
        return (saved, str(model.weights)) if saved else (None, None)
    return None, None


def _timm_preprocessing(arch: str) -> tuple[dict[str, Any] | None, str | None]:
    """What timm's own ``resolve_data_config`` + ``create_transform`` would do at evaluation, from
    the pretrained config in timm's registry (no model built, nothing downloaded)."""
    pcfg = timm_pretrained_cfg(arch)
    if pcfg is None:
        return None, None
    size = int(pcfg.input_size[-1])
    crop_pct = pcfg.crop_pct or 0.875  # timm.data.DEFAULT_CROP_PCT
    # timm's crop_mode squash/border (about 1 in 14 pretrained configs) has no equivalent here:
    # the center crop of the resized shorter side is what the rest use.
    interpolation = pcfg.interpolation if pcfg.interpolation in ("bilinear", "bicubic", "nearest") else "bicubic"
    return {
        "image_size": size,
        "resize_size": math.floor(size / crop_pct),  # as timm.data.transforms_factory computes scale_size
        "interpolation": interpolation,
        "mean": list(pcfg.mean),
        "std": list(pcfg.std),
        "augment": "flip_crop",  # timm's train transform: RandomResizedCrop + flip (+ its own extras)
    }, f"timm:{pcfg.hf_hub_id or timm_name(arch)}"


def _first(size: Any) -> int:
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def _saved_preprocessing(path: Path) -> dict[str, Any] | None:
    """``preprocessing`` of a freezetune model.pt; None for anything else. A file that cannot
    be read is reported when the model loads it (freezetune.models), not here."""
    if not path.is_file():
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # unreadable, not a zip-format file, ...: the loader says why later
        return None
    saved = obj.get("preprocessing") if isinstance(obj, dict) else None
    if not isinstance(saved, dict) or any(k not in saved for k in KEYS):
        return None
    return {k: saved[k] for k in KEYS}


def resolve(cfg: Config) -> tuple[Config, dict[str, str]]:
    """``cfg`` with every preprocessing key set, and where each value came from
    (``config``, the weights' name, or ``<dataset> default``). A resolved config resolves
    to itself."""
    if all(getattr(cfg.data, k) is not None for k in KEYS):
        return cfg, {k: "config" for k in KEYS}
    base, source = weights_preprocessing(cfg.model)
    data, sources = resolve_data(cfg.data, base, source)
    return dataclasses.replace(cfg, data=data), sources


def resolve_data(
    data: DataConfig, base: dict[str, Any] | None = None, source: str | None = None
) -> tuple[DataConfig, dict[str, str]]:
    """``data`` with every preprocessing key set: from itself, else ``base`` (the weights'
    preprocessing, named ``source``), else the dataset's default."""
    default = dataset_defaults(data.dataset)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key in KEYS:
        if getattr(data, key) is not None:
            values[key], sources[key] = getattr(data, key), "config"
        elif key == "resize_size":
            continue  # follows the crop size, below
        elif base is not None:
            values[key], sources[key] = base[key], str(source)
        else:
            values[key], sources[key] = default[key], f"{data.dataset} default"
    if data.resize_size is None:
        # The resize keeps the source's margin around the crop (256/224 for ImageNet weights),
        # also when the config chose another image_size.
        ref = base if base is not None else default
        scaled = round(values["image_size"] * ref["resize_size"] / ref["image_size"])
        values["resize_size"] = max(values["image_size"], scaled)
        sources["resize_size"] = str(source) if base is not None else f"{data.dataset} default"
        if sources["image_size"] == "config" and values["image_size"] != ref["image_size"]:
            sources["resize_size"] += f" (scaled {ref['resize_size']}/{ref['image_size']})"
    values["mean"] = [float(v) for v in values["mean"]]
    values["std"] = [float(v) for v in values["std"]]
    return dataclasses.replace(data, **values), {k: sources[k] for k in KEYS}
