"""One run, end to end: config -> model -> plan -> data -> train -> run record.

Everything that can be wrong with a config is found in :func:`prepare`, before
a single file is written."""

from __future__ import annotations

import itertools
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torchvision
from torch.utils.data import DataLoader

from freezetune.apply import apply_plan
from freezetune.checkpoint import serialized_bytes
from freezetune.config import Config, ConfigError, to_dict
from freezetune.data import Loaders, build_loaders, num_classes_of
from freezetune.distributed import Dist, parameter_digest
from freezetune.freezing import FreezeError, FreezePlan, describe
from freezetune.groups import Setting, assign_settings
from freezetune.integrity import verify_frozen
from freezetune.interrupt import StopRequest
from freezetune.memory import SavedBytes, grad_bytes, optimizer_state_bytes, param_bytes, peak_memory, reset_peak_memory
from freezetune.models import LoadReport, build_model
from freezetune.record import RunDir
from freezetune.schedule import Schedule, build_schedule
from freezetune.timing import eval_speed, medians
from freezetune.trainer import STATE_FORMAT, Trainer
from freezetune.training import EpochResult, Progress, no_progress

__all__ = ["CHECKPOINT", "Prepared", "load_resume_state", "num_outputs", "prepare", "prepare_model", "resolve_device", "run", "seed_everything", "steps_per_epoch"]

log = logging.getLogger(__name__)

WARMUP_STEPS = 3  # first steps of a run: allocator growth, kernel selection, the saved-tensor count
EVAL_SPEED_BATCHES = 3
CHECKPOINT = "checkpoint.pt"  # an unfinished run's state after its last epoch (or the interrupt), for --resume


@dataclass
class Prepared:
    cfg: Config
    model: nn.Module
    plan: FreezePlan
    load: LoadReport
    device: torch.device
    schedule: Schedule
    settings: dict[str, Setting]
    num_classes: int


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


def prepare_model(cfg: Config, num_classes: int | None = None, device: torch.device | None = None) -> Prepared:
    """Build the model, load its weights and apply the freezing plan (no data, no files)."""
    device = device or resolve_device(cfg.train.device)
    seed_everything(cfg.seed)  # the fresh head's initialisation depends on it
    k = num_classes or num_outputs(cfg)
    model, load = build_model(cfg.model, k)
    tree = describe(model)
    settings, problems = assign_settings(tree, cfg.train.param_groups, cfg.train.layer_decay)
    try:
        schedule = build_schedule(tree, cfg.freeze.preset, cfg.freeze.rules, cfg.freeze.batchnorm,
                                  cfg.freeze.schedule, cfg.freeze.gradual)
    except FreezeError as exc:
        if problems:  # report the groups' problems with the plan's, in one error
            raise ConfigError(exc.problems + problems) from None
        raise
    if problems:
        raise ConfigError(problems)
    apply_plan(model, schedule.initial)
    return Prepared(cfg, model.to(device), schedule.initial, load, device, schedule, settings, k)


def steps_per_epoch(cfg: Config) -> int:
    """Optimizer steps per epoch (what the LR schedule is laid out over)."""
    if cfg.train.scheduler.name == "none" and cfg.train.scheduler.warmup_epochs == 0:
        return 1  # the multiplier is 1 at every step: no need to read the data
    n = len(build_loaders(cfg.data, cfg.seed, num_outputs(cfg)).train)
    cap = cfg.train.max_steps_per_epoch
    return n if cap is None else min(n, cap)


def prepare(cfg: Config, device: torch.device | None = None) -> tuple[Prepared, Loaders]:
    k = num_outputs(cfg)
    prepared = prepare_model(cfg, k, device)
    loaders = build_loaders(cfg.data, cfg.seed, k)
    return prepared, loaders


