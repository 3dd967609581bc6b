"""Compare freezing configs over seeds (``freezetune compare``): train each config, each run
in its own process (so its peak memory is its own), or take finished run folders; predict
each config's cost from the per-module profile; write the comparison report.

Every mistake (a config, two configs of one folder or one name, an unknown reference, a report
folder inside a run) is found before anything trains."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType

import yaml

from freezetune import checks
from freezetune.checks import resolve
from freezetune.config import Config, ConfigError, load_config, to_dict
from freezetune.data import build_loaders
from freezetune.models import weights_kind
from freezetune.record import FAILED, OWN_FILES, RunExistsError, staging_for
from freezetune.report import (
    DEFAULT_TARGET,
    build_report,
    config_differences,
    load_run,
    ranking_line,
    reference_line,
    text_table,
    timing_line,
    unresolved_line,
    write_report,
)
from freezetune.train import CHECKPOINT, estimate_config, prepare_model
from freezetune.train.interrupt import handle_stops, restore_handlers
from freezetune.utils import TrainingFailed

__all__ = [
    "Comparison",
    "ComparisonStopped",
    "SeedRun",
    "TrainingFailed",
    "check_runnable",
    "interleave",
    "predict_costs",
    "run_action",
    "run_comparison",
    "seed_runs",
    "summary_lines",
    "train_in_subprocess",
]

log = logging.getLogger(__name__)

STOPPED = 130  # what `freezetune train` exits with after a stop (Ctrl-C, SIGTERM): the shell's code for SIGINT


@dataclass(frozen=True)
class SeedRun:
    """One run of a comparison: a config file, the edits that make it this seed's run, and
    the config they load to."""

    file: str
    overrides: list[str]
    cfg: Config


def seed_runs(file: str, overrides: list[str], seeds: int | None = None) -> list[SeedRun]:
    """The runs that compare trains for one config file: its ``seeds`` (``--seeds``, else the
    config's own ``seeds:``) from ``seed`` up, each in its folder ``<output_dir>-seed<S>`` with
    ``seeds: 1`` (a run is one seed), so a finished seed is found and reused whatever N a later
    comparison asks for. A config of ``seeds: 1`` compared without ``--seeds`` is its run as it
    stands, in ``<output_dir>``."""
    cfg = checks.load(file, overrides).cfg  # every error here, the model's and the data's too, before anything trains
    if seeds is None and cfg.seeds == 1:
        return [SeedRun(file, overrides, cfg)]
    n = seeds if seeds is not None else cfg.seeds
    out = []
    # The keys each seed's run sets itself; the user's own (the first seed, the base folder) are in cfg.
    own = [o for o in overrides if o.split("=", 1)[0].strip() not in ("seed", "seeds", "train.output_dir")]
    for seed in range(cfg.seed, cfg.seed + n):
        edits = [*own, f"seed={seed}", "seeds=1", f"train.output_dir={cfg.output_dir}-seed{seed}"]
        out.append(SeedRun(file, edits, load_config(file, edits)))
    return out


def interleave(plans: list[list[SeedRun]]) -> list[SeedRun]:
    """Seed by seed across the configs (A0 B0 A1 B1 ...): a slow minute of the machine hits
    every config, not one."""
    return [p[i] for i in range(max(len(p) for p in plans)) for p in plans if i < len(p)]


def check_runnable(cfg: Config) -> None:
    """What training would refuse at its start, found before a comparison trains anything: the
    model, its weights and the freezing plan (prepare_model), the data's folders and classes
    (the images themselves are decoded by each run)."""
    prepared = prepare_model(cfg)
    build_loaders(prepared.cfg.data, cfg.seed, prepared.num_classes, check_images=False)


def run_action(cfg: Config, overwrite: bool) -> str:
    """What compare does with ``cfg``'s run folder: ``reuse`` a finished run of this very
    config, ``train`` into an empty folder, ``resume`` this config's run that stopped or
    failed after a checkpoint (from :func:`unfinished_run`'s folder), ``restart`` this
    config's run that stopped or failed before one, or ``replace`` another run (only with
    ``overwrite``; without it, RunExistsError names the run, before anything trains).

    A run is not reused when its ``model.weights`` file changed after it finished (a
    retrained backbone, under the same path)."""
    folder = cfg.output_dir
    stale = ""
    if (folder / "summary.json").is_file() and (folder / "config.yaml").is_file():
        if _saved_config(folder) == to_dict(resolve(cfg)[0]):  # config.yaml holds the resolved preprocessing
            stale = _weights_newer(cfg, folder / "summary.json")
            if not stale:
                return "reuse"
    unfinished = unfinished_run(cfg, overwrite)
    if unfinished is not None:
        return "resume" if (unfinished / CHECKPOINT).is_file() else "restart"
    if not any((folder / f).exists() for f in OWN_FILES):
        return "train"
    if overwrite:
        return "replace"
    what = stale or _what_differs(folder, cfg)
    raise RunExistsError(
        f"{folder} holds another run than {cfg.name}'s config asks for ({what}). "
        "HINT: pass --overwrite to replace it, or give the config another name in its file to keep both"
    )


def unfinished_run(cfg: Config, overwrite: bool) -> Path | None:
    """The folder holding this very config's run that has not finished (stopped by Ctrl-C, or
    failed): ``cfg.output_dir``, or with ``overwrite`` its staging folder, where a replacing
    run writes until it succeeds (freezetune.record.staging_for). None if there is none."""
    folders = [cfg.output_dir, staging_for(cfg.output_dir)] if overwrite else [cfg.output_dir]
    for folder in folders:
        if (folder / "config.yaml").is_file() and not (folder / "summary.json").is_file():
            if _saved_config(folder) == to_dict(resolve(cfg)[0]):
                return folder
    return None


def _saved_config(folder: Path) -> object:
    """The config a run folder records (None if unreadable)."""
    try:
        return yaml.safe_load((folder / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None


def _what_differs(folder: Path, cfg: Config) -> str:
    """Why a run folder does not hold this config's run, as the keys that differ."""
    run = "a run" if (folder / "summary.json").is_file() else "an unfinished run"
    saved = _saved_config(folder)
    if not isinstance(saved, dict):
        return f"{run} without a readable config.yaml"
    keys = config_differences({"run": saved, "config": to_dict(resolve(cfg)[0])})
    if not keys:
        return f"{run} of a different config"
    shown = [f"{k}: {v['run']!r} there, {v['config']!r} now" for k, v in list(keys.items())[:3]]
    more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
    whose = "its" if run == "a run" else f"{run} whose"
    return f"{whose} config differs in " + "; ".join(shown) + more


