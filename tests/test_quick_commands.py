"""The sweep CLI's quick commands stay light: `status`, `--dry-run --json`, a re-run of a
finished sweep and `reports/make_tables.py` never import torch (or MLflow's client), and
reading the store directly gives what MLflow's own search gives, consistently while
other processes write to it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pss.report.collect import fetch_runs
from pss.sweep.schema import load_spec
from pss.testing import REPO
from pss.testing.mlflow_runs import FakeRun, seed_runs, synthetic_runs
from pss.tracking.store import current_uri, metric_history, read_runs
from pss.tracking.ui import publish_view

TABLE5 = REPO / "sweeps" / "table5.yaml"

# Runs the command in this process, then says which heavy modules it loaded.
PROBE = textwrap.dedent(
    """
    import io, json, sys, contextlib
    sys.argv = [sys.argv[0]]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        if {report!r}:
            from pss.report.cli import main
        else:
            from pss.sweep.driver import main
        code = main({argv!r})
    heavy = ["torch", "torchvision", "mlflow", "optuna", "scipy.stats", "matplotlib", "pandas"]
    print(json.dumps({{"code": code, "loaded": [m for m in heavy if m in sys.modules],
                       "out": out.getvalue()}}))
    """
)


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory) -> Path:
    """A folder whose store holds a FINISHED run for every job of Table 5's smoke sweep,
    and the saved view the sweep published when it ended."""
    root = tmp_path_factory.mktemp("finished")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    loaded = load_spec(TABLE5)
    client = MlflowClient(uri)
    seed_runs(client, "table5-smoke", synthetic_runs(loaded, smoke=True),
              artifact_root=root / "artifacts")
    publish_view(client, client.get_experiment_by_name("table5-smoke").experiment_id, loaded)
    return root


def probe(folder: Path, argv: list[str], report: bool = False) -> dict:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}"}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(argv=argv, report=report)],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("argv", "report"),
    [
        (["status", str(TABLE5), "--smoke"], False),
        ([str(TABLE5), "--smoke", "--dry-run", "--json"], False),
        ([str(TABLE5), "--smoke", "--executor", "local"], False),  # nothing left to do
        ([str(TABLE5), "--smoke", "--format", "md"], True),
    ],
    ids=["status", "dry-run", "re-run", "make_tables"],
)
def test_quick_commands_import_neither_torch_nor_mlflow(finished_sweep, argv, report):
    result = probe(finished_sweep, argv, report)
    assert result["code"] == 0, result
    builds_report = report or "--executor" in argv  # the re-run ends with the report
    assert result["loaded"] == (["pandas"] if builds_report else []), result["loaded"]
    out = result["out"]
    if report:
        assert "| FCOS_PSS |" in out
    elif "--dry-run" in argv:
        assert len(json.loads(out)) == 6
    else:  # status and the re-run read the six finished runs
        assert "6 finished" in out
    if "--executor" in argv:  # the re-run ends with how to open the runs
        assert "runs?workflowType=machine_learning&viewStateShareKey=" in out


def test_reading_the_store_equals_mlflow_search(finished_sweep):
    uri = f"sqlite:///{finished_sweep / 'mlflow.db'}"
    direct = read_runs("table5-smoke", uri, params=["model.name"])
    through = read_runs("table5-smoke", uri, params=["model.name"], client=MlflowClient(uri))
    assert len(direct) == 6 and direct == through
    assert read_runs("no-such-experiment", uri) == []
    assert fetch_runs("table5-smoke", uri=uri) == fetch_runs("table5-smoke", MlflowClient(uri))


def test_metric_history_equals_mlflow(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    fake = FakeRun(cell="c", history={"mAP_e2e": [1.0, 2.0, float("nan"), 4.0]})
    (run_id,) = seed_runs(MlflowClient(uri), "h", [fake], artifact_root=tmp_path / "a")
    direct = metric_history(uri, [run_id], "mAP_e2e")[run_id]
    through = metric_history(uri, [run_id], "mAP_e2e", client=MlflowClient(uri))[run_id]
    assert [s for s, _ in direct] == [1, 2, 3, 4] == [s for s, _ in through]
    assert str(direct) == str(through)  # nan compares unequal; its text does not


def test_reading_never_creates_a_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert read_runs("table5") == []
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("legacy", [False, True])
def test_current_uri_is_mlflows(tmp_path, monkeypatch, legacy):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    if legacy:  # an old file store: MLflow keeps using it
        (tmp_path / "mlruns" / "0").mkdir(parents=True)
        (tmp_path / "mlruns" / "0" / "meta.yaml").write_text("name: Default\n")
    code = "import mlflow; print(mlflow.get_tracking_uri())"
    mlflows = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert current_uri() == mlflows
    assert legacy or current_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example:5000")
    assert current_uri() == "http://example:5000"


WRITER = textwrap.dedent(
    """
    import sys
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient
    client = MlflowClient(sys.argv[1])
    exp = client.get_experiment_by_name("busy").experiment_id
    names = [f"m{k}" for k in range(40)]
    for i in range(int(sys.argv[2])):
        run = client.create_run(exp, tags={"pss.cell": f"c{i}", "pss.seed": "0"})
        rid = run.info.run_id
        half = len(names) // 2
        client.log_batch(rid, metrics=[Metric(n, i, 0, 1) for n in names[:half]])
        client.log_batch(rid, metrics=[Metric(n, i, 0, 1) for n in names[half:]])
        client.set_terminated(rid, "FINISHED")
    """
)


def test_reads_while_others_write_see_whole_runs_or_none(tmp_path):
    """A writer logs runs (tags, two metric batches, FINISHED) while we read the store:
    every read is a snapshot in which each finished run is whole."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri).create_experiment("busy")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, uri, "60"])
    reads, seen = 0, set()
    try:
        while writer.poll() is None or reads < 3:
            runs = read_runs("busy", uri)
            reads += 1
            for run in runs:
                seen.add(len(runs))
                assert run.tags.get("pss.cell"), run  # created with its tags in one step
                if run.status == "FINISHED":
                    assert len(run.metrics) == 40, (run.run_id, sorted(run.metrics))
                else:  # RUNNING: none, one or both batches, never a partial batch
                    assert len(run.metrics) in (0, 20, 40), (run.run_id, sorted(run.metrics))
    finally:
        writer.kill()
        writer.wait()
    final = read_runs("busy", uri)
    assert len(final) == 60 and {r.status for r in final} == {"FINISHED"}
    assert len(seen) > 1  # the reads did overlap the writing
