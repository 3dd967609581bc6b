"""One run, end to end: config -> model -> plan -> data -> train -> run record.

Everything that can be wrong with a config is found before a single file is
written: the folder is checked, the model and plan are built and the cache plan
is checked first. :func:`run` reads top to bottom; each step below it is one
function."""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from freezetune.checks import check
from freezetune.config import Config, ConfigError, Preprocessing, Resolved, Source, to_dict
from freezetune.data import Loaders
from freezetune.measure import (
    SavedBytes,
    batch_speed,
    eval_speed,
    grad_bytes,
    medians,
    optimizer_state_bytes,
    param_bytes,
    param_bytes_by_dtype,
    peak_memory,
    process_age_s,
    reset_peak_memory,
)
from freezetune.models import write_peft
from freezetune.record import (
    ADAPTER_FILES,
    FAILED,
    FROZEN_FILE,
    EpochResult,
    FrozenCheck,
    RunDir,
    RunFacts,
    RunLogs,
    Summary,
    check_logs,
    epoch_row,
    read_checkpoint,
    serialized_bytes,
)
from freezetune.train.distributed import Dist, parameter_digest
from freezetune.train.interrupt import FINISHING, STOPPING, StopRequest
from freezetune.train.loop import EpochStats, Progress, no_progress, to_device
from freezetune.train.monitor import Monitor
from freezetune.train.outcome import Finished, Interrupted, Outcome
from freezetune.train.setup import Prepared, prepare
from freezetune.train.trainer import STATE_FORMAT, EpochHooks, Trainer
from freezetune.utils.errors import UserError, os_error

__all__ = ["BEST", "CHECKPOINT", "Finished", "Interrupted", "Outcome", "load_resume_state", "run"]

log = logging.getLogger(__name__)

WARMUP_STEPS = 3  # first steps of a run: allocator growth, kernel selection, the saved-tensor count
EVAL_SPEED_BATCHES = 3  # train.measure full: validation batches of the extra passes
# train.measure quick: the autograd comparison's one sub-batch. The epochs' evaluation already
# measured the throughput without autograd; this only asks what autograd would cost, at 8
# forward samples against full's 288 (3 batches of 16, warm-up and 2 rounds, both modes). No
# warm-up: training and the last evaluation have just run both paths' kernels.
QUICK_SAMPLES = 4
CHECKPOINT = "checkpoint.pt"  # an unfinished run's state after its last epoch (or the interrupt), for --resume
MERGED, ADAPTERS, PEFT_FOLDER = ADAPTER_FILES  # runs with freeze.adapters
BEST = "best.pt"  # the model after the best epoch by train.monitor, as model.pt is after the last


def run(
    cfg: Config | Resolved,
    overwrite: bool = False,
    progress: Progress = no_progress,
    on_epoch: Callable[[EpochResult], None] | None = None,
    resume: str | Path | None = None,
    stop: StopRequest | None = None,
    dist: Dist | None = None,
) -> Outcome:
    """Train ``cfg`` and write its run record; returns :class:`Finished` with the summary, or
    :class:`Interrupted` with where to resume.

    Args:
        cfg: the config checked and resolved once by the caller (freezetune.checks.load, as the
            commands do), or a plain config, checked and resolved here (freezetune.checks.check).
        overwrite: replace a run record already in the output folder.
        progress: wraps each epoch's batches (the CLI passes tqdm bars).
        on_epoch: called with each finished epoch's result.
        resume: a run folder to continue from its last checkpoint.
        stop: read between steps (Ctrl-C sets it); once set, a checkpoint is saved and
            the run returns :class:`Interrupted`.
        dist: this process's place in a torchrun launch (freezetune.train.distributed);
            only rank 0 writes, and its ``device`` overrides ``train.device``.
    """
    write = dist is None or dist.is_main
    # Preprocessing keys left null follow the weights (freezetune.checks.resolve); from here
    # on the config is the resolved one, and config.yaml records it.
    checked = cfg if isinstance(cfg, Resolved) else check(cfg)
    cfg, sources = checked
    resolved = to_dict(cfg)
    check_logs(cfg.train.log)  # a missing tensorboard package: refused before any file is written
    out, state = _open_folder(cfg, resolved, resume, overwrite, write)
    if dist is not None:
        dist.barrier()  # every rank has checked the folder before rank 0 writes to it
    p, loaders = prepare(checked, dist.device if dist is not None else None)
    preprocessing_from = {key: str(source) for key, source in sources.items()}
    trainer = Trainer(cfg, p, loaders, out.path, dist, resolved=resolved, preprocessing_from=preprocessing_from)
    trainer.check_cache_plan()  # may refuse the config: still nothing written
    _log_start(cfg, p, trainer, sources, out)
    with _disk_faults_noted(out):  # the record's first files: frozen.pt alone may be the model's size
        first = _start_record(out, p, resolved, overwrite) if state is None else _restore(out, trainer, state)
        _store_frozen(out, trainer)
    stop = stop or StopRequest()
    # Under DDP all ranks must stop at the same step: a Ctrl-C seen by one is agreed by all.
    should_stop = stop if dist is None else (lambda: dist.any(stop(), p.device))
    with _failure_noted(out, stop):
        training = _Training(cfg, p, loaders, trainer, out, dist)
        stop.describe = training.on_stop  # what a Ctrl-C does now: stop after the step, or finish
        with (
            stop,
            # train.log's writers; rows past a resumed checkpoint are dropped, as _restore drops metrics rows.
            RunLogs(out, cfg.train.log, trainer.steps_per_epoch, trainer.global_step, first - 1) as logs,
        ):
            hooks = EpochHooks(progress, should_stop, logs.step if out.write else None)
            return training.epochs(first, logs, hooks, on_epoch)


