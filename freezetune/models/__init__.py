"""Models: a classifier (torchvision, timm, or the user's own callable) with the requested
head size and its pretrained weights loaded (torchvision's weights API, timm's, a
state_dict file or a freezetune checkpoint); what ``model.arch`` and ``model.weights`` may
name, and the preprocessing the weights were trained with."""

from freezetune.models.adapters import has_adapters, inject_adapters, merged_copy, write_peft
from freezetune.models.arch import (
    TIMM_PREFIX,
    arch_kind,
    classification_models,
    load_callable,
    model_problems,
    timm_name,
    timm_pretrained_cfg,
    weight_names,
    weights_kind,
)
from freezetune.models.build import LoadReport, build_model, load_state_dict_file
from freezetune.models.preprocess import weights_preprocessing

__all__ = [
    "TIMM_PREFIX",
    "LoadReport",
    "arch_kind",
    "build_model",
    "has_adapters",
    "inject_adapters",
    "merged_copy",
    "classification_models",
    "load_callable",
    "load_state_dict_file",
    "model_problems",
    "timm_name",
    "timm_pretrained_cfg",
    "weight_names",
    "weights_kind",
    "weights_preprocessing",
    "write_peft",
]
