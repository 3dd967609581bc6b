"""The statistics behind a comparison over repeated seeds: mean, standard deviation and
Student-t 95% intervals, paired differences, the Pareto front, time to a target accuracy.

Pure functions of plain numbers (no torch, no numpy, no scipy): the report calls them,
tests check them against textbook values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

__all__ = [
    "CONFIDENCE",
    "MAX_TIME_SPREAD",
    "Difference",
    "Ratio",
    "Stat",
    "difference",
    "pareto_front",
    "ratio",
    "spread",
    "summarize",
    "t_quantile",
    "time_to_target",
    "wall_time_verdict",
]

CONFIDENCE = 0.95
# Every seed of a config does the same work (the same number of images, epochs and steps), so its
# training seconds per epoch should agree across seeds to a few percent: they did to 0.9-2.4% on
# the demo's quiet machine (docs/demo.md), and to 58% on a shared one where no time difference
# meant anything (±116 s on an 80 s mean over three seeds). Above 10% the machine, not the config,
# is what the seconds measure.
MAX_TIME_SPREAD = 0.10


@dataclass(frozen=True)
class Stat:
    """Mean, sample standard deviation (n - 1) and the 95% t-interval of the mean of ``n``
    values. One value has no spread to estimate: its std and interval are None."""

    n: int
    mean: float
    std: float | None
    low: float | None
    high: float | None

    @property
    def half_width(self) -> float | None:
        """The interval's half-width (None for one value)."""
        return None if self.high is None else self.high - self.mean

    def to_json(self) -> dict[str, float | int | None]:
        """As report.json holds it."""
        return {"n": self.n, "mean": self.mean, "std": self.std, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class _Interval:
    """A pooled estimate with its 95% interval, and whether the interval excludes ``_NULL``."""

    mean: float
    low: float | None
    high: float | None
    method: str
    n: int
    _NULL: ClassVar[float] = 0.0  # the value of "no difference"

    @property
    def resolved(self) -> bool:
        """The interval excludes the null value: the two differ at 95% confidence."""
        return self.low is not None and self.high is not None and (self.low > self._NULL or self.high < self._NULL)

    def to_json(self) -> dict[str, float | int | str | bool | None]:
        """As report.json holds it, ``resolved`` included."""
        return {
            "mean": self.mean,
            "low": self.low,
            "high": self.high,
            "method": self.method,
            "n": self.n,
            "resolved": self.resolved,
        }


@dataclass(frozen=True)
class Difference(_Interval):
    """A config's metric minus the reference's, with its 95% interval and how it was taken:
    ``paired`` (per seed both ran, then the t-interval of those differences), ``welch``
    (no common seeds: the two samples' unequal-variance interval) or ``none`` (too few
    runs for an interval). ``resolved``: the interval excludes 0."""


@dataclass(frozen=True)
class Ratio(_Interval):
    """A config's metric over the reference's, pooled over seeds: the geometric mean of the
    per-seed ratios with its 95% interval, taken as a :class:`Difference` of logarithms (so
    that 0.5× and 2× weigh alike) and mapped back. ``method`` as a Difference's;
    ``resolved``: the interval excludes 1."""

    _NULL: ClassVar[float] = 1.0


def summarize(values: Sequence[float]) -> Stat:
    """The :class:`Stat` of ``values`` (at least one)."""
    n = len(values)
    if n == 0:
        raise ValueError("summarize: no values")
    mean = math.fsum(values) / n
    if n == 1:
        return Stat(1, mean, None, None, None)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(0.5 + CONFIDENCE / 2, n - 1) * std / math.sqrt(n)
    return Stat(n, mean, std, mean - half, mean + half)


def difference(values: dict[int, float], reference: dict[int, float]) -> Difference:
    """``values`` minus ``reference``, each keyed by seed.

    Paired over the seeds both have, when there are two or more of them: runs with the same
    seed share the data subset, its order and the new head's initialization, so each seed's
    difference cancels what the seed does to both, and the interval is far narrower than two
    independent intervals would allow. Otherwise Welch's interval over all runs of each.
    """
    common = sorted(set(values) & set(reference))
    if len(common) >= 2:
        stat = summarize([values[s] - reference[s] for s in common])
        return Difference(stat.mean, stat.low, stat.high, "paired", len(common))
    a, b = list(values.values()), list(reference.values())
    mean = math.fsum(a) / len(a) - math.fsum(b) / len(b)
    if len(a) < 2 or len(b) < 2:
        return Difference(mean, None, None, "none", min(len(a), len(b)))
    va, vb = summarize(a).std ** 2 / len(a), summarize(b).std ** 2 / len(b)  # type: ignore[operator]
    se2 = va + vb
    if se2 == 0.0:
        return Difference(mean, mean, mean, "welch", min(len(a), len(b)))
    # Welch-Satterthwaite degrees of freedom.
    df = se2**2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = t_quantile(0.5 + CONFIDENCE / 2, df) * math.sqrt(se2)
    return Difference(mean, mean - half, mean + half, "welch", min(len(a), len(b)))


def ratio(values: dict[int, float], reference: dict[int, float]) -> Ratio:
    """``values`` over ``reference``, each keyed by seed and positive (step medians, say).

    Paired like :func:`difference`, on the logarithms: a seed's two runs ran next to each other
    (compare trains seed by seed across the configs), so a slow minute of the machine slows both
    and cancels in their ratio. Welch's interval when fewer than two seeds are common."""
    for v in (*values.values(), *reference.values()):
        if not v > 0:
            raise ValueError(f"ratio: values must be positive, got {v}")
    d = difference({s: math.log(v) for s, v in values.items()}, {s: math.log(v) for s, v in reference.items()})
    low = None if d.low is None else math.exp(d.low)
    high = None if d.high is None else math.exp(d.high)
    return Ratio(math.exp(d.mean), low, high, d.method, d.n)


def spread(values: Sequence[float]) -> float | None:
    """The coefficient of variation: sample standard deviation over the mean; None for fewer
    than two values or a mean of 0."""
    stat = summarize(values) if values else None
    if stat is None or stat.std is None or stat.mean == 0:
        return None
    return stat.std / abs(stat.mean)


def wall_time_verdict(diff: Difference, spreads: Sequence[float | None], max_spread: float = MAX_TIME_SPREAD) -> str:
    """What a wall-time difference to the reference says, under one rule:

    - ``"no interval"``: one run of either config, nothing to judge;
    - ``"unresolved (noise)"``: the machine's noise swamps it, because either config's spread
      across seeds (``spreads``: each one's :func:`spread` of seconds per epoch) is above
      ``max_spread``, or the interval holds 0 (the difference is within the run-to-run
      variation);
    - ``"resolved"``: otherwise.

    A large spread overrides an interval that excludes 0: with a handful of seeds on a noisy
    machine, the sign may hold but the seconds are the machine's load, not the config's cost
    (the step ratio, from medians inside each run, is the number to read then)."""
    if diff.low is None or diff.high is None:
        return "no interval"
    if any(s is not None and s > max_spread for s in spreads) or not diff.resolved:
        return "unresolved (noise)"
    return "resolved"


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """For points (cost, accuracy), which are on the front: no other point costs no more
    and is at least as accurate, and better in one of the two."""

    def dominated(i: int) -> bool:
        c, a = points[i]
        return any((oc <= c and oa >= a) and (oc < c or oa > a) for j, (oc, oa) in enumerate(points) if j != i)

    return [not dominated(i) for i in range(len(points))]


def time_to_target(curve: Sequence[tuple[float, float]], target: float) -> float | None:
    """The training seconds at the first evaluation (seconds, accuracy) whose accuracy
    reaches ``target``; None when none does. Evaluations happen at epoch ends: the time is
    that epoch end's, not an interpolation (no model existed in between to use)."""
    return next((t for t, acc in curve if acc >= target), None)


# ------------------------------------------------------------------------------ Student's t


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (df > 0, 0 < p < 1),
    by bisection on the distribution function; accurate to ~1e-10."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"t_quantile: need 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if _t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return (lo + hi) / 2


def _t_cdf(t: float, df: float) -> float:
    """P(T <= t) for t >= 0: 1 - I_x(df/2, 1/2) / 2 with x = df / (df + t^2)."""
    x = df / (df + t * t)
    return 1.0 - 0.5 * _betainc(df / 2, 0.5, x)


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), by its continued fraction
    (Numerical Recipes, 6.4), on the side where it converges fast."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    ln_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(ln_front) * _beta_cf(a, b, x) / a
    return 1.0 - math.exp(ln_front) * _beta_cf(b, a, 1.0 - x) / b


def _beta_cf(a: float, b: float, x: float) -> float:
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h