def _open_folder(
    cfg: Config, resolved: dict[str, Any], resume: str | Path | None, overwrite: bool, write: bool
) -> tuple[RunDir, dict[str, Any] | None]:
    """The run folder, checked (nothing written yet), and the state to resume from, if any."""
    if resume is None:
        return RunDir.for_new_run(cfg.output_dir, overwrite, write), None
    out = RunDir.for_resume(resume, cfg.output_dir, write)
    return out, load_resume_state(out.path, resolved)


def _log_start(cfg: Config, p: Prepared, trainer: Trainer, sources: dict[str, Source], out: RunDir) -> None:
    """What is about to train, on what, with what preprocessing, into which folder."""
    if p.threads is not None:  # the run's first lines: a busy machine explains a slow run before it is slow
        log.info("%s: %s", cfg.name, p.threads.describe())
        if p.threads.warning():
            log.warning("%s: %s", cfg.name, p.threads.warning())
    log.info(
        "%s: %s / %s parameters trainable (%d tensors in %d optimizer group(s)), %d BatchNorm pinned in eval, "
        "device %s",
        cfg.name,
        f"{p.plan.numel_trainable:,}",
        f"{p.plan.numel_total:,}",
        len(p.plan.trainable),
        len(trainer.optimizer.param_groups),
        len(p.plan.pinned_bn),
        p.device,
    )
    log.info("%s: preprocessing: %s", cfg.name, Preprocessing.of(cfg.data).describe())
    if cfg.train.precision == "fp16" and p.device.type == "cpu":
        log.warning(
            "%s: train.precision fp16 on the CPU: its kernels are emulated there, often 10-100x slower than fp32; "
            "bf16 is the CPU's low precision",
            cfg.name,
        )
    followed = sorted({src.origin for src in sources.values() if src.kind != "config"})
    if followed:
        log.info("%s: preprocessing not set in the config follows %s", cfg.name, ", ".join(followed))
    staged = f" (written to {out.path} until it succeeds)" if out.staged else ""
    log.info("%s: run folder %s%s", cfg.name, out.final.resolve(), staged)


_started_in_process: list[bool] = []  # a run already reached its training loop in this process


def _startup() -> tuple[float, str] | None:
    """The process's age as the first run's training loop starts: the interpreter, the imports,
    the model, its weights, the data and the run folder. None for later runs of the same process
    (compare, the demo, tests): their start is the earlier runs' time."""
    if _started_in_process:
        return None
    _started_in_process.append(True)
    return process_age_s()


def _disk_fault(out: RunDir, exc: OSError) -> Exception:
    """The error to raise for ``exc`` (a full disk, a folder made read-only), noted in FAILED: its
    hint says what this folder allows now (--resume only where a checkpoint exists)."""
    fault = os_error(exc, "train.output_dir", then=out.next_step())
    out.fail(f"error: {' '.join(str(fault).split())}")
    return fault