def run(
    cfg: Config,
    overwrite: bool = False,
    progress: Progress = no_progress,
    on_epoch: Callable[[EpochResult], None] | None = None,
    resume: str | Path | None = None,
    stop: StopRequest | None = None,
    dist: Dist | None = None,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Train ``cfg`` and write its run record; returns the summary.

    ``resume``: a run folder to continue from its last checkpoint. ``stop``: read
    between steps (Ctrl-C sets it); once set, a checkpoint is saved and the
    returned summary says ``interrupted``. ``dist``: this process's place in a
    torchrun launch (freezetune/distributed.py); only rank 0 writes."""
    out = RunDir(resume if resume is not None else cfg.output_dir, write=dist is None or dist.is_main)
    resolved = to_dict(cfg)
    state = load_resume_state(out.path, resolved) if resume is not None else None
    if state is None:
        RunDir.check_free(out.path, overwrite)
    if dist is not None:
        dist.barrier()  # every rank has checked the folder before rank 0 writes to it
    p, loaders = prepare(cfg, device)
    trainer = Trainer(cfg, p, loaders, out.path, dist)
    trainer.check_cache_plan()  # may refuse the config: still nothing written
    log.info(
        "%s: %d / %d parameters trainable (%d tensors in %d optimizer group(s)), %d BatchNorm kept in eval, device %s",
        cfg.name, p.plan.numel_trainable, p.plan.numel_total, len(p.plan.trainable),
        len(trainer.optimizer.param_groups), len(p.plan.bn_eval), p.device,
    )
    partial = None
    if state is None:
        out.create(overwrite)
        out.write_yaml("config.yaml", resolved)
        out.write_json("freeze_plan.json", p.plan.to_json() | {"schedule": p.schedule.to_json()})
        out.append_jsonl("events.jsonl", None)  # created empty: a run without events has none
        first = 1
    else:
        partial = trainer.load_state_dict(state, str(out.path / CHECKPOINT))
        first = state["epoch"] if partial else state["epoch"] + 1
        # Rows written after the checkpoint (a kill between the two writes) are redone.
        out.keep_jsonl_rows("metrics.jsonl", lambda row: row["epoch"] < first)
        out.keep_jsonl_rows("events.jsonl", lambda row: row["epoch"] <= state["epoch"])
        log.info("%s: resuming at epoch %d%s from %s", cfg.name, first,
                 f", step {partial.steps}" if partial else "", out.path / CHECKPOINT)

    started = time.perf_counter()
    reset_peak_memory(p.device)
    durations: list[tuple[float, ...]] = []
    saved = None
    stop = stop or StopRequest()
    # Under DDP all ranks must stop at the same step: a Ctrl-C seen by one is agreed by all.
    should_stop = stop if dist is None else (lambda: dist.any(stop(), p.device))
    with stop:
        for epoch in range(first, cfg.train.epochs + 1):
            events = trainer.enter_phase(epoch)
            for row in events:
                out.append_jsonl("events.jsonl", row)
            if events:
                # summary.json's speed and memory describe the last phase: the final trainable set.
                durations, saved = [], None
            result, stats, start_state = trainer.fit(epoch, progress, should_stop, count_saved=saved is None,
                                                     partial=partial)
            partial = None
            durations.extend(stats.durations)
            saved = saved or stats.saved
            if result is not None:
                out.append_jsonl("metrics.jsonl", _epoch_row(result, trainer))
                if on_epoch:
                    on_epoch(result)
            if epoch < cfg.train.epochs or result is None:  # after the last epoch, model.pt is the record
                out.save_checkpoint(CHECKPOINT, trainer.state_dict(epoch, stats, start_state, resolved))
            if result is None or (epoch < cfg.train.epochs and should_stop()):  # stopped mid-epoch, or between
                if out.write:
                    log.warning("%s: stopped in epoch %d after %d steps; continue with --resume %s",
                                cfg.name, epoch, stats.steps, out.path)
                return {"name": cfg.name, "interrupted": True, "epoch": epoch, "steps": stats.steps,
                        "run_dir": str(out.path)}
    wall = time.perf_counter() - started
    return _finish(cfg, p, trainer, out, resolved, durations, saved, wall, len(loaders.train.dataset), dist)


def load_resume_state(folder: Path, resolved: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint to resume from; refused unless this same config made it."""
    path = folder / CHECKPOINT
    if not path.is_file():
        if (folder / "summary.json").is_file():
            raise ConfigError([f"resume: {folder} is a finished run (summary.json, no {CHECKPOINT}): nothing to resume"])
        raise ConfigError([f"resume: no {CHECKPOINT} in {folder} (one is written after every epoch but the last)"])
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ConfigError([f"resume: {path} is not a freezetune training state ({STATE_FORMAT})"])
    diffs = _differences(state["config"], resolved)
    if diffs:
        raise ConfigError([f"resume: the config differs from the one {folder} was trained with: {d}" for d in diffs])
    return state


def _differences(saved: Any, now: Any, path: str = "") -> list[str]:
    if isinstance(saved, dict) and isinstance(now, dict):
        keys = dict.fromkeys([*saved, *now])
        return [d for k in keys for d in _differences(saved.get(k), now.get(k), f"{path}.{k}" if path else k)]
    return [] if saved == now else [f"{path} was {saved!r}, is now {now!r}"]


def _finish(
    cfg: Config, p: Prepared, trainer: Trainer, out: RunDir, resolved: dict[str, Any],
    durations: list[tuple[float, ...]], saved: SavedBytes | None, wall: float, n_train: int, dist: Dist | None,
) -> dict[str, Any]:
    """Verify, measure, save the model and write summary.json."""
    model, plan = p.model, trainer.plan
    check = verify_frozen(model, plan, trainer.protected)
    if not check.unchanged or not check.grads_none:
        log.error("frozen tensors changed: %s", check.changed[:10])
    measured = _measurements(trainer.eval_net, model, trainer.optimizer, trainer.val_loader, p.device, durations, saved,
                             cfg.data.batch_size)
    last = cfg.train.epochs
    sizes = {}
    for mode in ("full", "delta"):
        content = {**trainer.payload(mode, last), "config": resolved, "epoch": last}
        if mode == cfg.train.save:
            sizes[mode] = out.save_checkpoint("model.pt", content)
        else:
            sizes[mode] = serialized_bytes(content)  # what the other choice would have written
    summary = _summary(cfg, p, plan, trainer.epochs, check.to_json(), wall, n_train)
    summary.update(measured)
    summary["cache"] = trainer.cache_info
    events = [e for e in trainer.events if e["event"] != "optimizer"]
    summary["schedule"] = events
    summary["frozen_until_event_unchanged"] = all(e.get("unchanged_until_event", True) for e in events)
    summary["frozen_unchanged"] = summary["frozen_unchanged"] and summary["frozen_until_event_unchanged"]
    summary["optimizer_groups"] = trainer.groups()
    summary["checkpoint"] = {"save": cfg.train.save, "full_bytes": sizes["full"], "delta_bytes": sizes["delta"]}
    summary["run_dir"] = str(out.path)
    if dist is not None:
        summary["distributed"] = _replicas(dist, model, cfg)
        summary["frozen_unchanged"] = summary["frozen_unchanged"] and summary["distributed"]["replicas_identical"]
    out.write_json("summary.json", summary)
    if out.write:  # a finished run needs no resume state; its 2x-model-size file would only take disk
        (out.path / CHECKPOINT).unlink(missing_ok=True)
    return summary


def _replicas(dist: Dist, model: nn.Module, cfg: Config) -> dict[str, Any]:
    """The launch, and proof that every rank ends with the same parameters."""
    digests = dist.gather(parameter_digest(model))
    if len(set(digests)) != 1:
        log.error("replicas diverged: parameter digests per rank %s", digests)
    return {"world_size": dist.world, "backend": dist.backend, "batch_per_process": cfg.data.batch_size,
            "global_batch": cfg.data.batch_size * dist.world, "rank_parameter_sha256": digests,
            "replicas_identical": len(set(digests)) == 1}


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


def _epoch_row(r: EpochResult, trainer: Trainer) -> dict[str, Any]:
    return {
        "epoch": r.epoch,
        "train_loss": r.train_loss,
        "val_loss": r.val_loss,
        "val_acc": r.val_acc,
        "epoch_time_s": r.epoch_time_s,
        "samples_per_s": r.samples_per_s,
        "steps": r.steps,
        "trainable_params": trainer.plan.numel_trainable,
        "trainable_tensors": len(trainer.plan.trainable),
        "optimizer_groups": len(trainer.optimizer.param_groups),
        "lr": {g["name"]: g["lr"] for g in trainer.optimizer.param_groups},  # at the epoch's last step
    }


def _summary(cfg: Config, p: Prepared, plan: FreezePlan, epochs: list[EpochResult], check: dict, wall: float,
             n_train: int) -> dict:
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
