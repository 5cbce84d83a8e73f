"""Sweeps on a real one-node SLURM cluster (slurm/dev; `make test` starts it).

These tests need `SLURM_CONF` (from slurm/dev's env.sh): they fail, not skip, without it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
import submitit
import torch
from conftest import REPO, write_spec, write_tiny_overlay
from mlflow.tracking import MlflowClient

from pss.engine.checkpoint import load_checkpoint
from pss.sweep.cli import main
from pss.sweep.store import ensure_server
from pss.tracking import Tracker, search_runs

pytestmark = pytest.mark.slurm
# Jobs unpickle what they run; this module is not importable on the node, so send it by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])
PROFILE = str(REPO / "slurm" / "dev.yaml")


@pytest.fixture(autouse=True)
def cluster():
    assert os.environ.get("SLURM_CONF"), "run `bash slurm/dev/start.sh` and source its env.sh"
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip(), f"the SLURM cluster is not up: {out}"


@pytest.fixture
def workdir(tmp_path, monkeypatch, shapes_root):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    write_tiny_overlay(tmp_path / "overlay.yaml", shapes_root)
    return tmp_path


def ledger(workdir: Path, experiment: str) -> dict:
    return json.loads((workdir / "outputs/sweeps" / experiment / "ledger.json").read_text())


STAGED = """
name: onslurm
base: @EXP@/fcos_pss_r50_3x.yaml
smoke: overlay.yaml
cells:
  - id: pss
  - id: two_step
    stages:
      - {name: stage1, overrides: {model.name: fcos}}
      - name: stage2
        depends_on: [stage1]
        init_from: stage1
        overrides: {train.trainable: pss, train.epochs: 1, train.lr_steps: [1]}
"""


def test_sweep_runs_on_slurm_with_a_stage_dependency(workdir, capsys):
    spec = write_spec(workdir / "onslurm.yaml", STAGED)
    argv = [str(spec), "--smoke", "--executor", "slurm", "--cluster", PROFILE, "--no-report"]
    assert main(argv) == 0
    runs = search_runs("onslurm-smoke")
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}
    entries = ledger(workdir, "onslurm-smoke")
    for run in runs:
        key = run.data.tags["pss.cell"]
        if run.data.tags["pss.stage"] != "none":
            key += "@" + run.data.tags["pss.stage"]
        assert run.data.tags["pss.slurm_job_id"] == entries[f"{key}/s0"]["job_id"]
    stage1 = entries["two_step@stage1/s0"]["job_id"]
    assert entries["two_step@stage2/s0"]["depends_on"] == stage1
    # jobs on SLURM logged through the tracking server the sweep started on the store
    server = json.loads((workdir / ".mlflow.db.server.json").read_text())
    assert server["url"].startswith("http://")
    capsys.readouterr()
    assert main(["status", str(spec), "--smoke"]) == 0
    assert stage1 in capsys.readouterr().out


PREEMPT = """
name: preempt
base: @EXP@/fcos_pss_r50_3x.yaml
smoke: overlay.yaml
overrides: {train.epochs: 3, train.iters_per_epoch: 3, train.lr_steps: [2]}
cells:
  - id: steady
  - id: preempted
"""


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_preempted_job_requeues_resumes_and_matches_an_uninterrupted_run(workdir):
    spec = write_spec(workdir / "preempt.yaml", PREEMPT)
    argv = [str(spec), "--smoke", "--executor", "slurm", "--cluster", PROFILE, "--no-report"]
    assert main([*argv, "--no-wait"]) == 0
    entry = ledger(workdir, "preempt-smoke")["preempted/s0"]
    run_dir = workdir / "outputs/sweeps/preempt-smoke/preempted" / f"s0-{entry['fingerprint']}"
    ckpt = run_dir / "last.pth"

    def first_epoch_done():
        try:
            return ckpt.exists() and load_checkpoint(ckpt)["epoch"] >= 1
        except Exception:  # noqa: BLE001 - being written
            return False

    _wait_for(first_epoch_done, 240, "the first checkpoint")
    job = submitit.SlurmJob(folder=workdir / "outputs/sweeps/preempt-smoke/submitit/%j",
                            job_id=entry["job_id"])
    job._interrupt()  # what SLURM does before a preemption or timeout: USR2 to the job

    def requeued():
        out = subprocess.run(["squeue", "-h", "-r", "-j", entry["job_id"], "-o", "%T %r"],
                             capture_output=True, text=True).stdout
        return "PENDING" in out

    _wait_for(requeued, 120, "the requeue")
    subprocess.run(["scontrol", "update", f"JobId={entry['job_id']}", "StartTime=now"],
                   check=True)
    assert main(argv) == 0  # waits for both cells
    runs = {r.data.tags["pss.cell"]: r for r in search_runs("preempt-smoke")}
    assert runs["preempted"].data.tags["pss.resumed_from_epoch"] in {"1", "2"}
    assert "pss.resumed_from_epoch" not in runs["steady"].data.tags
    for key in ("mAP_e2e", "mAP_nms", "mAR_e2e", "loss"):
        assert runs["preempted"].data.metrics[key] == runs["steady"].data.metrics[key], key
    steady = next((workdir / "outputs/sweeps/preempt-smoke/steady").iterdir()) / "last.pth"
    a, b = load_checkpoint(steady)["model"], load_checkpoint(ckpt)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    history = MlflowClient().get_metric_history(runs["preempted"].info.run_id, "mAP_e2e")
    assert sorted({m.step for m in history}) == [1, 2, 3]


def _write_one_run(experiment: str, index: int, uri: str | None) -> int:
    if uri:
        os.environ["MLFLOW_TRACKING_URI"] = uri
    else:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    tracker = Tracker.create(experiment, f"writer-{index}", {"pss.cell": f"w{index}"})
    tracker.log_params({f"param_{k}": k * index for k in range(100)})
    for step in range(50):
        tracker.log_metrics({"a": step, "b": index, "c": step * index}, step=step)
    tracker.finish()
    return index


@pytest.mark.parametrize("store", ["default_local", "server"])
def test_eight_concurrent_slurm_jobs_lose_nothing(workdir, monkeypatch, store):
    if store == "default_local":
        monkeypatch.delenv("MLFLOW_TRACKING_URI")  # MLflow's own default: ./mlflow.db
        uri = None
        client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    else:
        uri = ensure_server(f"sqlite:///{workdir / 'served.db'}")
        client = MlflowClient(uri)
    executor = submitit.AutoExecutor(folder=workdir / "writers/%j", cluster="slurm")
    executor.update_parameters(slurm_partition="debug", cpus_per_task=1, mem_gb=1,
                               timeout_min=10, slurm_array_parallelism=8)
    with executor.batch():
        jobs = [executor.submit(_write_one_run, "writers", i, uri) for i in range(8)]
    # all eight were running at the same time at some point
    _wait_for(lambda: all(j.state in ("RUNNING", "COMPLETED") for j in jobs) or
              all(j.done() for j in jobs), 120, "the writers to start")
    assert sorted(j.result() for j in jobs) == list(range(8))
    exp = client.get_experiment_by_name("writers")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    assert len(runs) == 8 and {r.info.status for r in runs} == {"FINISHED"}
    for run in runs:
        index = int(run.data.tags["pss.cell"][1:])
        assert len(run.data.params) == 100
        assert run.data.params["param_7"] == str(7 * index)
        for name in ("a", "b", "c"):
            history = client.get_metric_history(run.info.run_id, name)
            assert sorted(m.step for m in history) == list(range(50)), (run.info.run_id, name)
