"""Checks of a typed config that need more than types: names of models, weights,
presets, and the syntax of rules, schedule events and optimizer groups.

Anything that needs the built model (does a pattern match?) is checked when the
plan is built (freezetune.plan)."""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any

import torchvision.models as tvm

from freezetune.config.records import PRESETS, parse_events, parse_param_groups, parse_rules
from freezetune.config.schema import Config

__all__ = [
    "FASHION_MNIST_CLASSES",
    "classification_models",
    "event_problems",
    "fashion_mnist_index",
    "semantic_problems",
    "weights_kind",
]

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

_NAMED_PRESETS = [p for p in PRESETS if not p.endswith("<module>")]  # all but until:<module>


def classification_models() -> list[str]:
    """Names of the torchvision models that end in a class head."""
    # list_models(module=torchvision.models) excludes detection, segmentation,
    # video, optical-flow and quantized models: the ones a class head fits.
    return tvm.list_models(module=tvm)


def weights_kind(arch: str, weights: str | None) -> str:
    """``none``, ``torchvision`` (a weights enum name) or ``file`` (anything path-like)."""
    if weights is None:
        return "none"
    name = weights.split(".")[-1] if re.fullmatch(r"\w+_Weights\.\w+", weights) else weights
    if name == "DEFAULT" or name in _weight_names(arch):
        return "torchvision"
    return "file"


def _weight_names(arch: str) -> list[str]:
    try:
        return [w.name for w in tvm.get_model_weights(arch)]
    except (KeyError, ValueError):
        return []


