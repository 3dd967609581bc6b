"""Tests of the step-indexed LR schedule (``freezetune.lr_schedule``).

Pinned here: ``LRSchedule.factor(step)`` reproduces torch's own schedulers
(``CosineAnnealingLR``, ``StepLR``, ``OneCycleLR`` with ``cycle_momentum=False``)
stepped once per optimizer step; linear warm-up is ``(i+1)/warmup_steps`` and
then the schedule starts from 1; ``none`` is 1 everywhere; ``set_lr`` gives
every group, however late it joined, ``base_lr * factor``. And the motivating
bug (pytorch#62475): torch's ``CosineAnnealingLR`` keeps the ``base_lrs`` it saw
at construction, so a group added later is not put on the schedule.
"""

from __future__ import annotations

import math

import pytest
import torch

from freezetune.config import SchedulerConfig
from freezetune.train import LRSchedule, set_lr

LR = 0.4


def sgd(lr: float = LR) -> torch.optim.SGD:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr)


def torch_lrs(scheduler_factory, steps: int, lr: float = LR) -> list[float]:
    """The LR torch's scheduler gives each of ``steps`` optimizer steps (read before each step)."""
    opt = sgd(lr)
    sched = scheduler_factory(opt)
    out = []
    for i in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        if i < steps - 1:  # OneCycleLR refuses to step past total_steps
            sched.step()
    return out


def ours(cfg: SchedulerConfig, steps_per_epoch: int, epochs: int, lr: float = LR) -> list[float]:
    s = LRSchedule(cfg, steps_per_epoch, epochs)
    return [lr * s.factor(i) for i in range(s.total_steps)]


# --------------------------------------------------------------------------- basics


def test_total_and_warmup_steps() -> None:
    s = LRSchedule(SchedulerConfig(name="cosine", warmup_epochs=1.5), steps_per_epoch=4, epochs=5)
    assert s.total_steps == 20
    assert s.warmup_steps == 6
    # onecycle warms up by itself: warmup_epochs is ignored.
    assert LRSchedule(SchedulerConfig(name="onecycle", warmup_epochs=1.5), 4, 5).warmup_steps == 0


def test_none_is_one_everywhere() -> None:
    s = LRSchedule(SchedulerConfig(name="none"), steps_per_epoch=3, epochs=4)
    assert [s.factor(i) for i in range(s.total_steps + 5)] == [1.0] * 17


# --------------------------------------------------------------------------- against torch


@pytest.mark.parametrize("min_lr_scale", [0.0, 0.1])
@pytest.mark.parametrize(("steps_per_epoch", "epochs"), [(7, 5), (1, 3), (10, 1)])
def test_cosine_matches_torch_cosine_annealing(min_lr_scale: float, steps_per_epoch: int, epochs: int) -> None:
    total = steps_per_epoch * epochs
    ref = torch_lrs(
        lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=total, eta_min=LR * min_lr_scale), total
    )
    mine = ours(SchedulerConfig(name="cosine", min_lr_scale=min_lr_scale), steps_per_epoch, epochs)
    assert len(mine) == total
    for i, (a, b) in enumerate(zip(mine, ref)):
        assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12), (i, a, b)
    assert mine[0] == LR


def test_cosine_holds_its_floor_past_the_last_step() -> None:
    s = LRSchedule(SchedulerConfig(name="cosine", min_lr_scale=0.1), steps_per_epoch=5, epochs=2)
    assert s.factor(10) == pytest.approx(0.1, abs=1e-15)
    assert s.factor(13) == s.factor(10)  # torch's cosine would climb back up; ours stays at the floor


@pytest.mark.parametrize(("step_epochs", "gamma"), [(1, 0.1), (2, 0.3)])
def test_step_matches_torch_step_lr(step_epochs: int, gamma: float) -> None:
    steps_per_epoch, epochs = 6, 5
    total = steps_per_epoch * epochs
    ref = torch_lrs(
        lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=step_epochs * steps_per_epoch, gamma=gamma), total
    )
    mine = ours(SchedulerConfig(name="step", step_epochs=step_epochs, gamma=gamma), steps_per_epoch, epochs)
    for i, (a, b) in enumerate(zip(mine, ref)):
        assert math.isclose(a, b, rel_tol=1e-9), (i, a, b)
    # The drop happens at the first step of the new period, not before.
    period = step_epochs * steps_per_epoch
    assert mine[period - 1] == LR and math.isclose(mine[period], LR * gamma, rel_tol=1e-12)


@pytest.mark.parametrize(
    ("pct_start", "div_factor", "final_div_factor", "steps_per_epoch", "epochs"),
    [(0.3, 25.0, 1e4, 7, 5), (0.25, 10.0, 100.0, 10, 4), (0.5, 4.0, 2.0, 3, 3)],
)
def test_onecycle_matches_torch_one_cycle_lr(
    pct_start: float, div_factor: float, final_div_factor: float, steps_per_epoch: int, epochs: int
) -> None:
    total = steps_per_epoch * epochs

    def factory(o: torch.optim.Optimizer) -> torch.optim.lr_scheduler.OneCycleLR:
        return torch.optim.lr_scheduler.OneCycleLR(
            o,
            max_lr=LR,
            total_steps=total,
            pct_start=pct_start,
            div_factor=div_factor,
            final_div_factor=final_div_factor,
            anneal_strategy="cos",
            cycle_momentum=False,
            three_phase=False,
        )

    ref = torch_lrs(factory, total)
    cfg = SchedulerConfig(
        name="onecycle", pct_start=pct_start, div_factor=div_factor, final_div_factor=final_div_factor
    )
    mine = ours(cfg, steps_per_epoch, epochs)
    assert len(mine) == len(ref) == total
    for i, (a, b) in enumerate(zip(mine, ref)):
        assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-15), (i, a, b)
    assert math.isclose(mine[0], LR / div_factor, rel_tol=1e-12)
    # The peak lands on a step only when pct_start * total is whole (as in torch).
    assert max(mine) <= LR * (1 + 1e-12)
    if float(pct_start * total).is_integer():
        assert math.isclose(mine[int(pct_start * total) - 1], LR, rel_tol=1e-12)
    assert math.isclose(mine[-1], LR / (div_factor * final_div_factor), rel_tol=1e-9)


