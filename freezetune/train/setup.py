"""From a config to a model ready to train: architecture, weights, the freezing
schedule applied, per-parameter LR settings, the device; no data and no files."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torchvision.models as tvm

from freezetune.checks import as_resolved
from freezetune.config import Config, ConfigError, EventSpec, Resolved
from freezetune.data import Loaders, build_loaders, num_classes_of
from freezetune.measure import resolve_device
from freezetune.models import LoadReport, arch_kind, build_model, inject_adapters
from freezetune.plan import (
    FreezeError,
    FreezePlan,
    ModelTree,
    Schedule,
    Setting,
    apply_plan,
    assign_settings,
    build_schedule,
    describe,
    find_head,
)
from freezetune.plan.auto import model_stages, stages_left
from freezetune.train.loop import steps_in
from freezetune.train.threads import Threads, set_threads
from freezetune.utils import eval_mode, precision_problem
from freezetune.utils.errors import first_line

__all__ = [
    "Prepared",
    "num_outputs",
    "prepare",
    "prepare_model",
    "resolve_device",
    "schedule_for",
    "seed_everything",
    "steps_per_epoch",
]


@dataclass
class Prepared:
    """A config's model with its plan applied, and everything decided alongside it."""

    cfg: Config
    model: nn.Module
    plan: FreezePlan
    load: LoadReport
    device: torch.device
    schedule: Schedule
    settings: dict[str, Setting]
    num_classes: int
    threads: Threads | None = None  # set before the model was built (train.threads)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def num_outputs(cfg: Config) -> int:
    """The head's size: ``model.num_classes``, else the data's class count."""
    return cfg.model.num_classes or num_classes_of(cfg.data)


def prepare_model(
    cfg: Config | Resolved, num_classes: int | None = None, device: torch.device | None = None
) -> Prepared:
    """Build the model, load its weights and apply the freezing plan (no data, no files).
    ``Prepared.cfg`` is ``cfg`` with its preprocessing resolved (freezetune.checks.resolve,
    unless ``cfg`` is resolved already)."""
    cfg = as_resolved(cfg).cfg
    device = device or resolve_device(cfg.train.device)
    problem = precision_problem(device, cfg.train.precision)
    if problem:
        raise ConfigError([problem])
    # Before the model is built: its initialisation and weight loading already compute.
    threads = set_threads(cfg.train.threads, cfg.data.num_workers)
    seed_everything(cfg.seed)  # the fresh head's initialisation depends on it
    k = num_classes or num_outputs(cfg)
    model, load = build_model(cfg.model, k)
    inject_adapters(model, cfg.freeze.adapters)  # before the plan, which decides their parameters too
    tree = describe(model)
    settings, problems = assign_settings(tree, cfg.train.param_groups, cfg.train.layer_decay)
    try:
        schedule = schedule_for(cfg, tree)
        if cfg.freeze.preset == "auto":  # a policy that can never act is refused before anything runs
            stages = model_stages(tree, find_head(tree), cfg.freeze.auto.ceiling)
            left = stages_left(stages, schedule.initial, cfg.freeze.auto.ceiling)
            if left:
                raise FreezeError(left)
    except FreezeError as exc:
        if problems:  # report the groups' problems with the plan's, in one error
            raise ConfigError(exc.problems + problems) from None
        raise
    if problems:
        raise ConfigError(problems)
    _check_input_size(model, cfg, k)
    apply_plan(model, schedule.initial, cfg.freeze.frozen_dtype)
    # channels_last changes strides, not values: convolutions pick faster kernels (NHWC), above all in bf16.
    memory = torch.channels_last if cfg.train.channels_last else torch.preserve_format
    model = model.to(device, memory_format=memory)
    return Prepared(cfg, model, schedule.initial, load, device, schedule, settings, k, threads)


def schedule_for(cfg: Config, tree: ModelTree, decided: list[EventSpec] | None = None) -> Schedule:
    """The run's schedule: the config's preset, rules and events, plus the freeze events
    ``freeze.preset: auto`` has ``decided`` so far (freezetune.train.auto)."""
    return build_schedule(tree, cfg.freeze, decided or ())


