"""Multi-task SLURM jobs: a profile with `tasks_per_node: 2` runs each cell as a two-task
submitit job (two DDP ranks, gloo on the CPU, ranks from submitit's job environment);
the sweep ends with one MLflow run per cell, and a preempted two-task job requeues and
resumes to the metrics and weights of an uninterrupted one.

Real parts: the one-node SLURM cluster of slurm/dev, real processes per rank.
"""

from __future__ import annotations

import json
import subprocess

import pytest
import submitit
import torch
from mlflow.tracking import MlflowClient

from pss.engine.checkpoint import load_checkpoint
from pss.sweep.driver import main
from pss.sweep.server import stop_server
from pss.testing.configs import write_spec, write_tiny_overlay
from pss.testing.slurm import wait_for_requeue
from pss.testing.waiting import wait_for
from pss.tracking.logger import search_runs

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

PROFILE = """
partition: debug
gpus_per_node: 0
tasks_per_node: 2     # two ranks per job
cpus_per_task: 1
mem_gb: 4
timeout_min: 30
array_parallelism: 8
max_requeues: 3
"""
SPEC = """
name: twotask
base: @EXP@/fcos_pss_r50_3x.yaml
smoke: overlay.yaml
# GroupNorm: trainable BatchNorm cannot be synchronised across CPU ranks (refused).
overrides: {model.backbone.norm: gn, train.epochs: 3, train.iters_per_epoch: 3,
            train.lr_steps: [2]}
cells:
  - id: steady
  - id: preempted
"""


def test_two_task_jobs_train_one_run_per_cell_and_resume_after_preemption(
    tmp_path, monkeypatch, shapes_root
):
    monkeypatch.chdir(tmp_path)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    write_tiny_overlay(tmp_path / "overlay.yaml", shapes_root)
    spec = write_spec(tmp_path / "twotask.yaml", SPEC)
    (tmp_path / "twotask-profile.yaml").write_text(PROFILE)
    argv = [str(spec), "--smoke", "--executor", "slurm", "--cluster",
            str(tmp_path / "twotask-profile.yaml"), "--no-report"]
    folder = tmp_path / "outputs/sweeps/twotask-smoke"
    try:
        assert main([*argv, "--no-wait"]) == 0
        entry = json.loads((folder / "ledger.json").read_text())["preempted/s0"]
        ckpt = folder / "preempted" / f"s0-{entry['fingerprint']}" / "last.pth"

        def first_epoch_done() -> bool:
            try:
                return ckpt.exists() and load_checkpoint(ckpt)["epoch"] >= 1
            except Exception:  # noqa: BLE001 - being written
                return False

        wait_for(first_epoch_done, "the first checkpoint")
        job = submitit.SlurmJob(folder=folder / "submitit/%j", job_id=entry["job_id"],
                                tasks=(0, 1))
        job._interrupt()  # what SLURM does before a preemption: USR2 to the job

        wait_for_requeue(entry["job_id"], folder / "submitit")
        assert main(argv) == 0  # waits for both cells

        runs = {r.data.tags["pss.cell"]: r for r in search_runs("twotask-smoke")}
        assert sorted(runs) == ["preempted", "steady"]  # one run per cell, rank 0's
        assert runs["preempted"].data.tags["pss.resumed_from_epoch"] in {"1", "2"}
        for key in ("mAP_e2e", "mAP_nms", "loss"):
            assert runs["preempted"].data.metrics[key] == runs["steady"].data.metrics[key]
        client = MlflowClient()
        for cell in runs:  # each epoch evaluated (and logged) exactly once
            history = client.get_metric_history(runs[cell].info.run_id, "mAP_e2e")
            assert sorted(m.step for m in history) == [1, 2, 3], cell
        steady = next((folder / "steady").iterdir()) / "last.pth"
        a, b = load_checkpoint(steady)["model"], load_checkpoint(ckpt)["model"]
        assert all(torch.equal(a[k], b[k]) for k in a)
        # Both tasks of each job ran (one log per rank) and joined one group of two.
        for cell in runs:
            job_id = runs[cell].data.tags["pss.slurm_job_id"]
            logs = sorted(p.name for p in (folder / "submitit" / job_id).glob("*_log.err"))
            assert logs == [f"{job_id}_0_log.err", f"{job_id}_1_log.err"], logs
            text = (folder / "submitit" / job_id / f"{job_id}_1_log.err").read_text()
            assert "process group: rank 1 of 2" in text, text[-2000:]
    finally:
        ledger = folder / "ledger.json"
        if ledger.is_file():
            ids = [str(e["job_id"]) for e in json.loads(ledger.read_text()).values()]
            subprocess.run(["scancel", *ids], capture_output=True)
        stop_server(store)
