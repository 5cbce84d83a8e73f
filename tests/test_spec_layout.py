"""A spec's table and figure layout is validated with the rest of the spec, before anything
is submitted: a malformed `table:` or `figure:` block exits 2 with one line at submission
time (and for --dry-run and status), with no run logged and no job submitted."""

from __future__ import annotations

import pytest

from pss.sweep.driver import main
from pss.testing.configs import write_spec

SPEC = """
name: layout
base: @EXP@/fcos_pss_r50_3x.yaml
grid:
  model.name: [fcos_pss, atss_pss]
  model.pss.num_convs: [1, 2]
grid_id: "{model.name}-c{model.pss.num_convs}"
"""
TABLE = """
table:
  title: T
  rows:
    - {key: model.name, header: Model}
    - {key: model.pss.num_convs, header: Convs}
  columns:
    - title: mAP (%)
      columns:
        - {metric: mAP_e2e, label: w/o NMS}
        - {metric: "mAP_{mode}", label: primary}
  baseline: {model.pss.num_convs: 2}
  reference_rows:
    - {labels: [DeFCN, "-"], values: {mAP_e2e: 41.5}, after: fcos_pss-c2}
"""
FIGURE = """
figure:
  title: F
  metric: mAP_e2e
  panels: model.name
  series: model.pss.num_convs
"""

BAD = {
    "unknown_metric": (
        TABLE.replace("metric: mAP_e2e", "metric: mAP_e2ee"),
        "table.columns.0.columns.0.metric: unknown metric 'mAP_e2ee' (did you mean 'mAP_e2e'?)",
    ),
    "unknown_row_key": (
        TABLE.replace("key: model.pss.num_convs", "key: model.pss.numconvs"),
        "table.rows.1.key: 'model.pss.numconvs' is not a cell id, override or label",
    ),
    "baseline_matches_nothing": (
        TABLE.replace("baseline: {model.pss.num_convs: 2}", "baseline: {model.pss.num_convs: 7}"),
        "table.baseline: no cell has",
    ),
    "reference_row_after_unknown_cell": (
        TABLE.replace("after: fcos_pss-c2", "after: fcos_pss-c9"),
        "table.reference_rows.0.after: unknown cell 'fcos_pss-c9'",
    ),
    "reference_row_labels": (
        TABLE.replace('labels: [DeFCN, "-"]', "labels: [DeFCN]"),
        "table.reference_rows.0.labels: expected 2 labels",
    ),
    "table_schema": (TABLE.replace("header: Convs", "hedaer: Convs"), "unknown key"),
    "figure_metric": (
        FIGURE.replace("metric: mAP_e2e", "metric: mAP_{mode}"),
        "figure.metric: unknown metric",
    ),
    "figure_series": (
        FIGURE.replace("series: model.pss.num_convs", "series: model.pss.convs"),
        "figure.series: 'model.pss.convs' is not a cell id, override or label",
    ),
}


def test_a_well_formed_layout_passes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path / "good.yaml", SPEC + TABLE + FIGURE)
    assert main([str(spec), "--dry-run"]) == 0
    assert "fcos_pss-c2" in capsys.readouterr().out


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_malformed_layout_exits_2_before_anything_runs(case, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    block, expected = BAD[case]
    (tmp_path / "specs").mkdir()
    spec = write_spec(tmp_path / "specs" / f"{case}.yaml", SPEC + block)
    for argv in (
        [str(spec), "--executor", "local", "--no-wait"],
        [str(spec), "--dry-run", "--json"],
        ["status", str(spec)],
    ):
        assert main(argv) == 2
        captured = capsys.readouterr()
        err = captured.err.strip()
        assert captured.out == ""
        assert err.startswith(f"error: {spec}: "), err
        assert expected in err, err
        assert len(err.splitlines()) == 1, err
    # Nothing submitted or logged: no store, no sweep folder, no outputs.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["specs"]
