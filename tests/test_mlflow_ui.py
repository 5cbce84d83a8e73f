"""MLflow's UI on a sweep: the saved view's columns and charts, the printed command and URL,
and the real UI (``mlflow ui`` and headless Chromium) opening the runs table of the
model-training view with the table's metrics as columns."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from pss.sweep.schema import load_spec
from pss.testing import REPO
from pss.testing.mlflow_runs import seed_runs, synthetic_runs
from pss.tracking import ui as mlflow_ui
from pss.tracking.logger import experiment_id

TABLE5 = REPO / "sweeps" / "table5.yaml"
FIG3 = REPO / "sweeps" / "fig3.yaml"


def test_table_view_lists_row_keys_and_table_metrics():
    params, metrics = mlflow_ui.view_columns(load_spec(TABLE5))
    assert params == ["model.name", "model.pss.num_convs"]
    assert metrics == ["mAP_e2e", "gpu_hours", "mAP_nms", "mAR_e2e", "mAR_nms"]


def test_the_view_opens_on_the_primary_metric_and_gpu_hours():
    table1 = load_spec(REPO / "sweeps" / "table1.yaml")
    assert mlflow_ui.primary_metrics(table1) == ["mAP_e2e", "mAP_nms", "gpu_hours"]
    state = mlflow_ui.view_state(table1)
    assert [c["metricKey"] for c in state["compareRunCharts"]][:3] == [
        "mAP_e2e", "mAP_nms", "gpu_hours"
    ]
    assert mlflow_ui.primary_metrics(load_spec(FIG3)) == ["mAP_e2e", "gpu_hours"]
    search = load_spec(REPO / "sweeps" / "search_pss_loss.yaml")
    assert mlflow_ui.primary_metrics(search)[-1] == "gpu_hours"
    assert mlflow_ui.view_columns(search)[1][0] == search.spec.search.metric


def test_mode_placeholder_stands_for_both_modes(tmp_path):
    params, metrics = mlflow_ui.view_columns(load_spec(REPO / "sweeps" / "table1.yaml"))
    assert "mAP_e2e" in metrics and "mAP_nms" in metrics
    assert not any("{mode}" in m for m in metrics)


def test_view_state_charts_the_table_metrics_first_in_one_section():
    state = mlflow_ui.view_state(load_spec(TABLE5))
    charts = state["compareRunCharts"]
    assert [c["metricKey"] for c in charts] == [
        "mAP_e2e", "gpu_hours", "mAP_nms", "mAR_e2e", "mAR_nms"
    ]
    assert {c["type"] for c in charts} == {"BAR"}
    (section,) = state["compareRunSections"]
    assert {c["metricSectionId"] for c in charts} == {section["uuid"]}
    assert section["name"] == "Table 5: conv layers in the PSS head"
    assert state["selectedColumns"][:2] == ["params.`model.name`", "params.`model.pss.num_convs`"]
    assert "metrics.`mAP_e2e`" in state["selectedColumns"]


def test_figure_metric_is_a_line_chart():
    state = mlflow_ui.view_state(load_spec(FIG3))
    chart, hours = state["compareRunCharts"]
    assert chart["type"] == "LINE" and chart["metricKey"] == "mAP_e2e"
    assert hours["type"] == "BAR" and hours["metricKey"] == "gpu_hours"


def test_tags_hold_the_model_training_kind_and_a_named_saved_view():
    tags = mlflow_ui.view_tags(load_spec(TABLE5), now_ms=123)
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    envelope = json.loads(tags["mlflow.sharedViewState.pss-table5"])
    assert envelope["name"] == "Table 5: conv layers in the PSS head"
    assert envelope["createdAt"] == envelope["updatedAt"] == 123
    assert json.loads(envelope["state"]) == mlflow_ui.view_state(load_spec(TABLE5))


def test_new_experiments_are_tagged_model_training(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = experiment_id("fresh", client)
    assert client.get_experiment(exp).tags["mlflow.experimentKind"] == "custom_model_development"


def test_hint_is_a_command_that_works_without_the_venv_and_the_url_to_open():
    hint = mlflow_ui.ui_hint("sqlite:////data/mlflow.db", "7", "pss-table5")
    serve, url, charts = (line.split(":", 1)[1].strip() for line in hint.splitlines())
    assert charts == url + "&compareRunsMode=CHART"
    executable = serve.split()[0]
    assert Path(executable).is_absolute() and os.access(executable, os.X_OK)
    assert serve.endswith("ui --backend-store-uri sqlite:////data/mlflow.db --port 5000")
    assert url == (
        "http://127.0.0.1:5000/#/experiments/7/runs?"
        "workflowType=machine_learning&viewStateShareKey=pss-table5"
    )
    server = mlflow_ui.ui_hint("http://tracking:5000", "7", None)
    assert server == (
        "  open:   http://tracking:5000/#/experiments/7/runs?workflowType=machine_learning"
    )


def test_the_printed_executable_serves_the_ui():
    out = subprocess.run(
        [str(mlflow_ui.mlflow_executable()), "ui", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"},
    )
    assert out.returncode == 0 and "--backend-store-uri" in out.stdout


@pytest.mark.slow
def test_browser_opens_the_runs_table_with_the_table_metrics(tmp_path):
    """A real store, `mlflow ui` and headless Chromium: with the printed URL the runs table
    of the model-training view shows the table's metric columns; MLflow's own default
    (no URL parameters) is the GenAI overview, without them. Screenshots: tmp_path/shots."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    loaded = load_spec(TABLE5)
    seed_runs(client, "table5-smoke", synthetic_runs(loaded, smoke=True), tmp_path / "art")
    exp = client.get_experiment_by_name("table5-smoke").experiment_id
    out = subprocess.run(
        [sys.executable, "-m", "pss.tracking.ui", str(TABLE5), "--smoke", "--screenshots",
         str(tmp_path / "shots")],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"#/experiments/{exp}/runs?workflowType=machine_learning" in out.stdout
    for name in ("runs.png", "charts.png", "compare.png"):
        with Image.open(tmp_path / "shots" / name) as image:
            assert image.size == mlflow_ui.WINDOW
    tags = client.get_experiment(exp).tags
    assert "mlflow.sharedViewState.pss-table5" in tags

    with mlflow_ui.served(uri) as base:
        ours = mlflow_ui.page_dom(mlflow_ui.runs_url(base, exp, "pss-table5"))
        default = mlflow_ui.page_dom(f"{base}/#/experiments/{exp}")
    assert "fcos_pss-convs1" in ours and "mAP_nms" in ours and "mAR_e2e" in ours
    assert "Overview" in default and "mAP_nms" not in default