def _weights_newer(cfg: Config, finished: Path) -> str:
    """Why a finished run of this config is out of date: its weights file is newer ('' if not)."""
    weights = cfg.model.weights
    if weights_kind(cfg.model.arch, weights) != "file":
        return ""
    path = Path(str(weights)).expanduser()
    if path.is_file() and path.stat().st_mtime > finished.stat().st_mtime:
        return f"its model.weights {path} changed after it finished"
    return ""


def train_in_subprocess(
    config: str | Path,
    overrides: list[str],
    overwrite: bool = False,
    resume: Path | None = None,
    signals: SignalsToRun | None = None,
) -> Path | None:
    """``python -m freezetune train --config ...`` in a fresh interpreter (the installed
    package, wherever it runs from), so each run's peak memory is its own; returns the run
    folder, or None when the run stopped (Ctrl-C, SIGTERM: exit status 130).

    Args:
        config: the config file.
        overrides: its key=value edits.
        overwrite: replace another run's record (``--overwrite``).
        resume: continue the run in this folder from its checkpoint (``--resume``).
        signals: where compare's SIGINT and SIGTERM go while the run trains (:class:`SignalsToRun`).

    Raises:
        TrainingFailed: the run failed (its error is printed above).
    """
    cfg = checks.load(config, overrides).cfg  # fail here, with the message, before spawning
    cmd = [sys.executable, "-m", "freezetune", "train", "--config", str(config), *overrides, "--no-progress"]
    cmd += ["--overwrite"] if overwrite else []
    cmd += ["--resume", str(resume)] if resume is not None else []
    log.info("training %s: %s", cfg.name, " ".join([Path(sys.executable).name, *cmd[1:]]))
    # Its own session: a terminal's Ctrl-C reaches compare alone, which passes it on once (SignalsToRun);
    # else the run would get it twice, from the terminal and from compare, and abort at once.
    child = subprocess.Popen([*cmd, "--part-of-compare"], start_new_session=True)
    if signals is not None:
        signals.child = child
    try:
        code = child.wait()
    finally:
        if signals is not None:
            signals.child = None
    # Killed by the signal itself: it came before the run's handlers were in place (Python's start).
    if code in (STOPPED, -signal.SIGINT, -signal.SIGTERM):
        return None
    if code != 0:
        raise TrainingFailed(f"training {config} failed with exit status {code} (its error is above)")
    return cfg.output_dir


class SignalsToRun:
    """``with SignalsToRun() as signals:`` compare's SIGINT and SIGTERM go to the seed run
    training now (``signals.child``), which finishes its step, saves a checkpoint and exits as
    stopped; ``signals.count`` says how many came, so that no further run starts. With no run
    training, the first says so and the second aborts at once. A closed terminal (SIGHUP) does
    not end the comparison, as it does not end a run (freezetune.train.StopRequest)."""

    def __init__(self) -> None:
        self.child: subprocess.Popen | None = None
        self.count = 0
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        child = self.child
        if child is not None and child.poll() is None:
            child.send_signal(signum)  # the run says what it does (freezetune.train.StopRequest)
            return
        if self.count > 1:
            raise KeyboardInterrupt
        log.warning("interrupt: no run is training; the comparison stops before its next run (Ctrl-C again to abort)")

    def __enter__(self) -> SignalsToRun:
        self._previous = handle_stops(self._handle)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        restore_handlers(self._previous)


