"""Step timing: phase medians after warm-up, the no-grad evaluation gap, and the process's age."""

from __future__ import annotations

import sys
import time

import pytest
import torch
import torch.nn as nn

from freezetune.measure import PHASES, StepClock, batch_speed, eval_speed, medians, process_age_s


def test_medians_skip_warmup_and_take_whole_step_medians() -> None:
    durations = [(9.0, 9.0, 9.0, 9.0)] * 2 + [(0.1, 1.0, 2.0, 0.5), (0.3, 1.2, 2.2, 0.5), (0.2, 1.1, 2.1, 0.6)]
    m = medians(durations, warmup=2)
    assert m is not None and m.steps == 3
    assert (m.data, m.forward, m.backward, m.optimizer) == (0.2, 1.1, 2.1, 0.5)
    assert m.step == pytest.approx(4.0) and m.compute == pytest.approx(3.8)


def test_medians_with_fewer_steps_than_warmup_use_all_and_none_is_none() -> None:
    assert medians([(1.0, 1.0, 1.0, 1.0)], warmup=3).steps == 1
    assert medians([], warmup=3) is None


def test_cpu_clock_records_one_duration_per_phase() -> None:
    clock = StepClock(torch.device("cpu"))
    for _ in range(2):
        clock.start()
        for _ in PHASES:
            clock.lap()
    clock.start()
    clock.drop_last()  # a step whose batch never came
    durations = clock.durations()
    assert len(durations) == 2 and all(len(d) == 4 and min(d) >= 0 for d in durations)


def test_eval_speed_compares_inference_mode_with_autograd_on_and_restores_mode() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10)).train()
    result = eval_speed(model, [torch.randn(32, 64)] * 3, torch.device("cpu"), rounds=2)
    assert set(result) == {"eval_samples_per_s", "eval_grad_samples_per_s", "eval_speedup_no_grad"}
    assert result["eval_speedup_no_grad"] == pytest.approx(
        result["eval_samples_per_s"] / result["eval_grad_samples_per_s"]
    )
    assert model.training


def test_cuda_clock_times_only_every_nth_step() -> None:
    # Constructed for CUDA but never asked for an event: the sampling logic alone.
    clock = StepClock(torch.device("cpu"))
    clock.cuda, clock.every = False, 3  # sampling rule, CPU timer
    for _ in range(7):
        clock.start()
        for _ in PHASES:
            clock.lap()
    assert len(clock.durations()) == 3  # steps 0, 3 and 6


def test_process_age_counts_from_the_process_start_and_advances_with_the_clock() -> None:
    first, origin = process_age_s()
    time.sleep(0.2)
    second, _ = process_age_s()
    if sys.platform == "linux":
        # torch is imported by now: a process that got here is older than the import alone.
        assert origin == "process start" and first > 0.3
    assert 0.15 <= second - first <= 0.5  # /proc's clock ticks are 10 ms


def test_batch_speed_leaves_out_the_first_batch_and_takes_the_median_batch() -> None:
    # The first batch pays allocations and kernel choice: 10 s here, left out of both figures.
    speed = batch_speed([(10.0, 4), (0.5, 4), (1.5, 4), (1.0, 2)])
    assert speed == {"eval_samples_per_s": 10 / 3.0, "eval_batch_s": 1.0, "eval_batches_timed": 3}


def test_batch_speed_of_one_batch_uses_it_and_of_none_is_none() -> None:
    assert batch_speed([(0.5, 4)]) == {"eval_samples_per_s": 8.0, "eval_batch_s": 0.5, "eval_batches_timed": 1}
    assert batch_speed([]) is None


def test_eval_speed_without_warmup_runs_each_batch_once_per_round_and_way() -> None:
    calls: list[bool] = []
    model = nn.Linear(4, 2)
    model.register_forward_hook(lambda m, i, o: calls.append(torch.is_inference_mode_enabled()))
    eval_speed(model, [torch.randn(3, 4)], torch.device("cpu"), rounds=1, warmup=False)
    assert calls == [True, False]  # inference_mode, then autograd: no untimed passes before
    calls.clear()
    eval_speed(model, [torch.randn(3, 4)], torch.device("cpu"), rounds=1)
    assert calls == [True, False, True, False]
