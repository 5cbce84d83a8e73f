"""Seed statistics as frames: mean, std and n over seeds, and comparisons with a baseline.

A cell trained with several seeds is summarised by the mean and sample standard deviation
(ddof=1) of its finite values (:func:`seed_stats` groups a frame of per-run values by cell,
or a curve's values by epoch). A row is compared with its group's baseline row by Welch's
t-test (unequal variances), which needs at least two seeds on both sides; a difference
smaller than the larger of the two standard deviations is flagged as within seed noise,
whatever the test says. Over a whole table, the rows' differences from their baselines
are tested together (:func:`paired`): is there a systematic sign? Every function takes
whole columns: one call for a table.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

ALPHA = 0.05  # significance level of the comparison with the baseline


def seed_stats(values: pd.DataFrame, by: Any) -> pd.DataFrame:
    """The ``mean``, sample ``std`` (ddof=1; NaN for one value) and ``n`` of the finite
    values of each column, per group of ``by`` (groups in order of appearance).

    values: (runs, columns) floats, one row per seed run; by: the group of each row.
    Returns (groups, columns x [mean, std, n]).
    """
    finite = values.where(np.isfinite(values))
    stats = finite.groupby(by, sort=False).agg(["mean", "std", "count"])
    return stats.rename(columns={"count": "n"}, level=1)


def welch_p(a: pd.DataFrame, b: pd.DataFrame) -> np.ndarray:
    """Two-sided p-values of Welch's t-test of each row of ``a`` against the same row of
    ``b`` (frames with ``mean``, ``std`` and ``n``); NaN where a side has fewer than two
    seeds or neither has variance.

    t = (mean_a - mean_b) / sqrt(s_a^2/n_a + s_b^2/n_b), with the Welch-Satterthwaite
    degrees of freedom; the tail is Student's t CDF (``scipy.special.stdtr``): what
    ``scipy.stats.ttest_ind(equal_var=False)`` computes, for every row in one call.
    """
    va, vb = a["std"] ** 2 / a["n"], b["std"] ** 2 / b["n"]
    tested = np.asarray((a["n"] >= 2) & (b["n"] >= 2) & (va + vb > 0))
    if not tested.any():
        return np.full(tested.shape, np.nan)
    from scipy.special import stdtr  # only reports with several seeds pay for scipy

    t = (a["mean"] - b["mean"]) / np.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va**2 / (a["n"] - 1) + vb**2 / (b["n"] - 1))
    return np.where(tested, 2 * stdtr(dof, -np.abs(t)), np.nan)


def compare(rows: pd.DataFrame, baseline: pd.DataFrame) -> pd.DataFrame:
    """Each row (``mean``, ``std``, ``n``) against the baseline row of the same index:
    ``diff`` (mean - the baseline's), Welch's ``p``, ``noise`` (the larger of the two
    stds), ``significant`` (p < ALPHA) and ``within_noise`` (|diff| < noise)."""
    diff = rows["mean"] - baseline["mean"]
    p = pd.Series(welch_p(rows, baseline), index=rows.index)
    noise = np.fmax(rows["std"], baseline["std"])  # NaN only where both are
    return pd.DataFrame(
        {
            "diff": diff,
            "p": p,
            "noise": noise,
            "significant": p < ALPHA,
            "within_noise": diff.abs() < noise,
        }
    )


def paired(diffs: pd.Series) -> dict[str, float]:
    """The rows' differences from their baselines taken together, as pairs: their ``mean``,
    the two-sided ``p`` of the one-sample t-test of the mean against 0 (NaN for fewer than
    two pairs or no variance), ``above`` (how many are > 0) and ``n``. NaNs are dropped."""
    d = diffs.dropna().to_numpy(float)
    out = {"mean": float(d.mean()) if len(d) else math.nan, "p": math.nan,
           "above": float((d > 0).sum()), "n": float(len(d))}
    if len(d) >= 2 and d.std(ddof=1) > 0:
        from scipy.special import stdtr

        t = d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))
        out["p"] = float(2 * stdtr(len(d) - 1, -abs(t)))
    return out