@dataclass(frozen=True)
class ComparisonStopped:
    """What :func:`run_comparison` returns when a stop (Ctrl-C, SIGTERM) ended the comparison
    before all its runs finished: the runs ``finished`` (trained or reused), the one ``stopped``
    (None: the stop came between runs, or as one finished), and those ``not_started``."""

    finished: list[SeedRun]
    stopped: SeedRun | None
    not_started: list[SeedRun]

    def lines(self, command: str) -> str:
        """What compare says once: the runs' state, and ``command``, which continues."""
        finished = ", ".join(f"{_label(r)} ({r.cfg.output_dir})" for r in self.finished) or "none"
        stopped = f"{_label(self.stopped)} ({_where_it_stands(self.stopped)})" if self.stopped else "none"
        waiting = ", ".join(_label(r) for r in self.not_started) or "none"
        return (
            f"compare stopped: finished {finished}; stopped {stopped}; not started {waiting}.\n"
            f"Continue with: {command} (finished runs are reused, the stopped one continues)"
        )


def _label(r: SeedRun) -> str:
    seed = f" seed {r.cfg.seed}" if r.cfg.output_dir.name.endswith(f"-seed{r.cfg.seed}") else ""
    return f"{r.cfg.name}{seed}"


def _where_it_stands(r: SeedRun) -> str:
    """What a stopped run left: a checkpoint to continue from, or nothing (it starts again)."""
    folder = unfinished_run(r.cfg, overwrite=True)
    if folder is not None and (folder / CHECKPOINT).is_file():
        return f"{folder / CHECKPOINT} continues it"
    failed = f"; {folder / FAILED} says why" if folder is not None and (folder / FAILED).is_file() else ""
    return f"no checkpoint yet: it starts again{failed}"


@dataclass(frozen=True)
class Comparison:
    """What ``freezetune compare`` is asked for: config ``files`` to train (with ``overrides``,
    ``seeds`` per config, ``overwrite`` for runs of other configs), or finished ``run_dirs``;
    the report's folder, its ``reference`` config, its time-to-target and whether to predict costs."""

    out: Path
    files: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    run_dirs: list[Path] = field(default_factory=list)
    seeds: int | None = None
    overwrite: bool = False
    reference: str | None = None
    target: str = DEFAULT_TARGET
    estimate: bool = True


def run_comparison(request: Comparison) -> tuple[dict, list[Path]] | ComparisonStopped:
    """Train (or reuse) the runs of ``request.files``, or take ``request.run_dirs`` as they are,
    and write the comparison report to ``request.out``; returns the report and the files written,
    or, when a stop ended the training, where it left the runs (:class:`ComparisonStopped`).
    Every refusal comes before anything trains."""
    out = request.out
    if out.exists() and (not out.is_dir() or (out / "summary.json").is_file()):
        raise ConfigError(
            [f"--out {out}: {'a file' if not out.is_dir() else 'a run folder'}; choose a folder for the report"]
        )
    trained = _train_configs(request) if request.files else _finished_runs(request)
    if isinstance(trained, ComparisonStopped):
        return trained
    run_dirs, configs = trained
    runs = [load_run(d) for d in run_dirs]
    estimates = predict_costs(configs) if request.estimate else {}
    report = build_report(runs, estimates, reference=request.reference, target=request.target)
    return report, write_report(report, out)


def predict_costs(configs: list[Config]) -> dict[str, dict]:
    """Each config's predicted cost by its name (one profile per architecture and batch shape).
    A scheduled config has one plan per phase: no single prediction fits it, so it has none."""
    cache: dict = {}
    return {c.name: estimate_config(c, cache=cache).to_json() for c in configs if not c.freeze.scheduled}


def summary_lines(report: dict, paths: list[Path]) -> str:
    """What compare prints once the report is written: the reference, the warnings, the table
    (the step ratio ahead of the wall time), the accuracy differences not resolved, the
    training-time differences the machine's noise leaves unresolved, the ranking and the files."""
    lines = [("warning: " if report["reference_fallback"] else "") + reference_line(report)]
    lines += [f"warning: {warning}" for warning in report["warnings"]]
    lines += [text_table(report), unresolved_line(report), timing_line(report), ranking_line(report)]
    return "\n".join(lines) + "\n\nreport: " + ", ".join(str(p) for p in paths)


