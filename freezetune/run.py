"""One run, end to end: config -> model -> plan -> data -> train -> run record.

Everything that can be wrong with a config is found in :func:`prepare`, before
a single file is written."""

from __future__ import annotations

import itertools
import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torchvision
from torch.utils.data import DataLoader

from freezetune.apply import apply_plan, trainable_parameters
from freezetune.cache import CacheRefused, Split, build_cache, cached_loaders, check_split, prefix_problem, split_model
from freezetune.config import Config, ConfigError, to_dict
from freezetune.data import Loaders, build_loaders, num_classes_of
from freezetune.freezing import FreezePlan, describe, plan_from_config
from freezetune.integrity import fingerprint, verify_frozen
from freezetune.memory import SavedBytes, grad_bytes, optimizer_state_bytes, param_bytes, peak_memory, reset_peak_memory
from freezetune.models import LoadReport, build_model
from freezetune.record import RunDir
from freezetune.timing import eval_speed, medians
from freezetune.training import EpochResult, Progress, fit_epoch, make_optimizer, no_progress

__all__ = ["Prepared", "num_outputs", "prepare", "prepare_model", "resolve_device", "run", "seed_everything"]

log = logging.getLogger(__name__)

WARMUP_STEPS = 3  # first steps of a run: allocator growth, kernel selection, the saved-tensor count
EVAL_SPEED_BATCHES = 3


@dataclass
class Prepared:
    cfg: Config
    model: nn.Module
    plan: FreezePlan
    load: LoadReport
    device: torch.device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(["train.device: 'cuda' asked for, but torch.cuda.is_available() is False"])
    return torch.device(name)


def num_outputs(cfg: Config) -> int:
    """The head's size: ``model.num_classes``, else the data's class count."""
    return cfg.model.num_classes or num_classes_of(cfg.data)


def prepare_model(cfg: Config, num_classes: int | None = None) -> Prepared:
    """Build the model, load its weights and apply the freezing plan (no data, no files)."""
    device = resolve_device(cfg.train.device)
    seed_everything(cfg.seed)  # the fresh head's initialisation depends on it
    k = num_classes or num_outputs(cfg)
    model, load = build_model(cfg.model, k)
    plan = plan_from_config(describe(model), cfg.freeze.preset, cfg.freeze.rules, cfg.freeze.batchnorm)
    apply_plan(model, plan)
    return Prepared(cfg, model.to(device), plan, load, device)


def prepare(cfg: Config) -> tuple[Prepared, Loaders]:
    k = num_outputs(cfg)
    prepared = prepare_model(cfg, k)
    loaders = build_loaders(cfg.data, cfg.seed, k)
    return prepared, loaders


def run(
    cfg: Config,
    overwrite: bool = False,
    progress: Progress = no_progress,
    on_epoch: Callable[[EpochResult], None] | None = None,
) -> dict[str, Any]:
    """Train ``cfg`` and write its run record; returns the summary."""
    out = RunDir(cfg.output_dir)
    RunDir.check_free(out.path, overwrite)
    p, loaders = prepare(cfg)
    model, plan, device = p.model, p.plan, p.device

    split, cache_info = _plan_cache(cfg, p, loaders)  # may refuse the config: still nothing written

    optimizer = make_optimizer(model, cfg.train.optimizer)
    in_optimizer = {id(q) for g in optimizer.param_groups for q in g["params"]}
    # Identity, not value: two tensors can be equal and still be different parameters.
    if in_optimizer != {id(q) for q in trainable_parameters(model)}:
        raise RuntimeError("the optimizer does not hold exactly the trainable parameters")
    log.info(
        "%s: %d / %d parameters trainable (%d tensors in the optimizer), %d BatchNorm kept in eval, device %s",
        cfg.name, plan.numel_trainable, plan.numel_total, len(in_optimizer), len(plan.bn_eval), device,
    )

    out.create(overwrite)
    resolved = to_dict(cfg)
    out.write_yaml("config.yaml", resolved)
    out.write_json("freeze_plan.json", plan.to_json())
    before = fingerprint(model, plan)

    started = time.perf_counter()
    reset_peak_memory(device)
    net, train_loader, val_loader = model, loaders.train, loaders.val
    if split is not None:
        cache = build_cache(
            model, split, loaders.train.dataset, loaders.val.dataset, cfg.data.batch_size, device,
            cfg.train.cache_max_bytes, out.path,
        )
        cache_info.update(cache.to_json())
        log.info("%s: cached the frozen prefix's output (%s, %.1f MiB, %s) in %.1fs",
                 cfg.name, split.frontier, cache.bytes / 2**20, cache.storage, cache.build_s)
        # The suffix is made of the model's own modules: training it trains the model.
        net = split.suffix
        train_loader, val_loader = cached_loaders(cache, cfg.data.batch_size, cfg.seed)
    epochs: list[EpochResult] = []
    durations: list[tuple[float, ...]] = []
    saved = None
    for epoch in range(1, cfg.train.epochs + 1):
        result, stats = fit_epoch(
            epoch, net, optimizer, train_loader, val_loader, device, cfg.train.max_steps_per_epoch, progress,
            count_saved=epoch == 1,
        )
        epochs.append(result)
        durations.extend(stats.durations)
        saved = saved or stats.saved
        out.append_jsonl("metrics.jsonl", _epoch_row(result))
        if on_epoch:
            on_epoch(result)
    wall = time.perf_counter() - started

    check = verify_frozen(model, plan, before)
    if not check.unchanged or not check.grads_none:
        log.error("frozen tensors changed: %s", check.changed[:10])
    measured = _measurements(net, model, optimizer, val_loader, device, durations, saved, cfg.data.batch_size)
    out.save_checkpoint("model.pt", {"model": model.state_dict(), "config": resolved, "epoch": cfg.train.epochs})
    summary = _summary(cfg, p, epochs, check.to_json(), wall, len(loaders.train.dataset))
    summary.update(measured)
    summary["cache"] = cache_info
    summary["run_dir"] = str(out.path)
    out.write_json("summary.json", summary)
    return summary


