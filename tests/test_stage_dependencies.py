"""A stage's `depends_on` is enforced whether or not the stage initialises from another:
locally it starts only after the stages it depends on finished (and not at all when one
failed); on SLURM it is submitted with an `afterok` dependency on them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pss.sweep.driver import main
from pss.sweep.server import stop_server
from pss.testing import REPO
from pss.testing.configs import write_spec, write_tiny_overlay
from pss.tracking.logger import search_runs

SPEC = """
name: deps
base: @EXP@/fcos_pss_r50_3x.yaml
smoke: overlay.yaml
cells:
  - id: chain
    stages:
      - {name: first, overrides: {model.name: fcos}}
      - {name: second, depends_on: [first], overrides: {model.name: fcos}}
  - id: broken
    stages:
      - {name: first, overrides: {data.root: BROKEN}}
      - {name: second, depends_on: [first]}
"""


@pytest.fixture
def sweep(tmp_path, monkeypatch, shapes_root) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    write_tiny_overlay(tmp_path / "overlay.yaml", shapes_root)
    broken = tmp_path / "broken"
    shutil.copytree(shapes_root, broken)
    (broken / "annotations" / "val.json").write_text('{"images": [')  # truncated file
    return write_spec(tmp_path / "deps.yaml", SPEC.replace("BROKEN", str(broken)))


def ledger(experiment: str) -> dict:
    return json.loads((Path("outputs/sweeps") / experiment / "ledger.json").read_text())


def test_dry_run_lists_the_dependency_without_init_from(sweep, capsys):
    assert main([str(sweep), "--smoke", "--dry-run", "--json"]) == 0
    jobs = {(j["cell"], j["stage"]): j for j in json.loads(capsys.readouterr().out)}
    assert jobs[("chain", "second")]["depends_on"] == ["chain"]
    assert jobs[("chain", "first")]["depends_on"] == []


def test_local_stage_waits_for_the_stage_it_depends_on(sweep, caplog):
    argv = [str(sweep), "--smoke", "--executor", "local", "--max-parallel", "2", "--no-report"]
    assert main(argv) == 1  # broken@first fails, so broken@second never runs
    runs = {r.info.run_name: r for r in search_runs("deps-smoke")}
    entries = ledger("deps-smoke")

    first, second = runs["chain@first"], runs["chain@second"]
    assert first.info.status == second.info.status == "FINISHED"
    # Two jobs could run at once, yet the second stage started after the first ended.
    assert entries["chain@second/s0"]["submitted"] * 1000 >= first.info.end_time
    # Two jobs at a time on this machine: each got its share of the cores as threads.
    share = max(1, len(os.sched_getaffinity(0)) // 2)
    logs = [p.read_text() for p in Path("outputs/sweeps/deps-smoke/submitit").rglob("*_log.err")]
    assert logs and all(f": {share} threads" in text for text in logs), logs

    assert runs["broken@first"].info.status == "FAILED"
    dropped = runs["broken@second"]
    assert dropped.info.status == "FAILED"
    assert entries["broken@second/s0"]["job_id"] is None  # never given a job
    text = MlflowClient().download_artifacts(dropped.info.run_id, "traceback.txt")
    assert "not started: broken@first/s0 failed" in Path(text).read_text()
    assert "broken@second/s0 not started: broken@first/s0 failed" in caplog.text


@pytest.mark.slurm
def test_slurm_stage_gets_an_afterok_dependency_without_init_from(sweep, capsys):
    assert os.environ.get("SLURM_CONF"), "run `bash slurm/dev/start.sh` and source its env.sh"
    profile = str(REPO / "slurm" / "dev.yaml")
    argv = [str(sweep), "--smoke", "--executor", "slurm", "--cluster", profile, "--no-wait"]
    assert main(argv) == 0
    entries = ledger("deps-smoke")
    ids = [str(e["job_id"]) for e in entries.values()]
    try:
        for cell in ("chain", "broken"):
            parent = str(entries[f"{cell}@first/s0"]["job_id"])
            child = str(entries[f"{cell}@second/s0"]["job_id"])
            shown = subprocess.run(
                ["scontrol", "show", "job", child], capture_output=True, text=True, check=True
            ).stdout
            dependency = next(w for w in shown.split() if w.startswith("Dependency="))
            assert dependency.startswith(f"Dependency=afterok:{parent}"), shown
    finally:
        subprocess.run(["scancel", *ids], capture_output=True)
        stop_server(f"sqlite:///{Path.cwd() / 'mlflow.db'}")  # the SLURM jobs' server