def _train_configs(request: Comparison) -> tuple[list[Path], list[Config]] | ComparisonStopped:
    """Check every config and every run folder, then train (or reuse) seed by seed across them."""
    files = request.files
    _distinct([str(Path(f).resolve()) for f in files], files, "the same file given twice", "give it once")
    plans = [seed_runs(f, request.overrides, request.seeds) for f in files]  # every error before any training
    configs = [p[0].cfg for p in plans]
    _distinct(
        [c.name for c in configs],
        [f"{f} (name {c.name})" for f, c in zip(files, configs)],
        "one config name, and a comparison pools the runs of one name",
        "give each config its own name",
    )
    _check_reference(request.reference, [c.name for c in configs])
    order = interleave(plans)
    _distinct(
        [str(r.cfg.output_dir.resolve()) for r in order],
        [f"{r.file} ({r.cfg.output_dir})" for r in order],
        "the same run folder",
        "give each config its own name (or train.output_dir)",
    )
    _out_not_in(request.out, [r.cfg.output_dir for r in order])
    actions = [run_action(r.cfg, request.overwrite) for r in order]  # and every refusal
    for plan in plans:  # the model, weights, plan and data of each config that will train
        if any(actions[order.index(r)] != "reuse" for r in plan):
            check_runnable(plan[0].cfg)
    done: list[Path] = []
    with SignalsToRun() as signals:
        for i, (r, action) in enumerate(zip(order, actions)):
            if signals.count:  # a stop that came between runs, or while one finished
                return ComparisonStopped(order[:i], None, order[i:])
            folder = _train_or_reuse(r, action, request.overwrite, signals)
            if folder is None:
                return ComparisonStopped(order[:i], r, order[i + 1 :])
            done.append(folder)
    return done, configs


def _finished_runs(request: Comparison) -> tuple[list[Path], list[Config]]:
    """The run folders as given, each holding a finished run, and one config per name in them."""
    run_dirs = request.run_dirs
    _distinct([str(d.resolve()) for d in run_dirs], [str(d) for d in run_dirs], "the same run folder", "")
    _out_not_in(request.out, run_dirs)
    for d in run_dirs:
        load_run(d)  # a folder without a finished run is named before its config is read
    configs: list[Config] = []
    for d in run_dirs:
        cfg = load_config(d / "config.yaml")
        if cfg.name not in (c.name for c in configs):
            configs.append(cfg)  # one prediction per config, whatever its seeds
    _check_reference(request.reference, [c.name for c in configs])
    return run_dirs, configs


def _train_or_reuse(r: SeedRun, action: str, overwrite: bool, signals: SignalsToRun) -> Path | None:
    label, folder = _label(r), r.cfg.output_dir
    if action == "reuse":
        print(f"{label}: reusing {folder} (finished, same config)", flush=True)
        return folder
    if action == "resume":
        unfinished = unfinished_run(r.cfg, overwrite)
        assert unfinished is not None  # run_action found it
        failed = unfinished / FAILED
        why = f"; it failed: {_first_line(failed)}" if failed.is_file() else ""
        print(f"{label}: continuing {unfinished} from its checkpoint (same config{why})", flush=True)
        return train_in_subprocess(r.file, r.overrides, resume=unfinished, signals=signals)
    verb = {
        "replace": "replacing the run in",
        "restart": "starting again in",
    }.get(action, "training into")
    why = " (this config's run there failed or stopped before its first checkpoint)" if action == "restart" else ""
    print(f"{label}: {verb} {folder}{why}", flush=True)
    return train_in_subprocess(r.file, r.overrides, overwrite=action in ("replace", "restart"), signals=signals)


def _first_line(path: Path) -> str:
    try:
        return path.read_text().splitlines()[0]
    except (OSError, IndexError):
        return "(no reason recorded)"


def _out_not_in(out: Path, run_dirs: list[Path]) -> None:
    """The report's folder is neither a run folder of this comparison nor inside one (a run's
    own report, freezetune report, would overwrite report.md there)."""
    where = out.resolve()
    for d in run_dirs:
        if where == d.resolve() or d.resolve() in where.parents:
            raise ConfigError([f"--out {out}: inside the run folder {d}; choose a folder of its own for the report"])


def _check_reference(name: str | None, names: list[str]) -> None:
    """An unknown --reference is refused before anything trains."""
    if name is not None and name not in names:
        raise ConfigError([f"--reference {name}: no such config here; choose one of {', '.join(names)}"])


def _distinct(keys: list[str], labels: list[str], what: str, fix: str) -> None:
    """Refuse two configs that would write one run folder (the second would replace the first),
    one run folder given twice, or two configs of one name (their seeds would be pooled)."""
    seen: dict[str, str] = {}
    for key, label in zip(keys, labels):
        if key in seen:
            raise ConfigError([f"{seen[key]} and {label} are {what}" + (f": {fix}" if fix else "")])
        seen[key] = label
