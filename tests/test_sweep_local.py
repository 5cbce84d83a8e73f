"""Sweeps run for real with submitit's local executor: idempotence, failures, stages."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pss.sweep.driver import main
from pss.testing import REPO
from pss.testing.configs import write_spec, write_tiny_overlay
from pss.tracking.logger import search_runs

SPEC = """
name: local
base: @EXP@/fcos_pss_r50_3x.yaml
smoke: overlay.yaml
cells:
  - id: pss
  - id: broken
    overrides: {data.root: BROKEN}
  - id: two_step
    stages:
      - {name: stage1, overrides: {model.name: fcos}}
      - name: stage2
        depends_on: [stage1]
        init_from: stage1
        overrides: {train.trainable: pss, train.epochs: 1, train.lr_steps: [1]}
"""


@pytest.fixture
def sweep(tmp_path, monkeypatch, shapes_root):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    write_tiny_overlay(tmp_path / "overlay.yaml", shapes_root)
    broken = tmp_path / "broken"
    shutil.copytree(shapes_root, broken)
    (broken / "annotations" / "val.json").write_text('{"images": [')  # truncated file
    spec = write_spec(tmp_path / "local.yaml", SPEC.replace("BROKEN", str(broken)))
    return spec, broken, shapes_root


def states(capsys, spec) -> dict[str, str]:
    capsys.readouterr()
    main(["status", str(spec), "--smoke"])
    out = capsys.readouterr().out
    table = out.split("\n\n")[0]  # the job table; the cost table follows a blank line
    rows = [line.split() for line in table.splitlines()[2:-1]]
    return {f"{r[0]}@{r[1]}": r[3] for r in rows}


def outputs_snapshot(root) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file under outputs/."""
    files = (root / "outputs").rglob("*")
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in files if p.is_file()}


def runs_snapshot(experiment: str) -> dict[str, tuple]:
    return {
        r.info.run_id: (r.info.status, r.info.end_time, len(r.data.metrics))
        for r in search_runs(experiment)
    }


def test_local_sweep_is_idempotent_and_resubmits_only_failed_cells(sweep, capsys):
    spec, broken, good = sweep
    argv = [str(spec), "--smoke", "--executor", "local", "--no-report"]
    assert main(argv) == 1  # the broken cell fails
    assert states(capsys, spec) == {
        "pss@-": "finished",
        "broken@-": "failed",
        "two_step@stage1": "finished",
        "two_step@stage2": "finished",
    }
    runs = search_runs("local-smoke")
    assert len(runs) == 4
    failed = [r for r in runs if r.info.status == "FAILED"]
    assert [r.data.tags["pss.cell"] for r in failed] == ["broken"]
    # stage 2 started from stage 1's checkpoint and trained only the PSS head
    stage2 = next(r for r in runs if r.data.tags["pss.stage"] == "stage2")
    assert stage2.data.params["train.trainable"] == "pss"
    assert stage2.data.params["train.init_from"].endswith("last.pth")
    assert "two_step@stage1" in stage2.data.params["train.init_from"]

    # Mend the data: the next run resubmits the failed cell only, in its old run.
    shutil.rmtree(broken)
    shutil.copytree(good, broken)
    assert main(argv) == 0
    assert "0 finished" not in (err := capsys.readouterr().err) and "1 to submit" in err
    runs = search_runs("local-smoke")
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    assert all(v == "finished" for v in states(capsys, spec).values())

    # A finished sweep submits nothing: no job starts, no file under outputs/ is written,
    # no run is created or touched.
    before_files, before_runs = outputs_snapshot(spec.parent), runs_snapshot("local-smoke")
    assert main(argv) == 0
    assert "0 to submit" in capsys.readouterr().err
    assert outputs_snapshot(spec.parent) == before_files
    assert runs_snapshot("local-smoke") == before_runs

    ledger = json.loads((spec.parent / "outputs/sweeps/local-smoke/ledger.json").read_text())
    assert set(ledger) == {"pss/s0", "broken/s0", "two_step@stage1/s0", "two_step@stage2/s0"}


TABLE = """
table:
  title: Tiny
  rows: [{key: cell, header: Cell}]
  columns:
    - title: mAP (%)
      columns: [{metric: mAP_e2e, label: w/o NMS}, {metric: mAP_nms, label: w/ NMS}]
"""


def test_debug_executor_runs_in_process_and_reports(sweep, capsys):
    spec, _, _ = sweep
    body = spec.read_text().split("  - id: broken")[0]
    spec.write_text(body + TABLE)
    assert main([str(spec), "--smoke", "--executor", "debug"]) == 0
    assert [r.info.status for r in search_runs("local-smoke")] == ["FINISHED"]
    out = capsys.readouterr().out
    assert "| pss " in out and "w/o NMS" in out  # the table, in the terminal
    report = spec.parent / "reports/out/local-smoke/REPORT.md"
    assert f"report: {report.relative_to(spec.parent)}" in out and report.is_file()
    assert f"detections of one cell: {report.parent.relative_to(spec.parent) / 'modes.png'}" in out
    # How to browse the runs: a command that works as printed, and the URL to open.
    serve = next(line for line in out.splitlines() if line.strip().startswith("serve:"))
    command = serve.split("serve:", 1)[1].split()
    assert Path(command[0]).is_file() and command[1:3] == ["ui", "--backend-store-uri"]
    assert command[3] == f"sqlite:///{spec.parent / 'mlflow.db'}"
    experiment = search_runs("local-smoke")[0].info.experiment_id
    url = next(line for line in out.splitlines() if line.strip().startswith("open:"))
    assert f"/#/experiments/{experiment}/runs?workflowType=machine_learning" in url
    assert "viewStateShareKey=" in url


def test_debug_executor_reports_a_failure_without_a_debugger(sweep):
    """A failing cell on the debug executor: the run FAILED, the summary, exit 1; no (Pdb)
    prompt (stdin closed, where pdb would read EOF and go on), no traceback."""
    spec, broken, _ = sweep
    only_broken = spec.read_text().replace("  - id: pss\n", "").split("  - id: two_step")[0]
    spec.write_text(only_broken)
    proc = subprocess.run(
        [sys.executable, str(REPO / "sweeps" / "run.py"), str(spec), "--smoke",
         "--executor", "debug", "--no-report"],
        cwd=spec.parent, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert "(Pdb)" not in out and "Traceback" not in out, out[-3000:]
    assert "broken/s0 failed: " in proc.stderr and str(broken) in proc.stderr, out[-3000:]
    assert "1 failed" in proc.stdout or "failed" in proc.stdout.splitlines()[-1], out[-3000:]
    assert [r.info.status for r in search_runs("local-smoke")] == ["FAILED"]