def _plan_cache(cfg: Config, p: Prepared, loaders: Loaders) -> tuple[Split | None, dict[str, Any]]:
    """Decide whether to cache the frozen prefix's output, and why (not)."""
    info: dict[str, Any] = {"mode": cfg.train.cache_features, "used": False, "reason": None}
    if cfg.train.cache_features == "off":
        info["reason"] = "train.cache_features: off"
        return None, info
    try:
        split = split_model(p.model)
        problem = prefix_problem(p.model, split, cfg.data.augment)
        if problem:
            raise CacheRefused(problem)
        x, _ = next(iter(loaders.val))
        info["check_max_abs_diff"] = check_split(p.model, split, x.to(p.device))
    except CacheRefused as exc:
        if cfg.train.cache_features == "on":
            raise ConfigError([f"train.cache_features: 'on', but the frozen prefix cannot be cached: {exc}"]) from None
        log.info("%s: feature cache not used: %s", cfg.name, exc)
        info["reason"] = str(exc)
        return None, info
    info.update(used=True, frontier=split.frontier, first_trainable=split.first_trainable)
    return split, info


def _measurements(
    net: nn.Module,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    val_loader: DataLoader,
    device: torch.device,
    durations: list[tuple[float, ...]],
    saved: SavedBytes | None,
    batch_size: int,
) -> dict[str, Any]:
    """The `speed` and `memory` sections of summary.json (read after training).

    ``net`` is what trained (the model, or its suffix when the cache was used);
    parameter bytes are counted on the whole ``model``, whose prefix stays in memory."""
    phases = medians(durations, WARMUP_STEPS)
    speed: dict[str, Any] = {"warmup_steps": WARMUP_STEPS, "batch_size": batch_size}
    if phases is not None:
        speed.update(phases.to_json())
        speed["train_samples_per_s"] = batch_size / phases.step
    batches = [x.to(device) for x, _ in itertools.islice(val_loader, EVAL_SPEED_BATCHES)]
    speed.update(eval_speed(net, batches, device, rounds=2))
    trainable, frozen = param_bytes(model)
    peak, peak_kind = peak_memory(device)
    memory = {
        "param_bytes_trainable": trainable,
        "param_bytes_frozen": frozen,
        "grad_bytes": grad_bytes(model),  # the last step's gradients are still held
        "optimizer_state_bytes": optimizer_state_bytes(optimizer),
        **(saved or SavedBytes()).to_json(),
        "peak_bytes": peak,
        "peak_kind": peak_kind,
    }
    return {"speed": speed, "memory": memory}


def _epoch_row(r: EpochResult) -> dict[str, Any]:
    return {
        "epoch": r.epoch,
        "train_loss": r.train_loss,
        "val_loss": r.val_loss,
        "val_acc": r.val_acc,
        "epoch_time_s": r.epoch_time_s,
        "samples_per_s": r.samples_per_s,
        "steps": r.steps,
    }


def _summary(cfg: Config, p: Prepared, epochs: list[EpochResult], check: dict, wall: float, n_train: int) -> dict:
    plan = p.plan
    last = epochs[-1]
    return {
        "name": cfg.name,
        "arch": cfg.model.arch,
        "freeze_preset": cfg.freeze.preset,
        "params_total": plan.numel_total,
        "params_trainable": plan.numel_trainable,
        "params_frozen": plan.numel_total - plan.numel_trainable,
        "trainable_pct": 100.0 * plan.numel_trainable / plan.numel_total,
        "tensors_trainable": len(plan.trainable),
        "tensors_frozen": len(plan.frozen),
        "batchnorm_eval": len(plan.bn_eval),
        "final_val_acc": last.val_acc,
        "final_val_loss": last.val_loss,
        "best_val_acc": max(e.val_acc for e in epochs),
        "epochs": len(epochs),
        "train_samples": n_train,
        "epoch_time_s": sum(e.epoch_time_s for e in epochs) / len(epochs),
        "samples_per_s": sum(e.samples_per_s for e in epochs) / len(epochs),
        "wall_time_s": wall,
        "frozen_unchanged": bool(check["unchanged"] and check["grads_none"]),
        "frozen_check": check,
        "weights_source": p.load.source,
        "head": p.load.head,
        "loaded_tensors": p.load.loaded,
        "new_tensors": p.load.new,
        "device": str(p.device),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
    }
