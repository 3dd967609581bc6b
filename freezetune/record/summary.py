"""The rows of ``metrics.jsonl`` and the layout of ``summary.json``: the run record's
two formats, each written by exactly one function here.

freezetune.report and anyone else reading a run folder rely on these keys; a
change here is a change of the record's format."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torchvision

from freezetune.config.schema import Config
from freezetune.plan.rules import FreezePlan
from freezetune.record.integrity import FrozenCheck

__all__ = ["MEMORY_KINDS", "TIMING_KEYS", "EpochResult", "RunFacts", "Summary", "epoch_row"]

# (summary.json key, label): the memory a training step holds, by kind.
MEMORY_KINDS = (
    ("param_bytes_trainable", "trainable params"),
    ("param_bytes_frozen", "frozen params"),
    ("grad_bytes", "gradients"),
    ("optimizer_state_bytes", "optimizer state"),
    ("saved_activation_bytes", "saved activations"),
)


# The fields of an epoch row that are measured time: they differ between any two runs, even
# bitwise-identical ones (a resumed run against an uninterrupted one, cached against uncached).
TIMING_KEYS = ("epoch_time_s", "samples_per_s", "train_s")


@dataclass
class EpochResult:
    """One finished epoch, as the training loop reports it."""

    epoch: int
    train_loss: float
    val_loss: float
    val_acc: float
    epoch_time_s: float  # the training pass only: no evaluation, no measurement
    samples_per_s: float
    steps: int
    # Cumulative training seconds at the end of this epoch: every training pass so far plus
    # what got them ready (a feature cache build, a compile), without evaluation or
    # measurement. The x axis of a learning curve: what a run paid to reach this accuracy.
    train_s: float = 0.0


def epoch_row(result: EpochResult, plan: FreezePlan, groups: list[dict[str, Any]], seed: int) -> dict[str, Any]:
    """One line of ``metrics.jsonl``: the epoch's result, the run's seed, what was trainable,
    and each optimizer group's LR at the epoch's last step (``groups``: ``optimizer.param_groups``)."""
    return {
        **dataclasses.asdict(result),
        "seed": seed,
        "trainable_params": plan.numel_trainable,
        "trainable_tensors": len(plan.trainable),
        "optimizer_groups": len(groups),
        "lr": {g["name"]: g["lr"] for g in groups},
    }


@dataclass
class RunFacts:
    """What a finished run knows; :meth:`Summary.of` lays it out as ``summary.json``."""

    cfg: Config
    plan: FreezePlan  # the last phase's
    epochs: list[EpochResult]
    check: FrozenCheck
    wall_s: float
    train_samples: int
    weights: dict[str, Any]  # source, head, loaded and new tensors (freezetune.models.LoadReport)
    device: str
    speed: dict[str, Any]
    memory: dict[str, Any]
    cache: dict[str, Any]
    events: list[dict[str, Any]]  # the schedule's events, as events.jsonl has them
    optimizer_groups: list[dict[str, Any]]
    checkpoint: dict[str, Any]  # what train.save chose, and both sizes
    run_dir: str
    distributed: dict[str, Any] | None = None  # the launch and the replicas' digests, under torchrun
    skipped_images: list[dict[str, str]] = dataclasses.field(default_factory=list)  # data.on_bad_image: skip
    classes: list[str] = dataclasses.field(default_factory=list)  # the name of each output, in order
    preprocessing: dict[str, Any] = dataclasses.field(default_factory=dict)  # resolved, and where each value came from
    best: dict[str, Any] | None = None  # the epoch best.pt holds (train.monitor)
    early_stopping: dict[str, Any] | None = None  # null unless train.early_stopping is set
    compile: dict[str, Any] | None = None  # train.compile: what was compiled per phase (freezetune.train.nets)
    auto: dict[str, Any] | None = None  # freeze.preset auto: the stages, and what was decided after each epoch
    # Process start (or freezetune's import) to the training loop: interpreter, imports, model, data.
    startup: tuple[float, str] | None = None
    threads: dict[str, object] | None = None  # torch's threads, their source, the cores and load at the start
    # The last epoch's end to summary.json: the frozen check, train.measure's passes, model.pt.
    finish_s: float | None = None


@dataclass(frozen=True)
class Summary:
    """A finished run's ``summary.json``: one flat record a report can read without the config.
    :meth:`of` lays a run's :class:`RunFacts` out; :meth:`to_json` is the file's content."""

    name: str
    arch: str
    freeze_preset: str
    params_total: int
    params_trainable: int
    params_frozen: int
    trainable_pct: float
    tensors_trainable: int
    tensors_frozen: int
    pinned_bn: int
    final_val_acc: float
    final_val_loss: float
    best_val_acc: float
    best: dict[str, Any] | None  # the epoch best.pt holds, and why
    early_stopping: dict[str, Any] | None
    epochs: int
    classes: list[str]
    preprocessing: dict[str, Any]
    train_samples: int
    skipped_images: list[dict[str, str]]
    epoch_time_s: float
    samples_per_s: float
    wall_time_s: float
    # Before wall_time_s's clock starts: what a whole process pays beyond it (None when not measured).
    startup_s: float | None
    startup_from: str | None
    train_time_s: float  # training passes and their set-up, without evaluation (EpochResult.train_s)
    # After wall_time_s: the last epoch's end to summary.json (frozen check, train.measure, model.pt).
    finish_s: float | None
    seed: int
    # Every tensor in the ledger bitwise unchanged, frozen grads None, every tensor an event
    # released unchanged until then, and (torchrun) every rank with the same parameters.
    frozen_unchanged: bool
    frozen_check: dict[str, Any]
    weights_source: str | None
    head: str
    loaded_tensors: list[str]
    new_tensors: list[str]
    device: str
    threads: dict[str, object] | None  # torch's threads, their source, the cores and load at the start
    torch: str
    torchvision: str
    speed: dict[str, Any]
    memory: dict[str, Any]
    cache: dict[str, Any]
    compile: dict[str, Any] | None
    schedule: list[dict[str, Any]]  # the schedule's events, as events.jsonl has them
    frozen_until_event_unchanged: bool
    optimizer_groups: list[dict[str, Any]]
    checkpoint: dict[str, Any]
    run_dir: str
    distributed: dict[str, Any] | None = None  # only under torchrun: absent from the file otherwise
    auto: dict[str, Any] | None = None  # only with freeze.preset auto: absent from the file otherwise

    @classmethod
    def of(cls, f: RunFacts) -> Summary:
        """The summary of the finished run ``f`` describes."""
        plan, epochs, last = f.plan, f.epochs, f.epochs[-1]
        until_event = all(e.get("unchanged_until_event", True) for e in f.events)
        unchanged = f.check.unchanged and f.check.grads_none and until_event
        if f.distributed is not None:
            unchanged = unchanged and f.distributed["replicas_identical"]
        return cls(
            name=f.cfg.name,
            arch=f.cfg.model.arch,
            freeze_preset=f.cfg.freeze.preset,
            params_total=plan.numel_total,
            params_trainable=plan.numel_trainable,
            params_frozen=plan.numel_total - plan.numel_trainable,
            trainable_pct=100.0 * plan.numel_trainable / plan.numel_total,
            tensors_trainable=len(plan.trainable),
            tensors_frozen=len(plan.frozen),
            pinned_bn=len(plan.pinned_bn),
            final_val_acc=last.val_acc,
            final_val_loss=last.val_loss,
            best_val_acc=max(e.val_acc for e in epochs),
            best=f.best,
            early_stopping=f.early_stopping,
            epochs=len(epochs),
            classes=f.classes,
            preprocessing=f.preprocessing,
            train_samples=f.train_samples,
            skipped_images=f.skipped_images,
            epoch_time_s=sum(e.epoch_time_s for e in epochs) / len(epochs),
            samples_per_s=sum(e.samples_per_s for e in epochs) / len(epochs),
            wall_time_s=f.wall_s,
            startup_s=f.startup[0] if f.startup else None,
            startup_from=f.startup[1] if f.startup else None,
            train_time_s=last.train_s,
            finish_s=f.finish_s,
            seed=f.cfg.seed,
            frozen_unchanged=bool(unchanged),
            frozen_check=f.check.to_json(),
            weights_source=f.weights["source"],
            head=f.weights["head"],
            loaded_tensors=f.weights["loaded"],
            new_tensors=f.weights["new"],
            device=f.device,
            threads=f.threads,
            torch=torch.__version__,
            torchvision=torchvision.__version__,
            speed=f.speed,
            memory=f.memory,
            cache=f.cache,
            compile=f.compile,
            schedule=f.events,
            frozen_until_event_unchanged=until_event,
            optimizer_groups=f.optimizer_groups,
            checkpoint=f.checkpoint,
            run_dir=f.run_dir,
            distributed=f.distributed,
            auto=f.auto,
        )

    def to_json(self) -> dict[str, Any]:
        """``summary.json``'s content, in field order; ``distributed`` and ``auto`` only when set."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {k: v for k, v in data.items() if v is not None or k not in ("distributed", "auto")}
