"""Means with 95 % intervals over replays, and when a difference between two policies is claimed.

A figure of a simulated policy depends on the replay (which seed, how the sessions interleave), so
every reported figure is the mean over replays with a Student-t 95 % confidence interval. Two
policies are compared replay by replay (the same workload and seed for both): the difference is
claimed only when the interval of the paired differences excludes zero.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

# Student's t, two-sided 95 % (the 0.975 quantile), by degrees of freedom; above 30, the normal's.
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (df >= 1)."""
    if df < 1:
        raise ValueError(f"an interval needs at least 2 values (df >= 1), got df={df}")
    return _T975[df - 1] if df <= len(_T975) else 1.960


@dataclass(frozen=True)
class Interval:
    """A mean and the half-width of its 95 % interval (nan with a single value: no interval)."""

    mean: float
    half: float
    n: int

    @property
    def lo(self) -> float:
        return self.mean - self.half

    @property
    def hi(self) -> float:
        return self.mean + self.half

    def excludes(self, x: float = 0.0) -> bool:
        """Whether ``x`` lies outside the interval (never, without an interval)."""
        return not math.isnan(self.half) and not self.lo <= x <= self.hi

    def fmt(self, spec: str = ",.0f", scale: float = 1.0, unit: str = "") -> str:
        m = format(self.mean * scale, spec) + unit
        return m if math.isnan(self.half) else f"{m} ± {format(self.half * scale, spec.replace('+', ''))}{unit}"

    def to_dict(self) -> dict[str, float | int | None]:
        return {"mean": self.mean, "ci95": None if math.isnan(self.half) else self.half, "n": self.n}


def mean_ci(values: Sequence[float]) -> Interval:
    """Mean and 95 % interval (Student t) of independent replays."""
    if not values:
        raise ValueError("no values")
    n = len(values)
    m = statistics.fmean(values)
    if n == 1:
        return Interval(m, math.nan, 1)
    return Interval(m, t975(n - 1) * statistics.stdev(values) / math.sqrt(n), n)


def paired(a: Sequence[float], b: Sequence[float]) -> Interval:
    """Interval of the replay-by-replay differences a - b."""
    if len(a) != len(b):
        raise ValueError(f"paired replays differ in number: {len(a)} and {len(b)}")
    return mean_ci([x - y for x, y in zip(a, b, strict=True)])


def verdict(diff: Interval, lower_is_better: bool = True) -> str:
    """ "better", "worse" or "no difference" (the interval contains 0, or there is none)."""
    if not diff.excludes(0.0):
        return "no difference"
    return "better" if (diff.mean < 0) == lower_is_better else "worse"