# --------------------------------------------------------------------------- warm-up


def test_linear_warmup_then_cosine_from_one() -> None:
    steps_per_epoch, epochs = 4, 5
    s = LRSchedule(SchedulerConfig(name="cosine", warmup_epochs=1.5, min_lr_scale=0.2), steps_per_epoch, epochs)
    warm = s.warmup_steps
    assert warm == 6
    assert [s.factor(i) for i in range(warm)] == [(i + 1) / 6 for i in range(6)]
    assert s.factor(warm - 1) == 1.0
    assert s.factor(warm) == 1.0  # the cosine starts from the top
    span = s.total_steps - warm
    ref = torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=span, eta_min=LR * 0.2), span)
    for i, b in enumerate(ref):
        assert math.isclose(LR * s.factor(warm + i), b, rel_tol=1e-6), i


def test_warmup_with_step_schedule_counts_steps_from_zero() -> None:
    s = LRSchedule(SchedulerConfig(name="step", warmup_epochs=1, step_epochs=2, gamma=0.5), steps_per_epoch=3, epochs=6)
    assert [s.factor(i) for i in range(3)] == [1 / 3, 2 / 3, 1.0]
    assert [s.factor(i) for i in range(3, 12)] == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]


def test_warmup_with_none_reaches_one_and_stays() -> None:
    s = LRSchedule(SchedulerConfig(name="none", warmup_epochs=0.5), steps_per_epoch=8, epochs=2)
    assert [s.factor(i) for i in range(s.total_steps)] == [0.25, 0.5, 0.75] + [1.0] * 13


# --------------------------------------------------------------------------- set_lr and late groups


def test_set_lr_gives_each_group_its_base_lr_times_factor_and_skips_groups_without_one() -> None:
    p1, p2, p3 = (torch.nn.Parameter(torch.zeros(1)) for _ in range(3))
    opt = torch.optim.SGD(
        [{"params": [p1], "base_lr": 0.2}, {"params": [p2], "base_lr": 0.05, "lr": 0.05}, {"params": [p3], "lr": 0.7}],
        lr=0.2,
    )
    set_lr(opt, 0.5)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.025, 0.7]
    assert [g.get("base_lr") for g in opt.param_groups] == [0.2, 0.05, None]  # base untouched


def test_a_group_joining_late_is_on_the_schedule() -> None:
    sched = LRSchedule(SchedulerConfig(name="cosine"), steps_per_epoch=5, epochs=2)
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([{"params": [w], "base_lr": 0.2}], lr=0.2, momentum=0.9)
    k = 4
    for step in range(k):
        set_lr(opt, sched.factor(step))
        w.grad = torch.ones(3)
        opt.step()
    late = torch.nn.Parameter(torch.ones(3))
    opt.add_param_group({"params": [late], "base_lr": 0.05, "lr": 0.05})
    set_lr(opt, sched.factor(k))
    assert opt.param_groups[1]["lr"] == 0.05 * sched.factor(k)
    assert opt.param_groups[0]["lr"] == 0.2 * sched.factor(k)
    assert 0 < sched.factor(k) < 1  # mid-cosine: the un-scheduled 0.05 would be wrong
    # ... and it stays on it for the rest of the run.
    for step in range(k + 1, sched.total_steps):
        set_lr(opt, sched.factor(step))
        assert opt.param_groups[1]["lr"] / 0.05 == pytest.approx(opt.param_groups[0]["lr"] / 0.2, rel=1e-12)


def test_torch_cosine_does_not_schedule_a_group_added_after_construction() -> None:
    """pytorch#62475: the motivating bug. CosineAnnealingLR records base_lrs at
    construction; a group added later is not given base_lr * factor."""
    T = 10
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    torch_sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=T)
    for _ in range(3):
        opt.step()
        torch_sched.step()
    opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 1.0})
    opt.step()
    torch_sched.step()  # last_epoch 4
    ours_ = LRSchedule(SchedulerConfig(name="cosine"), steps_per_epoch=T, epochs=1)
    correct = 1.0 * ours_.factor(4)
    assert len(torch_sched.base_lrs) == 1  # the late group was never recorded
    assert math.isclose(opt.param_groups[0]["lr"], correct, rel_tol=1e-9)  # the original group is right
    new_lr = opt.param_groups[1]["lr"]
    assert not math.isclose(new_lr, correct, rel_tol=1e-3)
    # What torch 2.x does: its chainable form scales the group's current LR by one step's ratio,
    # as if the new group had been at the top of the cosine at step 3.
    ratio = (1 + math.cos(math.pi * 4 / T)) / (1 + math.cos(math.pi * 3 / T))
    assert math.isclose(new_lr, ratio, rel_tol=1e-9)
    assert new_lr > correct + 0.15