@contextmanager
def _disk_faults_noted(out: RunDir) -> Iterator[None]:
    """An OSError of the block (not a refusal of the folder, which leaves it as it was) as
    :func:`_failure_noted` has it."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, UserError):
            raise
        raise _disk_fault(out, exc) from exc


@contextmanager
def _failure_noted(out: RunDir, stop: StopRequest) -> Iterator[None]:
    """The folder exists now: an error in the block leaves a FAILED file there saying why the
    run stopped and how to go on (freezetune.record.rundir), then goes on up."""
    try:
        yield
    except KeyboardInterrupt:  # a second Ctrl-C (or one before the first step): stopped at once, not after a step
        how = "interrupted at once by " + ("a second Ctrl-C" if stop.requested else "Ctrl-C")
        out.fail(f"error: {how}", interrupted=True)
        raise KeyboardInterrupt(_aborted(out, how)) from None
    except OSError as exc:
        fault = _disk_fault(out, exc)
        if fault is exc:
            raise
        raise fault from exc
    except Exception as exc:
        # One line, as the command prints it (a config error's problems joined).
        out.fail(f"error: {' '.join(str(exc).split()) or type(exc).__name__}")
        raise


def _aborted(out: RunDir, how: str) -> str:
    """What a run aborted at once left to go on with, as the command says it: the FAILED file,
    else the checkpoint, else that there is none (the disk may have refused the FAILED file)."""
    failed, checkpoint = out.path / FAILED, out.path / CHECKPOINT
    if failed.is_file():
        return f"{how}; {failed} says how to go on"
    if checkpoint.is_file():
        return f"{how}; --resume {out.path} continues from {checkpoint}"
    return f"{how}; {out.path} holds no checkpoint to resume from"


@dataclass
class _LastPhase:
    """Step timings and saved bytes of the phase in force: summary.json's speed and
    memory describe the final trainable set, so an event starts them over."""

    durations: list[tuple[float, ...]] = field(default_factory=list)
    saved: SavedBytes | None = None
    eval_batches: list[tuple[float, int]] = field(default_factory=list)  # the last evaluation's, timed

    def add(self, stats: EpochStats) -> None:
        self.durations.extend(stats.durations)
        self.saved = self.saved or stats.saved
        self.eval_batches = stats.eval_batches or self.eval_batches


def _start_record(out: RunDir, p: Prepared, resolved: dict[str, Any], overwrite: bool) -> int:
    """A new run's folder: its config and plan, and an empty events file; returns the first epoch."""
    out.create(overwrite)
    out.write_yaml("config.yaml", resolved)
    out.write_json("freeze_plan.json", p.plan.to_json() | {"schedule": p.schedule.to_json()})
    out.append_jsonl("events.jsonl", None)  # created empty: a run without events has none
    return 1


def _store_frozen(out: RunDir, trainer: Trainer) -> None:
    """Write the run's one copy of its frozen tensors, which best.pt and checkpoint.pt refer to
    (freezetune.record.shared), unless the folder holds one: a resumed run's frozen.pt, or the
    model.pt of a finished run extended with more epochs."""
    if not out.write or (out.path / FROZEN_FILE).is_file() or (out.path / "model.pt").is_file():
        return
    store = trainer.frozen_store()
    if store is not None:
        out.save_checkpoint(FROZEN_FILE, store)


def _restore(out: RunDir, trainer: Trainer, state: dict[str, Any]) -> int:
    """Load a checkpoint into ``trainer`` (a stopped epoch included); returns the epoch to start at."""
    partial = trainer.load_state_dict(state, str(out.path / CHECKPOINT))
    if out.write:
        (out.path / FAILED).unlink(missing_ok=True)  # a failed run resumed is no longer failed
    first = state["epoch"] if partial else state["epoch"] + 1
    if state["config"]["train"]["epochs"] != trainer.cfg.train.epochs:
        out.write_yaml("config.yaml", to_dict(trainer.cfg))  # train.epochs raised: the record says so
    # Rows written after the checkpoint (a kill between the two writes) are redone.
    out.keep_jsonl_rows("metrics.jsonl", lambda row: row["epoch"] < first)
    # An auto decision taken after the checkpoint's epoch acts from the next one: kept by when it was taken.
    out.keep_jsonl_rows("events.jsonl", lambda row: row.get("decided_after_epoch", row["epoch"]) <= state["epoch"])
    log.info(
        "%s: resuming at epoch %d%s from %s",
        trainer.cfg.name,
        first,
        f", step {partial.steps}" if partial else "",
        out.path / CHECKPOINT,
    )
    return first


