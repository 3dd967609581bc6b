"""freezetune.report.stats on inputs whose answers are known: textbook t quantiles, hand-worked
means, intervals and differences, Pareto fronts and times to a target."""

from __future__ import annotations

import math

import pytest

from freezetune.report import difference, pareto_front, summarize, t_quantile, time_to_target

# Student's t, two-sided 95% (the 0.975 quantile), from any statistics table.
TABLE = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 9: 2.2622, 29: 2.0452, 120: 1.9799}


@pytest.mark.parametrize(("df", "expected"), sorted(TABLE.items()))
def test_t_quantile_matches_the_table(df: int, expected: float) -> None:
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-4)


def test_t_quantile_is_symmetric_tends_to_the_normal_and_refuses_nonsense() -> None:
    assert t_quantile(0.025, 4) == pytest.approx(-t_quantile(0.975, 4))
    assert t_quantile(0.5, 7) == pytest.approx(0.0, abs=1e-9)
    assert t_quantile(0.975, 1e6) == pytest.approx(1.95996, abs=1e-4)  # the normal's 1.96
    # Welch's fractional df: checked by integrating the t density numerically to 0.975.
    assert t_quantile(0.975, 2.5) == pytest.approx(3.57465, abs=1e-4)
    for p, df in ((0.0, 3), (1.0, 3), (0.9, 0)):
        with pytest.raises(ValueError):
            t_quantile(p, df)


def test_summarize_known_values() -> None:
    s = summarize([1.0, 2.0, 3.0])
    assert (s.n, s.mean, s.std) == (3, 2.0, 1.0)  # sample std: sqrt((1 + 0 + 1) / 2)
    half = 4.3027 / math.sqrt(3)
    assert s.low == pytest.approx(2.0 - half, abs=1e-4) and s.high == pytest.approx(2.0 + half, abs=1e-4)
    assert s.half_width == pytest.approx(half, abs=1e-4)
    same = summarize([0.8, 0.8, 0.8, 0.8])
    assert (same.std, same.low, same.high) == (0.0, 0.8, 0.8)  # no spread: a zero-width interval


def test_one_value_has_no_interval_and_none_is_refused() -> None:
    s = summarize([0.9])
    assert (s.n, s.mean, s.std, s.low, s.high, s.half_width) == (1, 0.9, None, None, None, None)
    with pytest.raises(ValueError):
        summarize([])


def test_paired_difference_uses_the_common_seeds_only() -> None:
    # Per seed: +0.10, +0.09, +0.11 -> mean 0.10, std 0.01, half-width 4.3027 * 0.01 / sqrt(3).
    d = difference({0: 0.90, 1: 0.85, 2: 0.88, 7: 0.1}, {0: 0.80, 1: 0.76, 2: 0.77, 5: 0.99})
    assert (d.method, d.n) == ("paired", 3)
    assert d.mean == pytest.approx(0.10)
    assert d.high - d.mean == pytest.approx(4.3027 * 0.01 / math.sqrt(3), abs=1e-5)
    assert d.resolved and d.to_json()["resolved"] is True


def test_a_paired_difference_whose_interval_holds_zero_is_not_resolved() -> None:
    d = difference({0: 0.80, 1: 0.90, 2: 0.85}, {0: 0.85, 1: 0.85, 2: 0.85})  # -0.05, +0.05, 0
    assert d.mean == pytest.approx(0.0, abs=1e-12) and d.low < 0 < d.high
    assert not d.resolved


def test_pairing_resolves_what_overlapping_intervals_would_not() -> None:
    # A seed effect shared by both configs: the per-config intervals overlap widely, the
    # per-seed differences are all +0.01.
    a, b = {0: 0.71, 1: 0.81, 2: 0.91}, {0: 0.70, 1: 0.80, 2: 0.90}
    sa, sb = summarize(list(a.values())), summarize(list(b.values()))
    assert sa.low < sb.high  # overlapping
    d = difference(a, b)
    assert d.method == "paired" and d.resolved and d.mean == pytest.approx(0.01)


def test_welch_without_common_seeds() -> None:
    # a: mean 2, var 1 (n 3); b: mean 5, var 4 (n 3). se^2 = 1/3 + 4/3 = 5/3;
    # df = (5/3)^2 / ((1/3)^2/2 + (4/3)^2/2) = 2.9412; half = t(0.975, 2.9412) * sqrt(5/3).
    d = difference({0: 1.0, 1: 2.0, 2: 3.0}, {10: 3.0, 11: 5.0, 12: 7.0})
    assert (d.method, d.n) == ("welch", 3)
    assert d.mean == pytest.approx(-3.0)
    assert d.high - d.mean == pytest.approx(t_quantile(0.975, 2.9412) * math.sqrt(5 / 3), rel=1e-3)
    assert d.low < 0 < d.high and not d.resolved


def test_one_run_or_one_common_seed_gives_no_interval() -> None:
    d = difference({0: 0.9}, {0: 0.8, 1: 0.7})
    assert d.method == "none" and d.low is None and not d.resolved
    assert d.mean == pytest.approx(0.9 - 0.75)
    # Two common seeds are needed for a paired interval; one is not enough, so unpaired.
    d = difference({0: 0.9, 3: 0.8}, {0: 0.8, 1: 0.7})
    assert d.method == "welch"


def test_pareto_front_minimises_cost_and_maximises_accuracy() -> None:
    points = [(10.0, 0.90), (5.0, 0.85), (6.0, 0.80), (1.0, 0.50), (10.0, 0.89), (1.0, 0.50)]
    # (6, .80) is beaten by (5, .85); (10, .89) by (10, .90); the two equal points both stay.
    assert pareto_front(points) == [True, True, False, True, False, True]
    assert pareto_front([(3.0, 0.7)]) == [True]
    assert pareto_front([]) == []


def test_time_to_target_is_the_first_epoch_end_that_reaches_it() -> None:
    curve = [(2.0, 0.60), (4.5, 0.80), (7.0, 0.78), (9.0, 0.85)]
    assert time_to_target(curve, 0.80) == 4.5  # reached exactly counts
    assert time_to_target(curve, 0.79) == 4.5  # not interpolated between epochs
    assert time_to_target(curve, 0.85) == 9.0
    assert time_to_target(curve, 0.86) is None  # never reached
    assert time_to_target([], 0.1) is None
