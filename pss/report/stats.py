"""Seed statistics for report cells: mean, std, n, and comparisons with a baseline.

A cell trained with several seeds is summarised by its mean and sample standard
deviation (ddof=1). A row is compared with its group's baseline row by Welch's
t-test (unequal variances), which needs at least two seeds on both sides; a
difference smaller than the larger of the two standard deviations is flagged
as within seed noise, whatever the test says.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

ALPHA = 0.05  # significance level of the comparison with the baseline


@dataclass(frozen=True)
class Summary:
    """Values of one metric over the seeds of one cell."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return math.fsum(self.values) / self.n

    @property
    def std(self) -> float | None:
        """Sample standard deviation (ddof=1); None for a single seed."""
        if self.n < 2:
            return None
        mean = self.mean
        return math.sqrt(math.fsum((v - mean) ** 2 for v in self.values) / (self.n - 1))


def summarize(values: Iterable[float]) -> Summary | None:
    """A :class:`Summary` of the finite values, or None when there are none."""
    kept = tuple(float(v) for v in values if v is not None and math.isfinite(v))
    return Summary(kept) if kept else None


def welch_p(a: Summary, b: Summary) -> float | None:
    """Two-sided p-value of Welch's t-test, or None (n < 2 on a side, or no variance).

    t = (mean_a - mean_b) / sqrt(s_a^2/n_a + s_b^2/n_b), with the Welch-Satterthwaite
    degrees of freedom; the tail is Student's t CDF (``scipy.special.stdtr``). What
    ``scipy.stats.ttest_ind(equal_var=False)`` computes, without its per-call overhead
    (a 10,000-run report makes thousands of comparisons).
    """
    if a.n < 2 or b.n < 2:
        return None
    from scipy.special import stdtr  # only reports with several seeds pay for scipy

    va, vb = a.std**2 / a.n, b.std**2 / b.n  # type: ignore[operator]
    if va + vb == 0:
        return None
    t = (a.mean - b.mean) / math.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va**2 / (a.n - 1) + vb**2 / (b.n - 1))
    return float(2 * stdtr(dof, -abs(t)))


@dataclass(frozen=True)
class Comparison:
    """A row against its group's baseline for one metric."""

    diff: float  # mean(row) - mean(baseline)
    p: float | None  # Welch's t-test; None where it cannot be run
    noise: float | None  # the larger of the two seed stds; None with one seed on both sides

    @property
    def significant(self) -> bool:
        return self.p is not None and self.p < ALPHA

    @property
    def within_noise(self) -> bool:
        return self.noise is not None and abs(self.diff) < self.noise


def compare(row: Summary, baseline: Summary) -> Comparison:
    stds = [s for s in (row.std, baseline.std) if s is not None]
    return Comparison(
        diff=row.mean - baseline.mean,
        p=welch_p(row, baseline),
        noise=max(stds) if stds else None,
    )