def load_resume_state(folder: Path, resolved: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint to resume from; refused unless this same config made it. The one change
    allowed is more ``train.epochs``: it continues a run, a finished one too when it kept its
    state (``train.keep_state``)."""
    if not folder.is_dir():
        raise ConfigError([f"resume: {folder}: no such run folder"])
    path = folder / CHECKPOINT
    finished = (folder / "summary.json").is_file()
    if not path.is_file():
        if finished:
            raise ConfigError(
                [
                    f"resume: {folder} is a finished run that did not keep its training state (train.keep_state: "
                    f"false), so it cannot be continued exactly. HINT: start a new run from its weights "
                    f"(model.weights={folder}/model.pt), and set train.keep_state: true for runs you may extend"
                ]
            )
        raise ConfigError([f"resume: no {CHECKPOINT} in {folder} (one is written after every epoch but the last)"])
    state = read_checkpoint(path, "resume")
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ConfigError([f"resume: {path} is not a freezetune training state ({STATE_FORMAT})"])
    saved = json.loads(json.dumps(state["config"]))  # a copy to edit
    reached, wanted = state["epoch"], resolved["train"]["epochs"]
    saved["train"]["epochs"] = wanted  # compared on its own, below
    diffs = _differences(saved, resolved)
    if diffs:
        raise ConfigError([f"resume: the config differs from the one {folder} was trained with: {d}" for d in diffs])
    if finished and wanted <= reached:
        raise ConfigError(
            [
                f"resume: {folder} finished its {reached} epochs. "
                f"HINT: to train on, resume with train.epochs=M, M > {reached}"
            ]
        )
    if wanted < reached:
        raise ConfigError([f"resume: train.epochs is {wanted}, but {folder} already reached epoch {reached}"])
    return state


def _differences(saved: Any, now: Any, path: str = "") -> list[str]:
    if isinstance(saved, dict) and isinstance(now, dict):
        keys = dict.fromkeys([*saved, *now])
        return [d for k in keys for d in _differences(saved.get(k), now.get(k), f"{path}.{k}" if path else k)]
    return [] if saved == now else [f"{path} was {saved!r}, is now {now!r}"]


class _Training:
    """One run's epochs, each recorded as it ends, and the finished run's record."""

    def __init__(
        self, cfg: Config, p: Prepared, loaders: Loaders, trainer: Trainer, out: RunDir, dist: Dist | None
    ) -> None:
        self.cfg, self.p, self.loaders, self.trainer, self.out, self.dist = cfg, p, loaders, trainer, out, dist
        self.started = time.perf_counter()
        self.startup = _startup()
        reset_peak_memory(p.device)
        self.last_phase = _LastPhase()
        self.monitor = Monitor.of(cfg.train)
        self.finishing = False  # the epochs are over (or early stopping ended them): a Ctrl-C finishes the run

    def on_stop(self) -> str:
        """What a Ctrl-C does now: the last epoch's last step does not look at a stop (the run
        has nothing left to checkpoint for), nor does what follows it."""
        last_epoch = self.trainer.epoch == self.cfg.train.epochs and self.trainer.asks_over()
        return FINISHING if self.finishing or last_epoch else STOPPING

    def epochs(
        self, first: int, logs: RunLogs, hooks: EpochHooks, on_epoch: Callable[[EpochResult], None] | None
    ) -> Outcome:
        """Train from epoch ``first`` to the end, early stopping or a stop (``hooks.stop``)."""
        cfg, trainer, out, last = self.cfg, self.trainer, self.out, self.cfg.train.epochs
        for epoch in range(first, last + 1):
            self._enter(epoch, logs)
            result, stats = trainer.fit(epoch, hooks, count_saved=self.last_phase.saved is None)
            self.last_phase.add(stats)
            if result is not None:
                self._record(result, logs, on_epoch)
            stop_early = result is not None and self.monitor.should_stop(trainer.epochs)
            if (epoch < last and not stop_early) or result is None:  # else model.pt is the record
                out.save_checkpoint(CHECKPOINT, trainer.state_dict())
            if result is None or (epoch < last and not stop_early and hooks.stop()):
                return self._stopped(epoch, stats)  # stopped mid-epoch, or between
            if stop_early:
                self.finishing = True
                if hooks.stop():  # asked to stop in this epoch's evaluation: the run is over anyway
                    log.warning("%s: early stopping ends the run here, so it finishes rather than stops", cfg.name)
                log.info(
                    "%s: early stopping after epoch %d: %s has not improved by more than %g for %d epochs",
                    cfg.name,
                    epoch,
                    cfg.train.monitor,
                    self.monitor.min_delta,
                    self.monitor.patience,
                )
                break
        # Still inside `with stop`: a Ctrl-C now only sets the flag, so the record is finished whole.
        self.finishing = True
        wall = time.perf_counter() - self.started
        logs.close()  # before finish may rename a staged folder
        return Finished(self.finish(wall))

    def _enter(self, epoch: int, logs: RunLogs) -> None:
        """The events that start at ``epoch``, applied and recorded; a new phase's timings start over."""
        events = self.trainer.enter_phase(epoch)
        for row in events:
            self.out.append_jsonl("events.jsonl", row)
            logs.event(row, self.trainer.global_step + 1)  # at the first step it applies to
        if events:
            self.last_phase = _LastPhase()

    def _record(self, result: EpochResult, logs: RunLogs, on_epoch: Callable[[EpochResult], None] | None) -> None:
        """A finished epoch: its metrics row, best.pt if it is the best so far, the auto decision."""
        cfg, trainer, out = self.cfg, self.trainer, self.out
        row = epoch_row(result, trainer.phases.plan, trainer.optimizer.param_groups, cfg.seed)
        out.append_jsonl("metrics.jsonl", row)
        logs.epoch(row, trainer.global_step)
        if on_epoch:
            on_epoch(result)
        if self.monitor.is_new_best(trainer.epochs):
            out.save_checkpoint(BEST, trainer.model_file(cfg.train.save, shared=True))
        decided = trainer.decide_auto()  # before the checkpoint: it holds the decision
        if decided is not None:
            out.append_jsonl("events.jsonl", decided)

    def _stopped(self, epoch: int, stats: EpochStats) -> Interrupted:
        # No line here: the caller says how to go on, in its own words (train's --resume, compare's rerun).
        return Interrupted(self.cfg.name, epoch, stats.steps, self.out.path)

    def finish(self, wall: float) -> Summary:
        """Verify, measure, save the model and write summary.json."""
        cfg, trainer, out = self.cfg, self.trainer, self.out
        started = time.perf_counter()
        if out.write:  # what follows the last epoch line takes seconds on a large model: say what it is
            log.info(
                "%s: finishing: verifying %d frozen tensors, measuring eval speed (%s), saving model.pt%s ...",
                cfg.name,
                len(trainer.phases.ledger.digests),
                cfg.train.measure,
                " and checkpoint.pt" if cfg.train.keep_state else "",
            )
        if cfg.train.keep_state:  # for a later --resume with more epochs (collective: every rank builds the state)
            # Before the measurements below, which draw from the RNGs: the state is the last epoch's end.
            out.save_checkpoint(CHECKPOINT, trainer.state_dict())
        check = trainer.phases.ledger.verify()
        if not check.unchanged or not check.grads_none:
            log.error("frozen tensors changed: %s", check.changed[:10])
        target = trainer.target
        speed = _speed(target.eval_net, target.val_loader, self.p.device, self.last_phase, cfg)
        memory = _memory(self.p.model, trainer.optimizer, self.p.device, self.last_phase.saved)
        facts = self._facts(check, wall, speed, memory, self._save_model())
        facts.finish_s = time.perf_counter() - started
        summary = Summary.of(facts)
        out.write_json("summary.json", summary.to_json())
        if out.write:
            # A spilled feature cache serves only this run's epochs, and a finished run needs no
            # resume state (a file twice the model's size) unless it keeps it to be extended. Its
            # frozen tensors are in model.pt now, where best.pt and a kept checkpoint.pt find them.
            spent = ["cache_train.npy", "cache_val.npy", FROZEN_FILE] + ([] if cfg.train.keep_state else [CHECKPOINT])
            for name in spent:
                (out.path / name).unlink(missing_ok=True)
        out.commit()  # an --overwrite run replaces the previous record only now, having succeeded
        return summary

    def _save_model(self) -> dict[str, Any]:
        """model.pt as train.save chose; summary.json's ``checkpoint``, with both choices' sizes."""
        save = self.cfg.train.save
        sizes, files = {}, {}
        for mode in ("full", "delta"):
            files[mode] = self.trainer.model_file(mode)
            if mode == save:
                sizes[mode] = self.out.save_checkpoint("model.pt", files[mode])
            else:
                sizes[mode] = serialized_bytes(files[mode])  # what the other choice would have written
        adapters = self._save_adapters(files["delta"]) if self.cfg.freeze.adapters else {}
        return {"save": save, "full_bytes": sizes["full"], "delta_bytes": sizes["delta"], **adapters}

    def _save_adapters(self, delta: dict[str, Any]) -> dict[str, Any]:
        """A run with adapters also saves them alone (``adapters.pt``: the delta over the base
        weights, whatever train.save says), the model merged (``merged.pt``), and the adapters in
        peft's format (``adapters/``); summary.json's ``checkpoint`` gets their sizes."""
        files = self.trainer.files
        merged = self.out.save_checkpoint(MERGED, files.merged_file(self.trainer.epoch))
        alone = self.out.save_checkpoint(ADAPTERS, delta)
        if self.out.write:
            write_peft(
                self.p.model, self.cfg.freeze.adapters, files.trained_modules(delta), self.out.path / PEFT_FOLDER
            )
        return {"adapters_bytes": alone, "merged_bytes": merged}

    def _facts(
        self, check: FrozenCheck, wall: float, speed: dict[str, Any], memory: dict[str, Any], checkpoint: dict[str, Any]
    ) -> RunFacts:
        cfg, p, trainer, dist = self.cfg, self.p, self.trainer, self.dist
        last = trainer.epochs[-1].epoch  # train.epochs, or the epoch early stopping ended the run after
        target = trainer.target
        return RunFacts(
            cfg=cfg,
            plan=trainer.phases.plan,
            epochs=trainer.epochs,
            check=check,
            wall_s=wall,
            startup=self.startup,
            train_samples=len(self.loaders.train.dataset),  # type: ignore[arg-type]
            skipped_images=self.loaders.skipped_images,
            weights={"source": p.load.source, "head": p.load.head, "loaded": p.load.loaded, "new": p.load.new},
            device=str(p.device),
            speed=speed,
            memory=memory,
            cache=target.cache_info,
            compile=target.compile_json(),
            events=[e for e in trainer.phases.events if e["event"] != "optimizer"],
            optimizer_groups=trainer.groups(),
            checkpoint=checkpoint,
            run_dir=str(self.out.final),
            classes=trainer.classes,
            preprocessing=Preprocessing.of(cfg.data).to_json() | {"from": trainer.preprocessing_from},
            best=_best(self.monitor, trainer),
            early_stopping=_early_stopping(cfg, self.monitor, trainer, last),
            distributed=_replicas(dist, p.model, cfg) if dist is not None else None,
            auto=trainer.auto.to_json() if trainer.auto is not None else None,
            threads=p.threads.to_json() if p.threads is not None else None,
        )


