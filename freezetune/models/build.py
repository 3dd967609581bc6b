"""Build a torchvision classification model and load pretrained weights into it.

Weights come from torchvision's weights API (downloaded once into the torch hub
cache) or from a file holding a raw ``state_dict`` or a freezetune checkpoint.
Loading is strict except at the head: a head whose shape differs from the
checkpoint's (or that ``reset_head`` asks for) is freshly initialised, and the
report says so. Any other mismatch is an error, never a silent skip.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torchvision.models as tvm

from freezetune.config import ConfigError, ModelConfig, weights_kind
from freezetune.plan.rules import describe, find_head
from freezetune.record.checkpoint import is_delta, load_payload, read_checkpoint

__all__ = ["LoadReport", "build_model", "load_state_dict_file"]


@dataclass
class LoadReport:
    """Where the weights came from, which tensors were loaded, and which start fresh (the head)."""

    source: str | None  # "torchvision:ResNet18_Weights.IMAGENET1K_V1", a file path, or None
    loaded: list[str] = field(default_factory=list)  # state_dict keys copied from the source
    new: list[str] = field(default_factory=list)  # keys left at their fresh initialisation
    head: str = ""


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A raw state_dict, the ``model`` entry of a freezetune checkpoint, or a delta
    checkpoint applied to the base weights it names (their hash checked)."""
    # weights_only=True: a checkpoint is data, never code to run.
    obj = read_checkpoint(path, "model.weights")
    if is_delta(obj):
        return _materialize(obj, str(path))
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError([f"model.weights: {path} holds neither a state_dict nor a checkpoint with key 'model'"])
    return obj


def _materialize(obj: dict, where: str) -> dict[str, torch.Tensor]:
    base = obj["delta"]["base"]
    weights = base["model"].get("weights")
    if weights_kind(base["model"]["arch"], weights) == "file" and not Path(weights).expanduser().is_file():
        raise ConfigError(
            [
                f"model.weights: {where} is a delta against the base weights {weights}, which are not there. "
                "HINT: put that file back, or use a model.pt saved with train.save: full"
            ]
        )
    if base["model"].get("weights") is None:  # a random base: rebuilt from the seed it was made with
        if "seed" not in base:
            raise ConfigError(
                [f"model.weights: {where} is a delta against random weights whose seed it does not record"]
            )
        torch.manual_seed(base["seed"])
    model, _ = build_model(ModelConfig(**base["model"]), base["num_classes"])
    load_payload(model, obj, where)  # raises BaseMismatch when the base is not the one trained from
    return model.state_dict()


def _source_state_dict(cfg: ModelConfig) -> tuple[dict[str, torch.Tensor] | None, str | None]:
    kind = weights_kind(cfg.arch, cfg.weights)
    if kind == "none":
        return None, None
    if kind == "torchvision":
        name = cfg.weights.split(".")[-1]  # type: ignore[union-attr]
        enum = tvm.get_model_weights(cfg.arch)
        weights = enum.DEFAULT if name == "DEFAULT" else enum[name]
        # get_state_dict uses torch.hub's cache: a second run needs no network.
        try:
            return weights.get_state_dict(progress=False, check_hash=True), f"torchvision:{weights}"
        except (OSError, RuntimeError) as exc:  # URLError is an OSError; a bad download fails its hash
            cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
            raise ConfigError(
                [
                    f"model.weights: {weights} is not in the torch hub cache ({cached}) and could not be downloaded "
                    f"({type(exc).__name__}: {str(exc)[:120]}). HINT: download {weights.url} where there is internet "
                    f"and put it at {cached}"
                ]
            ) from None
    path = Path(cfg.weights).expanduser()  # type: ignore[arg-type]
    if not path.is_file():
        raise ConfigError([f"model.weights: file not found: {path} (nor a weights name of {cfg.arch})"])
    return load_state_dict_file(path), str(path)


def build_model(cfg: ModelConfig, num_classes: int) -> tuple[nn.Module, LoadReport]:
    """The architecture with ``num_classes`` outputs, pretrained weights loaded."""
    model = tvm.get_model(cfg.arch, weights=None, num_classes=num_classes)
    source, name = _source_state_dict(cfg)
    head = find_head(describe(model))
    report = LoadReport(source=name, head=head)
    target = model.state_dict()
    if source is None:
        report.new = list(target)
        return model, report

    def in_head(key: str) -> bool:
        return key.startswith(head + ".")

    problems = []
    merged = {}
    for key, tensor in target.items():
        if key not in source:
            if not in_head(key):
                problems.append(f"{key}: missing from the checkpoint")
            report.new.append(key)
        elif in_head(key) and (cfg.reset_head or source[key].shape != tensor.shape):
            report.new.append(key)
        elif source[key].shape != tensor.shape:
            problems.append(f"{key}: checkpoint shape {tuple(source[key].shape)} != model shape {tuple(tensor.shape)}")
        else:
            merged[key] = source[key]
            report.loaded.append(key)
    unexpected = [k for k in source if k not in target]
    problems.extend(f"{k}: in the checkpoint but not in {cfg.arch}" for k in unexpected[:10])
    if problems:
        raise ConfigError([f"model.weights: {name} does not fit {cfg.arch}: {p}" for p in problems[:10]])
    model.load_state_dict(merged, strict=False)
    return model, report
