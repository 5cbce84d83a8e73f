"""Report logic without a store: statistics, marks, layout details and escaping."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import special, stats

from pss.errors import UserError
from pss.report import latex, markdown, metrics
from pss.report.build import parse_formats
from pss.report.collect import RunRecord, collect_cells, traceback_line
from pss.report.layout import build_table
from pss.report.stats import compare, paired, seed_stats, welch_p
from pss.report.table import NOISE, SIGNIFICANT, fmt, fmt_diff
from pss.sweep.expand import expand
from pss.sweep.schema import load_spec

ROOT = Path(__file__).resolve().parents[1]


def summaries(*samples: Sequence[float]) -> pd.DataFrame:
    """mean, std and n of each sample, one row each, as a report groups seeds by cell."""
    values = pd.DataFrame({"v": [v for s in samples for v in s]}, dtype=float)
    return seed_stats(values, [i for i, s in enumerate(samples) for _ in s])["v"]


def t_cdf_4(t: float) -> float:
    """Student's t CDF with 4 degrees of freedom, in closed form (independent of scipy)."""
    a = 1 + t * t / 4
    return 0.5 + 3 / 8 * t / math.sqrt(a) * (1 - t * t / (12 * a))


def welch_p_closed_form(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided Welch p: t and the Welch-Satterthwaite df by hand, then Student's t tail
    as the regularised incomplete beta function, P(|T| > t) = I_{df/(df+t^2)}(df/2, 1/2)
    (scipy.special's incomplete beta; pss.report uses Student's t CDF, stdtr)."""
    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if va + vb == 0:
        return None
    t = (statistics.fmean(a) - statistics.fmean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return float(special.betainc(df / 2, 0.5, df / (df + t * t)))


def test_welch_known_p_value():
    a, b = summaries((1.0, 2.0, 3.0)), summaries((4.0, 5.0, 6.0))
    # equal variances (1) and n (3): t = -3 / sqrt(2/3), Welch-Satterthwaite df = 4
    t = -3 / math.sqrt(2 / 3)
    expected = 2 * (1 - t_cdf_4(abs(t)))
    assert expected == pytest.approx(0.0213116, abs=1e-6)
    assert welch_p(a, b)[0] == pytest.approx(expected, rel=1e-9)
    cmp = compare(a, b).iloc[0]
    assert cmp.significant and not cmp.within_noise and cmp["diff"] == pytest.approx(-3.0)


def test_paired_differences_against_scipy_and_by_hand():
    diffs = pd.Series([-1.0, -2.4, 0.3, -0.8, math.nan, -1.2, 0.1])  # NaN: not compared
    got = paired(diffs)
    d = diffs.dropna()
    assert got["p"] == pytest.approx(stats.ttest_1samp(d, 0.0).pvalue, rel=1e-9)
    assert (got["mean"], got["above"], got["n"]) == (pytest.approx(d.mean()), 2, 6)
    # t = 1 / (1 / sqrt(5)) with 4 degrees of freedom, the closed form above
    assert paired(pd.Series([1.0, 2.0, 0.0, 1.0, 1.0]))["p"] == pytest.approx(
        2 * (1 - t_cdf_4(math.sqrt(5) / math.sqrt(0.5))), rel=1e-9
    )
    assert math.isnan(paired(pd.Series([0.5]))["p"])  # one pair: no test
    assert math.isnan(paired(pd.Series([0.5, 0.5]))["p"])  # no variance


def test_welch_closed_form_is_the_t_tail_at_four_degrees_of_freedom():
    t = -3 / math.sqrt(2 / 3)
    closed = welch_p_closed_form((1.0, 2.0, 3.0), (4.0, 5.0, 6.0))
    assert closed == pytest.approx(2 * (1 - t_cdf_4(abs(t))), rel=1e-12)


@pytest.mark.parametrize(
    "a,b",
    [
        ((59.4, 59.6), (59.5, 59.7, 59.6)),  # n = 2 against 3 (the Table 5 golden's case)
        ((41.5, 41.7, 41.6, 41.9), (42.2, 42.4)),  # 4 against 2
        ((1.0, 2.0, 4.0, 8.0, 16.0), (3.0, 3.5, 2.0)),  # unequal n and variances
    ],
)
def test_welch_with_unequal_n_matches_the_closed_form(a, b):
    expected = welch_p_closed_form(a, b)
    # both orders in one call, as a table compares all its rows
    assert welch_p(summaries(a, b), summaries(b, a)) == pytest.approx([expected] * 2, rel=1e-9)
    assert expected == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue, rel=1e-9)
    # Student's pooled-variance test, or equal-length samples, would give other p-values
    pooled = stats.ttest_ind(a, b, equal_var=True).pvalue
    n = min(len(a), len(b))
    truncated = welch_p_closed_form(a[:n], b[:n])
    assert abs(pooled - expected) > 1e-3 * expected and abs(truncated - expected) > 1e-3


def test_welch_needs_two_seeds_and_noise_flag():
    one, three = summaries((42.0,)), summaries((41.8, 42.3, 42.1))
    assert np.isnan(welch_p(one, three)[0])
    cmp = compare(one, three).iloc[0]
    assert np.isnan(cmp.p) and not cmp.significant
    assert cmp.noise == pytest.approx(three["std"][0]) and cmp.within_noise  # |-0.067| < 0.25
    assert np.isnan(compare(summaries((40.0,)), summaries((42.0,)))["noise"][0])  # no std
    assert np.isnan(welch_p(summaries((1.0, 1.0)), summaries((1.0, 1.0)))[0])  # no variance


def test_summary():
    s = summaries([41.5, 41.7, 41.6, float("nan")], [float("inf"), float("nan")], [1.0])
    assert s["n"].tolist() == [3, 0, 1]  # finite values only
    assert s["mean"][0] == pytest.approx(41.6) and s["std"][0] == pytest.approx(0.1)
    assert np.isnan(s["mean"][1]) and np.isnan(s["std"][2])  # no value; one seed: no std


def test_number_formats():
    assert fmt(-0.04, 1) == "0.0" and fmt(42.25, 2) == "42.25"
    assert (
        fmt_diff(0.26, 1) == "+0.3" and fmt_diff(-0.26, 1) == "-0.3" and fmt_diff(0.01, 1) == "0.0"
    )
    assert metrics.decimals("forward_ms") == 2 and metrics.decimals("postprocess_ms_{mode}") == 2
    assert metrics.decimals("mAP_e2e") == 1
    assert metrics.lower_is_better("postprocess_ms_nms") and not metrics.lower_is_better("mAR_nms")
    assert metrics.paper_keys("mAP_{mode}", "e2e") == ["mAP_e2e", "mAP", "mAP_", "mAP_{mode}"]
    assert metrics.axis_label("mAP_e2e") == "mAP w/o NMS (%)"


def test_traceback_line():
    tb = 'Traceback (most recent call last):\n  File "x.py", line 1\n    boom()\nValueError: bad\n'
    assert traceback_line(tb) == "ValueError: bad"
    assert traceback_line("CUDA error: out of memory\nmore") == "CUDA error: out of memory"
    assert traceback_line("\n \n") is None
    assert len(traceback_line("x" * 500) or "") == 160


def test_latex_escape():
    assert latex.escape("FCOS_PSS 50% & #1 {x}") == r"FCOS\_PSS 50\% \& \#1 \{x\}"
    assert latex.escape("✓") == r"\checkmark{}"
    assert latex.escape("λ1") == r"$\lambda_{1}$" and latex.escape("α") == r"$\alpha$"
    assert latex.escape("42.1 ± 0.2") == r"42.1 $\pm$ 0.2"
    assert latex.escape("a~b^c\\") == r"a\textasciitilde{}b\textasciicircum{}c\textbackslash{}"


def test_formats():
    assert parse_formats("md, TEX") == ("md", "tex")
    with pytest.raises(UserError, match="--format"):
        parse_formats("md,html")


def _record(cell: str, seed: int, value: float | None, status: str = "FINISHED") -> RunRecord:
    metrics_ = {} if value is None else {"mAP_e2e": value, "mAP_nms": value - 0.1}
    return RunRecord(
        run_id=f"{cell}-{seed}-{status}".ljust(32, "0"),
        cell=cell,
        stage="none",
        seed=seed,
        status=status,
        start_time=seed,
        metrics=metrics_,
        model_name=cell.split("-")[0],
    )


def test_constructed_table_marks():
    """Table 2 with constructed runs: a known Welch p-value, a within-noise row, a dash."""
    loaded = load_spec(ROOT / "sweeps" / "table2.yaml")
    runs = [
        *(_record("fcos_pss-stopgrad_false", s, v) for s, v in enumerate([1.0, 2.0, 3.0])),
        *(_record("fcos_pss-stopgrad_true", s, v) for s, v in enumerate([4.0, 5.0, 6.0])),
        _record("atss_pss-stopgrad_false", 0, 42.0),
        *(_record("atss_pss-stopgrad_true", s, v) for s, v in enumerate([41.8, 42.3, 42.1])),
        _record("atss_pss-stopgrad_false", 1, None, "RUNNING"),
    ]
    runs.sort(key=lambda r: -r.start_time)
    results = collect_cells(loaded, expand(loaded), runs)
    table = build_table(loaded, results)
    fcos_false, fcos_true = table.groups[0].rows
    assert fcos_false.cells[0].text == "2.0 ± 1.0 (n=3)"
    assert fcos_false.cells[0].marks == (SIGNIFICANT,)
    p = table.frame["mAP (%) end-to-end pred. (w/o NMS) p"]
    assert p[0] == pytest.approx(0.0213116, abs=1e-6) and np.isnan(p[1:]).all()
    assert fcos_true.cells[0].bold and not fcos_false.cells[0].bold
    assert fcos_true.cells[0].marks == ()  # the baseline itself
    atss_false = table.groups[1].rows[0]
    assert atss_false.cells[0].marks == (NOISE,) and atss_false.cells[0].text == "42.0"
    assert table.notes == ["atss_pss-stopgrad_false: seed 1 running (run atss_pss)"]
    assert atss_false.cells[0].notes == (1,)
    md = markdown.render(table)
    assert "2.0 ± 1.0 (n=3)†" in md and "42.0≈[1]" in md and "**5.0 ± 1.0 (n=3)**" in md
    assert "p < 0.05" in md and "Stop-grad = ✓" in md


def test_staged_cell_waits_for_its_first_stage():
    """Table 3: the two-step row reports stage2; a failed stage1 explains why it is missing."""
    loaded = load_spec(ROOT / "sweeps" / "table3.yaml")
    stage1 = RunRecord("f" * 32, "two_step", "stage1", 0, "FAILED", 2, {}, "atss")
    done = RunRecord("e" * 32, "end_to_end", "none", 0, "FINISHED", 1, {"mAP_e2e": 42.5})
    results = collect_cells(loaded, expand(loaded), [stage1, done], lambda run: "OSError: disk")
    assert [r.id for r in results] == ["end_to_end", "two_step"]
    assert results[0].mode == "e2e" and results[1].mode == "e2e"  # stage2 is atss_pss
    assert results[1].note() == (
        "two_step: not run yet (stage1 failed (run ffffffff): OSError: disk)"
    )
    table = build_table(loaded, results)
    assert [r.cells[0].text for r in table.groups[0].rows] == ["42.5", "–"]


def test_default_out_dir():
    from pss.report.build import default_out_dir

    assert default_out_dir("table5-smoke") == ROOT / "reports" / "out" / "table5-smoke"
