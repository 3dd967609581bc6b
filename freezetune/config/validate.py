"""Checks of a typed config that need more than types and need nothing but the config:
run names, presets, bounds between keys, and how the schedule fits the run (the syntax of
rules, schedule events and optimizer groups is checked as the loader reads them,
freezetune.config.records).

What needs torchvision, timm or the user's module (does ``model.arch`` exist?) is checked by
freezetune.models, what needs the dataset (its class names, its folders) by freezetune.data,
both with these by freezetune.checks; what needs the built model (does a pattern match?)
when the plan is built (freezetune.plan)."""

from __future__ import annotations

import difflib
import os
import unicodedata
from pathlib import Path
from typing import Any

from freezetune.config.records import PRESETS, EventSpec
from freezetune.config.schema import AutoFreezeConfig, Config

__all__ = [
    "LOGGERS",
    "event_problems",
    "semantic_problems",
]

_NAMED_PRESETS = [p for p in PRESETS if not p.endswith("<module>")]  # all but until:<module>


def semantic_problems(cfg: Config) -> list[str]:
    """Every problem with ``cfg`` that its types do not show, one line each (empty: none)."""
    problems = _name_problems(cfg.name)
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


# The run folder is runs/<name>, and compare's seed runs are runs/<name>-seed<i>, an --overwrite
# stages in <name>.overwriting. Letters of any script are accepted (модель_测试 names a folder on
# every file system freezetune runs on: ext4, APFS, NTFS, exFAT store Unicode names), and so are
# digits and combining marks (Devanagari's vowel signs), '_', '-' and '.': never a path separator,
# '.', '..', a hidden folder, a space or a shell character. Two rules keep one name one folder
# everywhere: the name must be NFC (macOS keeps what it is given but compares names in a normalised
# form, Linux compares bytes: 'é' typed two ways would be one folder there and two here), and its
# UTF-8 bytes are capped (file systems limit a name to 255 bytes, not characters; 100 leaves room
# for the suffixes).
_NAME_BYTES = 100
_NAME_PUNCTUATION = "_-."


def _name_char(c: str, first: bool) -> bool:
    category = unicodedata.category(c)[0]  # L: letter, N: digit or number, M: combining mark
    return category in "LN" or (not first and (category == "M" or c in _NAME_PUNCTUATION))


def _name_problems(name: Any) -> list[str]:
    """What is wrong with ``name`` as a run name (see above), one line at most."""
    if name == "":
        return ["name: missing: every run needs a non-empty name (its folder is runs/<name>)"]
    if isinstance(name, str) and len(name.encode()) > _NAME_BYTES:
        size = f"{len(name)} characters" if name.isascii() else f"{len(name)} characters, {len(name.encode())} bytes"
        unit = "" if name.isascii() else " bytes in UTF-8"
        return [f"name: {size}; at most {_NAME_BYTES}{unit} (it names the run folder)"]
    if not isinstance(name, str) or not all(_name_char(c, i == 0) for i, c in enumerate(name)):
        return [
            f"name: {name!r} must be a non-empty run name of letters (of any script), digits, '_', '-' and '.', "
            "starting with a letter or digit"
        ]
    if not unicodedata.is_normalized("NFC", name):
        return [
            f"name: {name!r} is not in Unicode NFC form, so it could name two folders on one system and one on "
            f"another. HINT: name: {unicodedata.normalize('NFC', name)} (the same letters, composed)"
        ]
    return []


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
    """data.classes on its own and against model.num_classes; the dataset's names and count are
    freezetune.data's to check."""
    classes = cfg.data.classes
    if not isinstance(classes, list):
        return []
    ints = all(isinstance(c, int) and not isinstance(c, bool) for c in classes)
    if not (ints or all(isinstance(c, str) for c in classes)):
        return [f"data.classes: {classes} must be all class indices (integers) or all class names (strings)"]
    problems = []
    if len(classes) < 2:
        n = f"{len(classes)} class{'es' if len(classes) != 1 else ''}"
        problems.append(f"data.classes: {classes} names {n}; a classifier needs two or more")
    if len(set(classes)) != len(classes):
        problems.append(f"data.classes: {classes} has duplicates")
    if ints and any(c < 0 for c in classes):
        problems.append(f"data.classes: {classes} has negative class indices")
    if isinstance(cfg.model.num_classes, int) and cfg.model.num_classes < len(classes):
        problems.append(
            f"model.num_classes: {cfg.model.num_classes} is fewer than the {len(classes)} classes in data.classes"
        )
    return problems