def semantic_problems(cfg: Config) -> list[str]:
    """Every problem with ``cfg`` that its types do not show, one line each (empty: none)."""
    problems = []
    if cfg.name == "":
        problems.append("name: missing: every run needs a non-empty name (its folder is runs/<name>)")
    elif isinstance(cfg.name, str) and len(cfg.name) > 100:
        problems.append(f"name: {len(cfg.name)} characters; at most 100 (it names the run folder)")
    elif not isinstance(cfg.name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", cfg.name):
        # The run folder is runs/<name>: no path separators, no '.' or '..', no hidden folder.
        problems.append(
            f"name: {cfg.name!r} must be a non-empty run name of letters, digits, '_', '-' and '.', "
            "starting with a letter or digit"
        )
    models = classification_models()
    if not isinstance(cfg.model.arch, str):
        pass  # its type problem is already reported
    elif cfg.model.arch not in models:
        near = difflib.get_close_matches(cfg.model.arch, models, n=3)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        problems.append(f"model.arch: {cfg.model.arch!r} is not a torchvision classification model{hint}")
    elif isinstance(cfg.model.weights, str):
        w = cfg.model.weights
        if weights_kind(cfg.model.arch, w) == "file" and re.fullmatch(r"[A-Z][A-Z0-9_]*", w):
            # Looks like an enum name, not a path: say which names exist.
            names = ["DEFAULT", *_weight_names(cfg.model.arch)]
            problems.append(
                f"model.weights: {w!r} is not a weights name of {cfg.model.arch}; valid: {', '.join(names)}"
            )
    problems.extend(_data_problems(cfg))
    if cfg.data.dataset != "fake" and isinstance(cfg.data.root, str) and isinstance(cfg.train.output_dir, str):
        out, root = Path(cfg.train.output_dir).expanduser().resolve(), Path(cfg.data.root).expanduser().resolve()
        if out == root or root in out.parents:
            problems.append(
                f"train.output_dir: {cfg.train.output_dir} is inside data.root ({cfg.data.root}): the run's files "
                "would mix with the data (an imagefolder would read its folder as a class)"
            )
    problems.extend(_freeze_problems(cfg))
    problems.extend(_train_problems(cfg))
    return problems


def _data_problems(cfg: Config) -> list[str]:
    problems = []
    workers, cores = cfg.data.num_workers, os.cpu_count() or 1
    if isinstance(workers, int) and workers > 4 * cores:
        problems.append(
            f"data.num_workers: {workers} is more than 4 x the {cores} CPU cores here (each worker is a process "
            "with its own copy of the dataset code)"
        )
    problems.extend(_class_problems(cfg))
    for key in ("mean", "std"):
        values = getattr(cfg.data, key)
        if isinstance(values, list) and len(values) != 3:
            problems.append(f"data.{key}: {values} needs 3 values, one per channel (R, G, B)")
    std = cfg.data.std
    if isinstance(std, list) and any(isinstance(v, float) and v <= 0 for v in std):
        problems.append(f"data.std: {std} must be > 0 (images are divided by it)")
    size, resize = cfg.data.image_size, cfg.data.resize_size
    if isinstance(size, int) and isinstance(resize, int) and resize < size:
        problems.append(
            f"data.resize_size: {resize} is smaller than data.image_size {size}: the center crop must fit in the "
            "resized image"
        )
    return problems


def _class_problems(cfg: Config) -> list[str]:
    classes = cfg.data.classes
    if not isinstance(classes, list):
        return []
    ints = all(isinstance(c, int) and not isinstance(c, bool) for c in classes)
    names = not ints and all(isinstance(c, str) for c in classes)
    if not (ints or names):
        return [f"data.classes: {classes} must be all class indices (integers) or all class names (strings)"]
    problems = []
    if len(classes) < 2:
        n = f"{len(classes)} class{'es' if len(classes) != 1 else ''}"
        problems.append(f"data.classes: {classes} names {n}; a classifier needs two or more")
    if len(set(classes)) != len(classes):
        problems.append(f"data.classes: {classes} has duplicates")
    if ints and any(c < 0 for c in classes):
        problems.append(f"data.classes: {classes} has negative class indices")
    if ints and cfg.data.dataset == "fashion_mnist" and any(c > 9 for c in classes):
        problems.append(f"data.classes: {classes}: Fashion-MNIST has classes 0..9")
    if names and cfg.data.dataset == "fake":
        problems.append(f"data.classes: {classes}: fake data has no class names; give indices, e.g. [0, 1]")
    if names and cfg.data.dataset == "fashion_mnist":
        known = {_name_key(c): c for c in FASHION_MNIST_CLASSES}
        unknown = [c for c in classes if _name_key(c) not in known]
        if unknown:
            problems.append(
                f"data.classes: {unknown} not among Fashion-MNIST's classes ({', '.join(FASHION_MNIST_CLASSES)})"
            )
    if isinstance(cfg.model.num_classes, int) and cfg.model.num_classes < len(classes):
        problems.append(
            f"model.num_classes: {cfg.model.num_classes} is fewer than the {len(classes)} classes in data.classes"
        )
    return problems


def _name_key(name: str) -> str:
    """Fashion-MNIST names match ignoring case and punctuation: sneaker, Ankle boot, t_shirt_top."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def fashion_mnist_index(name: str) -> int:
    """The Fashion-MNIST class index of ``name`` (as :func:`_name_key` matches it); KeyError if none."""
    keys = [_name_key(c) for c in FASHION_MNIST_CLASSES]
    if _name_key(name) not in keys:
        raise KeyError(name)
    return keys.index(_name_key(name))


def _freeze_problems(cfg: Config) -> list[str]:
    rules = cfg.freeze.rules if isinstance(cfg.freeze.rules, list) else []
    _, problems = parse_rules(r for r in rules if r is not None)
    preset = cfg.freeze.preset
    problems.extend(event_problems(preset, cfg.freeze.schedule, cfg.freeze.gradual, cfg.train.epochs))
    if (
        isinstance(preset, str)
        and preset not in _NAMED_PRESETS
        and not (preset.startswith("until:") and len(preset) > len("until:"))
    ):
        near = difflib.get_close_matches(preset, _NAMED_PRESETS, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        problems.append(f"freeze.preset: {preset!r} is not one of {', '.join(PRESETS)}{hint}")
    return problems


def event_problems(preset: Any, raw_events: Any, gradual: Any, epochs: Any) -> list[str]:
    """What can be wrong with a schedule without looking at a model."""
    events, problems = parse_events(raw_events if isinstance(raw_events, list) else [])
    gradual = gradual if isinstance(gradual, list) else []
    if preset == "gradual" and not gradual:
        problems.append("freeze.gradual: preset 'gradual' needs the groups to unfreeze, e.g. [layer4, layer3, layer2]")
    if gradual and preset != "gradual":
        problems.append(f"freeze.gradual: only used with freeze.preset: gradual (the preset is {preset!r})")
    if isinstance(epochs, int):
        for ev in events:
            if ev.epoch > epochs:
                problems.append(
                    f"{ev.origin}: epoch {ev.epoch} is past the last epoch (train.epochs is {epochs}): "
                    "it would never happen"
                )
        if preset == "gradual" and gradual and len(gradual) + 1 > epochs:
            problems.append(
                f"freeze.gradual: {len(gradual)} groups need {len(gradual) + 1} epochs (the head alone, then one group "
                f"per epoch); train.epochs is {epochs}"
            )
    return problems


def _train_problems(cfg: Config) -> list[str]:
    groups = cfg.train.param_groups if isinstance(cfg.train.param_groups, list) else []
    _, problems = parse_param_groups(g for g in groups if g is not None)
    sched = cfg.train.scheduler
    if sched.name == "onecycle" and isinstance(sched.warmup_epochs, float) and sched.warmup_epochs > 0:
        problems.append("train.scheduler.warmup_epochs: onecycle warms up by itself (train.scheduler.pct_start)")
    if sched.name == "onecycle" and isinstance(sched.pct_start, float) and sched.pct_start >= 1:
        problems.append(f"train.scheduler.pct_start: {sched.pct_start} must be < 1 (the share of steps spent rising)")
    if (
        isinstance(cfg.train.epochs, int)
        and isinstance(sched.warmup_epochs, float)
        and cfg.train.epochs >= 1
        and sched.warmup_epochs > cfg.train.epochs
    ):
        problems.append(
            f"train.scheduler.warmup_epochs: {sched.warmup_epochs} is longer than the run ({cfg.train.epochs} epochs)"
        )
    if sched.name == "cosine" and isinstance(sched.min_lr_scale, float) and sched.min_lr_scale > 1:
        problems.append(
            f"train.scheduler.min_lr_scale: {sched.min_lr_scale} must be <= 1 (a fraction of each group's LR)"
        )
    return problems
