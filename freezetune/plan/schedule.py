"""Freezing that changes during training, as pure functions over names.

A schedule is a list of events applied at the start of an epoch
(``{epoch: 3, unfreeze: layer3, lr_scale: 0.1}``). Each event is a freezing
rule appended after the config's rules, so the plan of every *phase* (a run of
epochs with the same trainable set) is just :func:`build_plan` over more rules:
last rule wins, BatchNorm policy re-derived, every error named by its origin.

``freeze.preset: gradual`` is ULMFiT's gradual unfreezing: the head trains
alone in epoch 1, then each entry of ``freeze.gradual`` is unfrozen at the
start of the next epoch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from freezetune.config.records import EventSpec, gradual_events
from freezetune.config.schema import FreezeConfig
from freezetune.plan.adapters import adapter_rules, resolve_adapters
from freezetune.plan.rules import (
    FreezeError,
    FreezePlan,
    ModelTree,
    build_plan,
    match_rule,
    preset_rules,
    unmatched,
)

__all__ = ["Event", "Phase", "Schedule", "build_schedule"]


@dataclass(frozen=True)
class Event:
    """A schedule event resolved against a model: the parameters it changes."""

    spec: EventSpec
    params: tuple[str, ...]  # the parameters whose state it changes, in model order
    numel: int

    def to_json(self) -> dict[str, Any]:
        """As an ``events.jsonl`` row."""
        s = self.spec
        scale = {"lr_scale": s.lr_scale} if not s.rule.freezes else {}
        return {
            "epoch": s.epoch,
            "event": s.kind,
            "target": s.target,
            **scale,
            "origin": s.origin,
            "tensors": len(self.params),
            "params": self.numel,
        }


@dataclass(frozen=True)
class Phase:
    """A run of epochs with one trainable set."""

    start: int  # its first epoch
    plan: FreezePlan
    events: tuple[Event, ...]  # applied at the start of `start` (none for the first phase)


@dataclass(frozen=True)
class Schedule:
    """Every phase of a run, from epoch 1 on."""

    phases: tuple[Phase, ...]  # in epoch order; phases[0].start == 1

    def phase_at(self, epoch: int) -> Phase:
        """The phase in force during ``epoch``."""
        return [p for p in self.phases if p.start <= epoch][-1]

    def plan_at(self, epoch: int) -> FreezePlan:
        """The plan in force during ``epoch``."""
        return self.phase_at(epoch).plan

    def events_at(self, epoch: int) -> tuple[Event, ...]:
        """The events applied at the start of ``epoch`` (none for epoch 1)."""
        return next((p.events for p in self.phases if p.start == epoch and epoch > 1), ())

    @property
    def initial(self) -> FreezePlan:
        """Epoch 1's plan."""
        return self.phases[0].plan

    @property
    def changes(self) -> bool:
        """Whether any event changes the trainable set during the run."""
        return len(self.phases) > 1

    def lr_scales(self, epoch: int) -> dict[str, float]:
        """Each parameter's event scale at ``epoch``: the ``lr_scale`` of the event that
        last unfroze it, 1.0 for one trainable from the start."""
        scales: dict[str, float] = {}
        for phase in self.phases:
            if phase.start > epoch:
                break
            for ev in phase.events:
                if not ev.spec.rule.freezes:
                    scales.update(dict.fromkeys(ev.params, ev.spec.lr_scale))
        return scales

    def trainable_from(self) -> dict[str, int]:
        """The first epoch each parameter trains in (absent: never trainable)."""
        first: dict[str, int] = {}
        for phase in self.phases:
            for name in phase.plan.trainable:
                first.setdefault(name, phase.start)
        return first

    def frozen_throughout(self, epoch: int) -> set[str]:
        """Parameters frozen in every phase up to and including ``epoch``."""
        return self._in_every_phase(epoch, lambda plan: plan.frozen)

    def pinned_throughout(self, epoch: int) -> set[str]:
        """BatchNorm modules pinned in eval in every phase up to ``epoch``."""
        return self._in_every_phase(epoch, lambda plan: plan.pinned_bn)

    def _in_every_phase(self, epoch: int, names: Callable[[FreezePlan], Iterable[str]]) -> set[str]:
        return set.intersection(*(set(names(p.plan)) for p in self.phases if p.start <= epoch))

    def to_json(self) -> list[dict[str, Any]]:
        """Every event, as ``freeze_plan.json``'s ``schedule`` lists them."""
        return [ev.to_json() for p in self.phases for ev in p.events]


# --------------------------------------------------------------------------- events -> phases


def build_schedule(tree: ModelTree, freeze: FreezeConfig, decided: Sequence[EventSpec] = ()) -> Schedule:
    """Resolve ``freeze``'s preset, rules and events (as the config loader read them) into one
    plan per phase; raise FreezeError listing every event that matches nothing or changes
    nothing. ``decided``: freeze events that ``freeze.preset: auto`` took during the run (named
    ``freeze.auto[i]``). Adapters' rules follow the config's rules: an adapted layer's own
    weights stay frozen whatever the preset and rules say of them (freezetune.plan.adapters)."""
    adapters = resolve_adapters(tree, freeze.adapters)
    base = preset_rules(freeze.preset, tree) + list(freeze.rules) + adapter_rules(adapters)
    # Gradual events first: an explicit schedule event in the same epoch can refine them.
    specs = sorted([*gradual_events(freeze.gradual), *freeze.schedule, *decided], key=lambda e: e.epoch)  # stable
    plan = dataclasses.replace(build_plan(tree, base, freeze.batchnorm, freeze.frozen_modules), adapters=adapters)
    phases = [Phase(1, plan, ())]
    trainable = {p.name: p.trainable for p in plan.params}
    rules_so_far = list(base)
    problems: list[str] = []
    for epoch in sorted({e.epoch for e in specs}):
        resolved = []
        for spec in (e for e in specs if e.epoch == epoch):
            event = _resolve(spec, tree, trainable, problems)
            if event is not None:  # one that matches nothing is reported once, here, not again by build_plan
                rules_so_far.append(spec.rule)
                resolved.append(event)
        try:
            # build_plan reports a pattern that matches nothing, with the nearest names.
            plan = build_plan(tree, rules_so_far, freeze.batchnorm, freeze.frozen_modules)
            plan = dataclasses.replace(plan, adapters=adapters)
        except FreezeError as exc:
            problems.extend(f"{p} (at epoch {epoch})" for p in exc.problems)
            continue
        phases.append(Phase(epoch, plan, tuple(resolved)))
    if problems:
        raise FreezeError(list(dict.fromkeys(problems)))
    return Schedule(tuple(phases))


def _resolve(spec: EventSpec, tree: ModelTree, trainable: dict[str, bool], problems: list[str]) -> Event | None:
    """``spec`` against the model: the parameters it changes, ``trainable`` updated. An event that
    matches nothing (None) or changes nothing is noted in ``problems``."""
    hits = match_rule(spec.rule, tree)
    if not hits:
        problems.append(unmatched(spec.rule, tree))
        return None
    wanted = not spec.rule.freezes
    changed = tuple(n for n in hits if trainable[n] != wanted)
    if not changed:
        state, verb = ("trainable", "unfreezes") if wanted else ("frozen", "freezes")
        problems.append(
            f"{spec.origin} {spec.rule} at epoch {spec.epoch}: {verb} nothing new, all {len(hits)} "
            f"parameter tensors it matches are already {state}"
        )
    trainable.update(dict.fromkeys(changed, wanted))
    return Event(spec, changed, sum(tree.numel[n] for n in changed))