def _best(monitor: Monitor, trainer: Trainer) -> dict[str, Any]:
    """summary.json's ``best``: which epoch best.pt holds, and why."""
    best = monitor.best(trainer.epochs)
    assert best is not None  # a finished run has epochs
    return {
        "file": BEST,
        "epoch": best.epoch,
        "monitor": monitor.key,
        "value": monitor.value(best),
        "val_acc": best.val_acc,
        "val_loss": best.val_loss,
    }


def _early_stopping(cfg: Config, monitor: Monitor, trainer: Trainer, last: int) -> dict[str, Any] | None:
    """summary.json's ``early_stopping``: null when not asked for."""
    if monitor.patience is None:
        return None
    return {
        "patience": monitor.patience,
        "min_delta": monitor.min_delta,
        "stopped": last < cfg.train.epochs,
        "last_epoch": last,
        "epochs_without_improvement": monitor.epochs_without_improvement(trainer.epochs),
    }


def _replicas(dist: Dist, model: nn.Module, cfg: Config) -> dict[str, Any]:
    """The launch, and proof that every rank ends with the same parameters."""
    digests = dist.gather(parameter_digest(model))
    if len(set(digests)) != 1:
        log.error("replicas diverged: parameter digests per rank %s", digests)
    return {
        "world_size": dist.world,
        "backend": dist.backend,
        "batch_per_process": cfg.data.batch_size,
        "global_batch": cfg.data.batch_size * dist.world,
        "rank_parameter_sha256": digests,
        "replicas_identical": len(set(digests)) == 1,
    }


