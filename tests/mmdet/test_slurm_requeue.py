"""A cell on mmdet's engine, preempted on a real SLURM cluster (slurm/dev), requeues and
resumes from mmengine's checkpoint in the same MLflow run."""

from __future__ import annotations

import json

import pytest
import submitit
from twins import REPO

from pss import contract
from pss.sweep.driver import main
from pss.sweep.server import stop_server
from pss.testing.slurm import (
    cancel_jobs_submitted_from,
    require_cluster,
    scontrol_job,
    wait_for_requeue,
)
from pss.testing.waiting import wait_for
from pss.tracking.logger import client, search_runs

pytestmark = pytest.mark.slurm
EXPERIMENT = "requeue-smoke-mmdet"
SPEC = """
name: requeue
base: {repo}/experiments/fcos_pss_r50_3x.yaml
smoke: {overlay}
engine: mmdet
smoke_overrides: {{eval.modes: [e2e, nms]}}
overrides: {{train.epochs: 3, train.iters_per_epoch: 3, train.lr_steps: [2]}}
cells:
  - id: preempted
"""


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    require_cluster()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    yield tmp_path
    cancel_jobs_submitted_from(tmp_path)
    stop_server(f"sqlite:///{tmp_path / 'mlflow.db'}")  # the server the sweep started


def _saved_epoch(folder, epoch: int) -> bool:
    """Some job saved epoch_<epoch>.pth whole (mmengine's last_checkpoint names it then)."""
    return any(
        p.read_text().strip().endswith(f"epoch_{epoch}.pth")
        for p in folder.glob("*/*/last_checkpoint")
    )


def test_a_preempted_mmdet_cell_requeues_and_resumes_in_its_run(workdir, tiny_overlay):
    spec = workdir / "requeue.yaml"
    spec.write_text(SPEC.format(repo=REPO, overlay=tiny_overlay))
    profile = str(REPO / "slurm" / "dev.yaml")
    argv = [str(spec), "--smoke", "--executor", "slurm", "--cluster", profile, "--no-report"]
    assert main([*argv, "--no-wait"]) == 0
    sweep = workdir / "outputs" / "sweeps" / EXPERIMENT
    entry = json.loads((sweep / "ledger.json").read_text())["preempted/s0"]

    # The event: epoch 1's checkpoint is whole on disk (2 epochs are still to train).
    wait_for(lambda: _saved_epoch(sweep, 1), "mmengine's first checkpoint")
    job = submitit.SlurmJob(folder=sweep / "submitit" / "%j", job_id=entry["job_id"])
    job._interrupt()  # what SLURM does before a preemption or timeout: USR2 to the job

    wait_for_requeue(entry["job_id"], sweep / "submitit")
    assert main(argv) == 0  # waits for the requeued job
    assert int(scontrol_job(entry["job_id"])["Restarts"]) == 1

    (run,) = search_runs(EXPERIMENT)
    assert run.info.status == contract.FINISHED
    assert run.data.tags[contract.TAG_ENGINE] == contract.MMDET
    assert run.data.tags[contract.TAG_RESUMED_FROM_EPOCH] in {"1", "2"}
    assert run.data.tags[contract.TAG_SLURM_JOB_ID] == str(entry["job_id"])
    for mode in ("e2e", "nms"):  # every epoch evaluated exactly once, across the requeue
        key = contract.metric_name(contract.MAP, mode)
        history = client().get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == [1, 2, 3], key
    assert _saved_epoch(sweep, 3)
