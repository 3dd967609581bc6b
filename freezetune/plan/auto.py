"""Adaptive freezing (``freeze.preset: auto``) as pure functions: the stages a model can
freeze, front to back, and the rule that decides, from a per-stage signal measured during
training, how far the frozen prefix moves.

The signal is AutoFreeze's (Liu et al. 2021): the norm of each stage's gradient, sampled
during an epoch and averaged; its *change rate* between two epochs,
``|G(t) - G(t-1)| / G(t-1)``, says whether the stage is still moving. A stage whose rate
falls below ``threshold`` has converged. The frozen prefix grows over the converged stages
that follow it, never past the ceiling, never to the head. Only prefixes: the cache and
the saved-activation savings follow a prefix, not a stage frozen in the middle.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from freezetune.plan.rules import FreezeError, FreezePlan, ModelTree

__all__ = ["AutoDecision", "AutoSettings", "change_rates", "decide", "model_stages", "stages_left"]


@dataclass(frozen=True)
class AutoSettings:
    """``freeze.auto``: when and how far the policy may freeze."""

    threshold: float = 0.1  # a stage whose gradient-norm change rate is below this has converged
    warmup_epochs: int = 1  # no decision before this many epochs have trained
    ceiling: str | None = None  # the first stage never frozen (default: the head)
    sample_every: int = 5  # steps between gradient-norm samples (the signal's cost)


@dataclass(frozen=True)
class AutoDecision:
    """What the policy decided after ``epoch``: the frozen prefix before and after (stage
    counts), the stages it freezes now, each stage's change rate and why."""

    epoch: int
    frozen_before: int
    frozen_after: int
    freeze: tuple[str, ...]
    rates: dict[str, float | None] = field(default_factory=dict)
    reason: str = ""

    def to_json(self, stages: Sequence[str], threshold: float) -> dict[str, object]:
        """As an ``events.jsonl`` row (``event: auto``)."""
        return {
            "epoch": self.epoch + 1,  # it acts from the next epoch on, as every event does
            "event": "auto",
            "decided_after_epoch": self.epoch,
            "freeze": list(self.freeze),
            "frozen_prefix": list(stages[: self.frozen_after]),
            "threshold": threshold,
            "rates": self.rates,
            "reason": self.reason,
        }


def model_stages(tree: ModelTree, head: str, ceiling: str | None = None) -> list[str]:
    """The stages auto may freeze: the model's top-level modules that own parameters, in order,
    before the head (and before ``ceiling`` when given). FreezeError for a ceiling that is no
    top-level module or comes after the head."""
    owning = tree.stages
    head_top = head.split(".")[0]
    if head_top not in owning:
        raise FreezeError([f"freeze.preset auto: the head {head!r} is not under a top-level module"])
    stop = owning.index(head_top)
    if ceiling is not None:
        if ceiling not in owning:
            raise FreezeError(
                [f"freeze.auto.ceiling: {ceiling!r} is no top-level module with parameters; one of {', '.join(owning)}"]
            )
        if owning.index(ceiling) > stop:
            raise FreezeError([f"freeze.auto.ceiling: {ceiling!r} comes after the head {head!r}, which never freezes"])
        stop = owning.index(ceiling)
    if stop == 0:  # a policy that can never act is refused, as a schedule event past the last epoch is
        later = ", ".join(owning[1 : owning.index(head_top)]) or "none"
        if ceiling is None:
            raise FreezeError(
                [f"freeze.preset auto: the head {head!r} is the first stage: auto has nothing before it to freeze"]
            )
        raise FreezeError(
            [
                f"freeze.auto.ceiling: {ceiling!r} is the first stage, so auto has nothing to freeze (stages from the "
                f"ceiling on always train). HINT: a later stage ({later}), or null to let auto freeze up to the "
                f"head {head!r}"
            ]
        )
    return owning[:stop]


def stages_left(stages: Sequence[str], plan: FreezePlan, ceiling: str | None) -> list[str]:
    """The problem, as one line in a list, when the config's own rules already froze every stage
    auto may freeze (``stages``, from :func:`model_stages`): such a policy can never act. Empty
    when some stage still trains."""
    trains = {name.split(".")[0] for name in plan.trainable}
    if any(stage in trains for stage in stages):
        return []
    where = f"before the ceiling {ceiling!r}" if ceiling is not None else "before the head"
    return [
        f"freeze.auto: every stage {where} ({', '.join(stages)}) is frozen by freeze.rules already, so auto has "
        "nothing left to freeze. HINT: a later freeze.auto.ceiling, or a fixed preset instead of auto"
    ]


def change_rates(previous: Mapping[str, float], current: Mapping[str, float]) -> dict[str, float | None]:
    """Each stage's relative change of mean gradient norm between two epochs; None where it
    cannot be taken (no sample, or a zero norm before)."""
    out: dict[str, float | None] = {}
    for stage, now in current.items():
        before = previous.get(stage)
        ok = before is not None and before > 0 and math.isfinite(before) and math.isfinite(now)
        out[stage] = abs(now - before) / before if ok else None  # type: ignore[operator]
    return out


def decide(
    epoch: int,
    history: Sequence[Mapping[str, float]],
    stages: Sequence[str],
    frozen: int,
    settings: AutoSettings,
    epochs_total: int,
    already: Collection[str] = (),
) -> AutoDecision:
    """After ``epoch`` (1-based), with ``history[i]`` the per-stage mean gradient norms of epoch
    ``i + 1`` (stages already frozen have none), decide the frozen prefix for the next epoch:
    the ``frozen`` stages stay frozen, and the prefix grows over the following stages whose
    change rate is below the threshold, stopping at the first that is not. Stages in ``already``
    (frozen by the config's own rules) count as converged and are passed over, not frozen again."""

    def keep(reason: str, rates: dict[str, float | None] | None = None) -> AutoDecision:
        return AutoDecision(epoch, frozen, frozen, (), rates or {}, reason)

    if epoch >= epochs_total:
        return keep("the last epoch: nothing left to save")
    if epoch < max(settings.warmup_epochs, 2) or len(history) < 2:
        return keep(f"warm-up: the first decision comes after epoch {max(settings.warmup_epochs, 2)}")
    rates = change_rates(history[-2], history[-1])
    if frozen >= len(stages):
        return keep("every stage auto may freeze is frozen", rates)
    after = frozen
    while after < len(stages):
        rate = rates.get(stages[after])
        if stages[after] not in already and (rate is None or rate >= settings.threshold):
            break
        after += 1
    if after == frozen:
        first = stages[frozen]
        rate = rates.get(first)
        why = "no signal" if rate is None else f"change rate {rate:.3g} >= {settings.threshold:g}"
        return keep(f"{first} still learning ({why})", rates)
    chosen = tuple(s for s in stages[frozen:after] if s not in already)
    return AutoDecision(epoch, frozen, after, chosen, rates, f"converged: rate < {settings.threshold:g}")
