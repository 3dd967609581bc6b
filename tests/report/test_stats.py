"""freezetune.report.stats on inputs whose answers are known: textbook t quantiles, hand-worked
means, intervals, differences and ratios, the wall-time noise rule, Pareto fronts and times to a
target."""

from __future__ import annotations

import math

import pytest

from freezetune.report import (
    MAX_TIME_SPREAD,
    Difference,
    difference,
    pareto_front,
    ratio,
    spread,
    summarize,
    t_quantile,
    time_to_target,
    wall_time_verdict,
)

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


# --------------------------------------------------------------------------- ratios and the noise rule


def test_a_paired_ratio_is_the_geometric_mean_of_the_per_seed_ratios() -> None:
    # Per seed: e^0.3, e^0.4, e^0.5 -> logs mean 0.4, std 0.1; the interval is the logs' t-interval, mapped back.
    ref = {0: 2.0, 1: 3.0, 2: 5.0, 9: 1.0}
    r = ratio({s: ref[s] * math.exp(0.1 * (s + 3)) for s in (0, 1, 2)} | {7: 4.0}, ref)
    half = 4.3027 * 0.1 / math.sqrt(3)
    assert (r.method, r.n) == ("paired", 3)
    assert r.mean == pytest.approx(math.exp(0.4))
    assert r.low == pytest.approx(math.exp(0.4 - half), rel=1e-4) and r.high == pytest.approx(
        math.exp(0.4 + half), rel=1e-4
    )
    assert r.resolved and r.to_json() == {
        "mean": r.mean,
        "low": r.low,
        "high": r.high,
        "method": "paired",
        "n": 3,
        "resolved": True,
    }


def test_a_ratio_weighs_half_and_double_alike_and_is_resolved_only_away_from_one() -> None:
    r = ratio({0: 2.0, 1: 0.5}, {0: 1.0, 1: 1.0})  # x2 and x0.5: the arithmetic mean would say 1.25
    assert r.mean == pytest.approx(1.0) and r.low < 1 < r.high and not r.resolved
    steady = ratio({0: 0.25, 1: 0.5, 2: 1.0}, {0: 1.0, 1: 2.0, 2: 4.0})  # the machine 4x slower by seed 2
    assert (steady.mean, steady.low, steady.high) == pytest.approx((0.25, 0.25, 0.25)) and steady.resolved


def test_a_ratio_without_common_seeds_is_welch_one_run_has_no_interval_and_zero_is_refused() -> None:
    assert ratio({0: 1.0, 1: 1.2}, {5: 2.0, 6: 2.1}).method == "welch"
    one = ratio({0: 1.0}, {0: 4.0, 1: 4.0})
    assert (one.method, one.low, one.high, one.resolved) == ("none", None, None, False)
    assert one.mean == pytest.approx(0.25)
    with pytest.raises(ValueError, match="ratio: values must be positive, got 0.0"):
        ratio({0: 0.0, 1: 1.0}, {0: 1.0, 1: 1.0})


def test_spread_is_the_coefficient_of_variation() -> None:
    assert spread([1.0, 2.0, 3.0]) == pytest.approx(0.5)  # std 1 over mean 2
    assert spread([4.0, 4.0]) == 0.0
    assert spread([4.0]) is None and spread([]) is None and spread([0.0, 0.0]) is None


def _interval(mean: float, low: float, high: float) -> Difference:
    return Difference(mean, low, high, "paired", 3)


def test_a_steady_time_difference_whose_interval_excludes_zero_is_resolved() -> None:
    d = _interval(-5.0, -7.5, -2.5)
    assert wall_time_verdict(d, [0.02, 0.05]) == "resolved"
    assert wall_time_verdict(d, [MAX_TIME_SPREAD, None]) == "resolved"  # at the bound: still steady


def test_a_noisy_machine_leaves_a_time_difference_unresolved_even_when_its_interval_excludes_zero() -> None:
    # The case: seconds that vary across seeds by half their mean. The sign held, the seconds do not.
    d = _interval(-45.0, -80.0, -10.0)
    assert wall_time_verdict(d, [0.58, 0.03]) == "unresolved (noise)"
    assert wall_time_verdict(d, [0.03, 0.58]) == "unresolved (noise)"  # the reference's noise counts too
    assert wall_time_verdict(d, [0.3, 0.3], max_spread=0.5) == "resolved"


def test_a_time_difference_within_the_run_to_run_variation_is_unresolved_and_one_run_has_no_verdict() -> None:
    assert wall_time_verdict(_interval(12.0, -100.0, 124.0), [0.02, 0.02]) == "unresolved (noise)"
    assert wall_time_verdict(Difference(-3.0, None, None, "none", 1), [None, 0.01]) == "no interval"