def _speed(
    net: nn.Module,
    val_loader: torch.utils.data.DataLoader,
    device: torch.device,
    phase: _LastPhase,
    cfg: Config,
) -> dict[str, Any]:
    """summary.json's ``speed``: step phases after warm-up, and evaluation with and without
    autograd on ``net`` (what trained: the model, or its suffix when the cache was used), in
    the run's precision and memory format, measured as ``train.measure`` asks."""
    t, batch_size = cfg.train, cfg.data.batch_size
    phases = medians(phase.durations, WARMUP_STEPS)
    speed: dict[str, Any] = {
        "warmup_steps": WARMUP_STEPS,
        "batch_size": batch_size,
        "accumulate": t.accumulate,
        "precision": t.precision,
        "channels_last": t.channels_last,
        "measure": t.measure,
    }
    if phases is not None:
        speed.update(phases.to_json())
        speed["train_samples_per_s"] = batch_size * t.accumulate / phases.step  # a step: accumulate batches
    # The last epoch's evaluation timed its own batches: free, and what quick and off report.
    evaluated = batch_speed(phase.eval_batches) or {"eval_samples_per_s": None, "eval_batch_s": None}
    compared = _grad_comparison(net, val_loader, device, cfg) if t.measure != "off" else None
    if t.measure == "full" and compared is not None:
        evaluated = evaluated | {"eval_samples_per_s": compared["eval_samples_per_s"]}
    speed.update(evaluated)
    speed["eval_from"] = "extra passes" if t.measure == "full" else "last epoch's evaluation"
    speed["eval_grad_samples_per_s"] = compared["eval_grad_samples_per_s"] if compared else None
    speed["eval_speedup_no_grad"] = compared["eval_speedup_no_grad"] if compared else None
    speed["grad_comparison"] = compared  # null: not measured (train.measure off, or no validation batch)
    return speed


