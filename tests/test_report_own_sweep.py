"""A user's own 4-cell sweep through the real report (issue 26, point 6): one row per
cell, so no row groups: no bold, no legend line about bold, no LaTeX rule between rows;
a baseline's empty end-to-end value says why (no PSS head) rather than 'not logged'."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pss.report import make_report
from pss.testing import REPO
from pss.testing.mlflow_runs import FakeRun, seed_runs

SPEC = f"""\
name: own4
description: a user's own four cells
base: {REPO}/experiments/fcos_pss_r50_3x.yaml
cells:
  - {{id: fcos, overrides: {{model.name: fcos}}}}
  - {{id: fcos_pss-c1, overrides: {{model.name: fcos_pss, model.pss.num_convs: 1}}}}
  - {{id: fcos_pss-c2, overrides: {{model.name: fcos_pss, model.pss.num_convs: 2}}}}
  - {{id: atss, overrides: {{model.name: atss}}}}
table:
  title: "Own cells"
  caption: "Four cells."
  rows:
ROWS
  columns:
    - title: mAP (%)
      columns:
        - {{metric: mAP_e2e, label: w/o NMS}}
        - {{metric: mAP_nms, label: w/ NMS}}
"""
ONE_ROW_EACH = "    - {key: cell, header: Cell}"
BY_MODEL = "    - {key: model.name, header: Model}\n" + ONE_ROW_EACH


@pytest.fixture()
def report(tmp_path: Path, monkeypatch) -> Path:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    spec = tmp_path / "own4.yaml"
    spec.write_text(SPEC.replace("ROWS", ONE_ROW_EACH))
    runs = [
        FakeRun(cell="fcos", params={"model.name": "fcos"}, metrics={"mAP_nms": 40.1}),
        FakeRun(
            cell="fcos_pss-c1",
            params={"model.name": "fcos_pss"},
            metrics={"mAP_e2e": 40.5, "mAP_nms": 40.7},
        ),
        FakeRun(
            cell="fcos_pss-c2",
            params={"model.name": "fcos_pss"},
            metrics={"mAP_nms": 40.9},  # e2e not logged: a PSS model's gap, said as such
        ),
        FakeRun(cell="atss", params={"model.name": "atss"}, metrics={"mAP_nms": 41.0}),
    ]
    seed_runs(MlflowClient(uri), "own4", runs, artifact_root=tmp_path / "artifacts")
    out = tmp_path / "out"
    make_report(spec, out_dir=out, formats="md,tex")
    return out


def test_no_groups_no_bold_and_no_rules_between_rows(report: Path):
    md = (report / "own4.md").read_text()
    tex = (report / "own4.tex").read_text()
    assert "**" not in md and r"\textbf" not in tex
    assert "Bold:" not in md and "Bold:" not in tex
    body = tex.split(r"\midrule", 1)[1].split(r"\bottomrule")[0]  # below the header's rule
    assert r"\midrule" not in body and body.count(r"\\") == 4


def test_baseline_e2e_is_footnoted_no_pss_head(report: Path):
    md = (report / "own4.md").read_text()
    notes = dict(re.findall(r"^- \[(\d+)\] (.*)$", md, flags=re.M))
    assert "no PSS head: NMS only" in notes.values()
    head = next(n for n, text in notes.items() if text == "no PSS head: NMS only")
    for cell in ("fcos", "atss"):
        row = next(line for line in md.splitlines() if line.startswith(f"| {cell} "))
        assert f"–[{head}]" in row
        assert f"{cell}: mAP_e2e not logged" not in md
    assert "fcos_pss-c2: mAP_e2e not logged" in md  # a PSS model's gap stays a gap


def test_groups_keep_bold_and_rules(tmp_path: Path, monkeypatch):
    """Two cells in one group: bold, its legend line, and a rule between two groups."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    spec = tmp_path / "own4.yaml"
    spec.write_text(SPEC.replace("ROWS", BY_MODEL))
    runs = [
        FakeRun(cell=c, params={"model.name": m}, metrics={"mAP_nms": v, "mAP_e2e": v})
        for c, m, v in [("fcos", "fcos", 40.0), ("fcos_pss-c1", "fcos_pss", 40.5),
                        ("fcos_pss-c2", "fcos_pss", 40.9), ("atss", "atss", 41.0)]
    ]
    seed_runs(MlflowClient(uri), "own4", runs, artifact_root=tmp_path / "artifacts")
    make_report(spec, out_dir=tmp_path / "out", formats="md,tex")
    md = (tmp_path / "out" / "own4.md").read_text()
    tex = (tmp_path / "out" / "own4.tex").read_text()
    assert "**40.9**" in md and "Bold: the best value of its group" in md
    assert tex.count(r"\midrule") == 3  # under the header, and between the three groups
