"""Issue 25's goals, checked on what ``freezetune benchmark --models`` measured, and its tables.

- the time after the last epoch (its line on stdout to the process's exit) is at most
  max(3 s, 10% of the run's training);
- ``auto``'s training time is at most 1.05x the better of ``on`` and ``off`` (their medians over
  the rounds: one round's ratio is mostly the machine's noise);
- ``freezetune plan``'s predicted build is within ±50% of each build the runs measured.

Each goal is a measured ratio, and says which run it comes from; nothing here times anything."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from freezetune.bench.models import ModelRun, ModelsReport, PlanPrediction
from freezetune.utils import format_table

__all__ = [
    "AFTER_FLOOR_S",
    "AFTER_SHARE",
    "AUTO_SLACK",
    "PLAN_TOLERANCE",
    "Goal",
    "after_bound",
    "after_goal",
    "auto_goal",
    "goals_table",
    "model_goals",
    "model_table",
    "models_tables",
    "plan_goal",
]

AFTER_FLOOR_S = 3.0
AFTER_SHARE = 0.10
AUTO_SLACK = 1.05
PLAN_TOLERANCE = 0.5


@dataclass(frozen=True)
class Goal:
    """One goal on one model: ``ratio`` is the measured value over its bound (after the last
    epoch, auto), or the prediction's relative error (plan); ``met`` is None when the runs
    could not show it (no build to compare with, a mode missing)."""

    name: str
    ratio: float | None
    met: bool | None
    text: str


def _verdict(met: bool | None) -> str:
    return "not measured" if met is None else "met" if met else "NOT met"


def after_bound(train_s: float) -> float:
    """The most a run may spend after its last epoch line: max(3 s, 10% of its training)."""
    return max(AFTER_FLOOR_S, AFTER_SHARE * train_s)


def after_goal(runs: Sequence[ModelRun]) -> Goal:
    """The run furthest over (or nearest to) its bound for the time after the last epoch."""
    name = "time after the last epoch <= max(3 s, 10% of training)"
    timed = [r for r in runs if r.after_s is not None]
    if not timed:
        return Goal(name, None, None, f"{name}: no last epoch line was seen: {_verdict(None)}")
    worst = max(timed, key=lambda r: r.after_s / after_bound(r.train_s))  # type: ignore[operator]
    assert worst.after_s is not None
    bound = after_bound(worst.train_s)
    ratio = worst.after_s / bound
    finish = f", finish_s {worst.finish_s:.2f} s of it in the run" if worst.finish_s is not None else ""
    return Goal(
        name,
        ratio,
        ratio <= 1,
        f"{name}: at worst {worst.after_s:.2f} s (cache {worst.cache}, round {worst.round + 1}{finish}) against "
        f"{bound:.2f} s for its {worst.train_s:.1f} s of training: {ratio:.2f} of the bound, {_verdict(ratio <= 1)}",
    )


def auto_goal(runs: Sequence[ModelRun]) -> Goal:
    """auto's median training time over the better mode's (the lower median of on's and off's),
    over the rounds that ran all three, each round's ratio listed. On a shared 2-core machine the
    same run differs by 10-20% from one process to the next (two builds of one cache: 8.8 s and
    10.8 s), so one round's ratio is mostly that noise; the median over rounds is what the goal
    reads, and the text says in how many rounds auto decided as the faster mode."""
    name = f"auto's training time <= {AUTO_SLACK:.2f}x the better of on and off (medians over rounds)"
    rounds = [modes for modes in _rounds(runs).values() if all(m in modes for m in ("on", "off", "auto"))]
    if not rounds:
        return Goal(name, None, None, f"{name}: no round ran all three modes: {_verdict(None)}")
    median = {m: statistics.median(modes[m].train_s for modes in rounds) for m in ("on", "off", "auto")}
    better = min(("on", "off"), key=lambda m: median[m])
    other = "off" if better == "on" else "on"
    ratio = median["auto"] / median[better]
    alike = sum(modes["auto"].built == (better == "on") for modes in rounds)
    each = ", ".join(
        f"{modes['auto'].train_s / min(modes['on'].train_s, modes['off'].train_s):.3f}" for modes in rounds
    )
    text = (
        f"{name}: auto {median['auto']:.1f} s against {better} {median[better]:.1f} s "
        f"(the other {median[other]:.1f} s) over {len(rounds)} round(s): {ratio:.3f}x; "
        f"auto decided as the faster mode ({better}) in {alike} of {len(rounds)}; "
        f"round by round over the better of that round: {each}: {_verdict(ratio <= AUTO_SLACK)}"
    )
    return Goal(name, ratio, ratio <= AUTO_SLACK, text)


def _rounds(runs: Sequence[ModelRun]) -> dict[int, dict[str, ModelRun]]:
    rounds: dict[int, dict[str, ModelRun]] = {}
    for r in runs:
        rounds.setdefault(r.round, {})[r.cache] = r
    return dict(sorted(rounds.items()))


def plan_goal(runs: Sequence[ModelRun], plans: Sequence[PlanPrediction]) -> Goal:
    """Each round's plan prediction against every build measured in that round (on's, and auto's
    when it built); the largest error decides."""
    name = f"plan's build prediction within ±{PLAN_TOLERANCE:.0%} of the build"
    errors, parts = [], []
    for p in plans:
        if p.predicted_build_s is None:
            continue
        for r in runs:
            if r.round == p.round and r.build_s:
                error = p.predicted_build_s / r.build_s - 1
                errors.append(error)
                parts.append(
                    f"{p.predicted_build_s:.2f} s predicted, {r.build_s:.2f} s built "
                    f"(cache {r.cache}, round {r.round + 1}): {error:+.0%}"
                )
    if not errors:
        return Goal(name, None, None, f"{name}: no prediction with a build to compare: {_verdict(None)}")
    worst = max(errors, key=abs)
    met = abs(worst) <= PLAN_TOLERANCE
    return Goal(name, worst, met, f"{name}: " + "; ".join(parts) + f": {_verdict(met)}")


def model_goals(report: ModelsReport, arch: str) -> list[Goal]:
    """The three goals on ``arch``'s runs."""
    runs = [r for r in report.runs if r.arch == arch]
    plans = [p for p in report.plans if p.arch == arch]
    return [after_goal(runs), auto_goal(runs), plan_goal(runs, plans)]