def _grad_comparison(
    net: nn.Module, val_loader: torch.utils.data.DataLoader, device: torch.device, cfg: Config
) -> dict[str, Any] | None:
    """Evaluation with and without autograd on the same inputs, alternated (measure.eval_speed):
    full's 3 validation batches in 2 rounds after a warm-up, or quick's first batch cut to
    QUICK_SAMPLES in one round. None when there is no validation batch."""
    t = cfg.train
    if t.measure == "full":
        inputs, rounds = [x for x, _ in itertools.islice(val_loader, EVAL_SPEED_BATCHES)], 2
    else:
        first = next(iter(val_loader), None)
        inputs, rounds = ([] if first is None else [first[0][:QUICK_SAMPLES]]), 1
    if not inputs:
        return None
    batches = [to_device(x, device, t.channels_last) for x in inputs]
    full = t.measure == "full"
    compared = eval_speed(net, batches, device, rounds=rounds, precision=t.precision, warmup=full)
    samples = sum(x.shape[0] for x in batches)
    return {"batches": len(batches), "samples": samples, "rounds": rounds, "warmup": full, **compared}


def _memory(
    model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device, saved: SavedBytes | None
) -> dict[str, Any]:
    """summary.json's ``memory``; parameter bytes count the whole model, whose cached prefix
    stays in memory too."""
    trainable, frozen = param_bytes(model)
    peak, peak_kind = peak_memory(device)
    return {
        "param_bytes_trainable": trainable,
        "param_bytes_frozen": frozen,
        "param_bytes_by_dtype": param_bytes_by_dtype(model),  # freeze.frozen_dtype moves frozen bytes to bf16/fp16
        "grad_bytes": grad_bytes(model),  # the last step's gradients are still held
        "optimizer_state_bytes": optimizer_state_bytes(optimizer),
        **(saved or SavedBytes()).to_json(),
        "peak_bytes": peak,
        "peak_kind": peak_kind,
    }