def _freeze_problems(cfg: Config) -> list[str]:
    # The rules' and events' own syntax was checked as the loader read them (freezetune.config.records).
    preset = cfg.freeze.preset
    problems = event_problems(preset, cfg.freeze.schedule, cfg.freeze.gradual, cfg.train.epochs)
    if (
        isinstance(preset, str)
        and preset not in _NAMED_PRESETS
        and not (preset.startswith("until:") and len(preset) > len("until:"))
    ):
        near = difflib.get_close_matches(preset, _NAMED_PRESETS, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        problems.append(f"freeze.preset: {preset!r} is not one of {', '.join(PRESETS)}{hint}")
    problems.extend(_frozen_dtype_problems(cfg.freeze.frozen_dtype, cfg.train.precision))
    if preset != "auto" and cfg.freeze.auto != AutoFreezeConfig():
        problems.append(f"freeze.auto: only used with freeze.preset: auto (the preset is {preset!r})")
    if preset == "auto" and (cfg.freeze.schedule or cfg.freeze.gradual):
        problems.append("freeze.schedule: preset 'auto' decides the schedule itself; give no freeze.schedule events")
    if preset == "auto":
        problems.extend(_auto_timing_problems(cfg.freeze.auto.warmup_epochs, cfg.train.epochs))
    problems.extend(_adapter_problems(cfg.freeze.adapters))
    return problems


def _adapter_problems(adapters: Any) -> list[str]:
    """``freeze.adapters[i].modules``: a name, glob or class name, or a non-empty list of them
    (whether they match a layer is checked once the model exists, freezetune.plan.adapters)."""
    problems = []
    for i, entry in enumerate(adapters or []):
        modules = getattr(entry, "modules", None)
        items = [modules] if isinstance(modules, str) else modules
        if modules is None:
            problems.append(f"freeze.adapters[{i}].modules: missing: which modules get adapters (e.g. modules: layer4)")
        elif not isinstance(items, list) or not items or not all(isinstance(m, str) and m for m in items):
            problems.append(
                f"freeze.adapters[{i}].modules: expected a module name, glob or class name, or a list of them "
                f"(e.g. modules: layer4), got {modules!r}"
            )
    return problems


def _auto_timing_problems(warmup: Any, epochs: Any) -> list[str]:
    """``freeze.preset: auto`` refused when it could never act, as a schedule event past the last
    epoch is: its first decision comes after epoch max(warmup_epochs, 2) (a change rate needs two
    epochs' gradient norms, freezetune.plan.auto.decide) and acts from the next epoch, which must
    exist. ``warmup`` and ``epochs`` may be None or of a wrong type (reported before)."""
    if not isinstance(warmup, int) or not isinstance(epochs, int) or epochs < 1:
        return []
    first = max(warmup, 2)
    if first < epochs:
        return []
    if warmup > 2:
        fix = f"freeze.auto.warmup_epochs: {epochs - 1} or less, or " if epochs > 2 else ""
        return [
            f"freeze.auto.warmup_epochs: {warmup}: auto decides first after epoch {warmup} and a decision acts from "
            f"the next epoch, so with train.epochs {epochs} it could never freeze anything. HINT: {fix}train.epochs: "
            f"{warmup + 1} or more"
        ]
    return [
        f"train.epochs: {epochs} is too short for freeze.preset auto: it decides first after epoch 2 (a change rate "
        "needs two epochs) and a decision acts from the next epoch, so it could never freeze anything. HINT: "
        "train.epochs: 3 or more, or a fixed preset (e.g. freeze.preset: full)"
    ]


def _frozen_dtype_problems(frozen: Any, precision: Any) -> list[str]:
    """Frozen weights in bf16/fp16 are only fed inputs of their dtype under autocast to it."""
    if frozen not in ("bf16", "fp16") or precision not in ("fp32", "bf16", "fp16") or frozen == precision:
        return []  # a value outside the choices is reported as such
    why = (
        f"the frozen layers would get fp32 inputs and {frozen} weights"
        if precision == "fp32"
        else f"autocast would cast the {frozen} weights to {precision} at every step"
    )
    return [
        f"freeze.frozen_dtype: {frozen} needs train.precision: {frozen}, and train.precision is {precision}: {why}. "
        f"HINT: train.precision: {frozen}, or freeze.frozen_dtype: fp32"
    ]


def event_problems(preset: Any, events: list[EventSpec] | None, gradual: Any, epochs: Any) -> list[str]:
    """What can be wrong with a schedule, its events already read (freezetune.config.records), without
    looking at a model. ``events``, ``gradual`` and ``epochs`` may be None (a type problem reported before)."""
    problems: list[str] = []
    gradual = gradual if isinstance(gradual, list) else []
    if preset == "gradual" and not gradual:
        problems.append("freeze.gradual: preset 'gradual' needs the groups to unfreeze, e.g. [layer4, layer3, layer2]")
    if gradual and preset != "gradual":
        problems.append(f"freeze.gradual: only used with freeze.preset: gradual (the preset is {preset!r})")
    if isinstance(epochs, int):
        for ev in events or []:
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


LOGGERS = ("jsonl", "csv", "tensorboard")


def _train_problems(cfg: Config) -> list[str]:
    # train.param_groups' syntax was checked as the loader read them (freezetune.config.records).
    problems = []
    opt = cfg.train.optimizer
    if opt.nesterov is True and opt.name != "sgd":
        problems.append(f"train.optimizer.nesterov: only for sgd (the optimizer is {opt.name})")
    if opt.nesterov is True and opt.name == "sgd" and isinstance(opt.momentum, float) and opt.momentum == 0:
        problems.append("train.optimizer.nesterov: needs train.optimizer.momentum > 0")
    betas = opt.betas
    if isinstance(betas, list) and (len(betas) != 2 or any(isinstance(b, float) and not 0 <= b < 1 for b in betas)):
        problems.append(f"train.optimizer.betas: {betas} must be two numbers in [0, 1), e.g. [0.9, 0.999]")
    logs = cfg.train.log
    if isinstance(logs, list):
        unknown = [x for x in logs if x not in LOGGERS]
        if unknown:
            problems.append(f"train.log: {unknown} not among {', '.join(LOGGERS)}")
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
