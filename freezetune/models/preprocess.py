"""The preprocessing pretrained weights were trained with, read from the weights themselves:
torchvision's weights enum (``weights.transforms()``), timm's pretrained config, or the
``preprocessing`` entry of a freezetune ``model.pt``. Nothing is downloaded.
freezetune.checks.resolve fills the keys a config leaves null from it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from freezetune.config import ModelConfig
from freezetune.config.preprocess import KEYS
from freezetune.models.arch import timm_name, timm_pretrained_cfg, weights_kind

__all__ = ["weights_preprocessing"]


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
        import torchvision.models as tvm  # here: importing torchvision takes a second (freezetune.models.arch)

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