def steps_per_epoch(cfg: Config | Resolved) -> int:
    """Optimizer steps per epoch (what the LR schedule is laid out over)."""
    cfg = as_resolved(cfg).cfg
    if cfg.train.scheduler.name == "none" and cfg.train.scheduler.warmup_epochs == 0:
        return 1  # the multiplier is 1 at every step: no need to read the data
    n = len(build_loaders(cfg.data, cfg.seed, num_outputs(cfg), check_images=False).train)
    return steps_in(n, cfg.train.accumulate, cfg.train.max_steps_per_epoch)


@torch.no_grad()
def _check_input_size(model: nn.Module, cfg: Config, num_classes: int) -> None:
    """One image of ``data.image_size`` through the model (eval mode, no state changes), so an
    architecture that cannot take that size says so now, not in the middle of the first step;
    and its output must be one score per class (a function of the user's that ignores
    ``num_classes`` would otherwise fail in the loss, or train a head of the wrong size)."""
    size = cfg.data.image_size
    try:
        with eval_mode(model):
            out = model(torch.zeros(1, 3, size, size))
    except Exception as exc:  # each architecture fails its own way (assert, shape or size errors)
        reason = first_line(exc) or type(exc).__name__
        raise ConfigError(
            [
                f"data.image_size: {size} px does not fit {cfg.model.arch} ({reason[:160]}). "
                f"HINT: {_size_hint(model, cfg)}"
            ]
        ) from None
    if not (isinstance(out, torch.Tensor) and tuple(out.shape) == (1, num_classes)):
        got = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
        made = cfg.model.arch
        if arch_kind(made) == "import":
            made += f"(num_classes={num_classes}{''.join(f', {k}={v!r}' for k, v in cfg.model.kwargs.items())})"
        raise ConfigError(
            [
                f"model.arch: {made} built a model whose output for one {size} px image is {got}, not a tensor of "
                f"shape (1, {num_classes}): one score per class. HINT: give the model's last layer num_classes "
                "outputs (the argument it is called with) and return the logits alone"
            ]
        )


def _size_hint(model: nn.Module, cfg: Config) -> str:
    """The size the architecture takes, from its torchvision weights' metadata (or timm's pretrained
    config) where there are any."""
    fixed = getattr(model, "image_size", None)  # torchvision's ViT lays out its position embeddings for one size
    if isinstance(fixed, int):
        return f"{cfg.model.arch} takes exactly {fixed} px (data.image_size: {fixed}, or null to follow the weights)"
    if arch_kind(cfg.model.arch) == "timm":
        made_for = ((getattr(model, "pretrained_cfg", None) or {}).get("input_size") or (3, 224, 224))[-1]
        return (
            f"{cfg.model.arch} is made for {made_for} px (data.image_size: {made_for}); many timm models, ViTs "
            f"among them, also take model.kwargs: {{img_size: {cfg.data.image_size}}}"
        )
    try:
        weights = tvm.get_model_weights(cfg.model.arch).DEFAULT
    except (KeyError, ValueError):  # not a torchvision model, or one without weights
        return "the size its weights were trained at (224 for most models)"
    crop = weights.transforms().crop_size[0]
    low = weights.meta.get("min_size", (1, 1))[0]
    return (
        f"{cfg.model.arch} takes {low} px or more; its weights were trained at {crop} "
        f"(data.image_size: {crop}, or null to follow the weights)"
    )


def prepare(cfg: Config | Resolved, device: torch.device | None = None) -> tuple[Prepared, Loaders]:
    """:func:`prepare_model` and the data loaders."""
    resolved = as_resolved(cfg)
    cfg = resolved.cfg
    k = num_outputs(cfg)
    data_k = num_classes_of(cfg.data) if cfg.data.dataset != "fake" else k
    if data_k > k:
        raise ConfigError(
            [
                f"model.num_classes: {k} outputs, but the data has {data_k} classes. HINT: model.num_classes: null "
                "takes the data's count"
            ]
        )
    prepared = prepare_model(resolved, k, device)
    loaders = build_loaders(cfg.data, cfg.seed, k)
    return prepared, loaders