def _s(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def model_table(runs: Sequence[ModelRun], plans: Sequence[PlanPrediction]) -> str:
    """One row per run: the outside and in-run times, the folder, the cache's decision and its build,
    and the machine's load when the run started (its ``summary.json``'s ``threads.load_1min``)."""
    predicted = {p.round: p.predicted_build_s for p in plans}
    rows = [
        [
            r.round + 1,
            r.cache,
            r.decision,
            _s(r.process_s),
            _s(r.startup_s),
            _s(r.train_s),
            _s(r.after_s, 2),
            _s(r.finish_s, 2),
            f"{r.folder_bytes / 1e6:.1f}",
            _s(r.setup_s, 2),
            _s(r.predicted_build_s, 2),
            _s(predicted.get(r.round) if r.cache != "off" else None, 2),
            _s(r.build_s, 2),
            _s(r.load_s, 2),
            _s(r.threads.get("load_1min"), 2),
        ]
        for r in runs
    ]
    headers = [
        "round",
        "cache",
        "decision",
        "process s",
        "start-up s",
        "train s",
        "after last epoch s",
        "finish s",
        "run folder MB",
        "cache set-up s",
        "build predicted (run) s",
        "build predicted (plan) s",
        "build spent s",
        "of it reading s",
        "1-min load at start",
    ]
    return format_table(headers, rows, right=set(range(3, 15)))


def goals_table(report: ModelsReport) -> str:
    """One row per model: each goal's measured ratio and whether it was met."""

    def cell(g: Goal, percent: bool = False) -> str:
        if g.ratio is None:
            return "-"
        return f"{g.ratio:+.0%} {_verdict(g.met)}" if percent else f"{g.ratio:.2f} {_verdict(g.met)}"

    rows = []
    for arch in report.settings.models:
        after, auto, plan = model_goals(report, arch)
        rows.append([arch, cell(after), cell(auto), cell(plan, percent=True)])
    headers = [
        "model",
        "after last epoch / max(3 s, 10% of training)",
        f"auto / better of on, off, medians (<= {AUTO_SLACK:.2f})",
        "plan's build error (±50%)",
    ]
    return format_table(headers, rows, right={1, 2, 3})


def _threads_line(report: ModelsReport) -> str:
    """The machine's cores and load, and the threads the runs computed with."""
    start, end = report.machine.get("start") or {}, report.machine.get("end") or {}
    loads = [m["load"][0] for m in (start, end) if m.get("load")]
    load = " and ".join(f"{x:.2f}" for x in loads) if loads else "not available"
    used = sorted({(r.threads.get("torch"), r.threads.get("from")) for r in report.runs}, key=str)
    threads = ", ".join(f"{n} ({src})" for n, src in used) or "-"
    asked = report.settings.threads
    why = (
        f"train.threads={asked}, the benchmark's default on a shared machine (--threads 0: torch's own)"
        if asked == 1
        else f"train.threads={asked}"
        if asked is not None
        else "torch's own count"
    )
    return (
        f"machine: {start.get('cores', '-')} cores, 1-minute load {load} (start and end of the benchmark); "
        f"threads per run: {threads}; {why}"
    )


def models_tables(report: ModelsReport) -> str:
    """The whole printout: the settings, the machine, a table and the goals per model, the goals' summary."""
    s = report.settings
    parts = [
        f"{s.train_images} training and {s.val_images} validation images (PNG, ImageFolder, {s.classes} classes), "
        f"{s.image_size} px, batch {s.batch_size}, {s.epochs} epochs, data.augment none, the last stage and the "
        f"head trainable; {s.rounds} round(s) of cache on, off and auto, each run a fresh process",
        _threads_line(report),
    ]
    for arch in s.models:
        runs = [r for r in report.runs if r.arch == arch]
        plans = [p for p in report.plans if p.arch == arch]
        parts += ["", f"{arch}: until:{report.stages.get(arch)}, weights {report.weights.get(arch)}"]
        parts.append(model_table(runs, plans))
        parts += [f"  {p.line()} (round {p.round + 1})" for p in plans]
        parts += [f"  {g.text}" for g in model_goals(report, arch)]
        sizes = [r.folder_bytes for r in runs]
        if sizes:
            parts.append(f"  run folder: {statistics.median(sizes) / 1e6:.1f} MB on disk (median)")
    parts += ["", "goals, measured (the worst run or round of each model):", goals_table(report)]
    return "\n".join(parts)
