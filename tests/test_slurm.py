"""Sweeps on a real one-node SLURM cluster (slurm/dev; `make test` starts it).

These tests need `SLURM_CONF` (from slurm/dev's env.sh): they fail, not skip, without it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
import submitit
import torch
from mlflow.tracking import MlflowClient

from pss.engine.checkpoint import load_checkpoint
from pss.sweep.driver import main
from pss.sweep.server import ensure_server, stop_server
from pss.testing import REPO
from pss.testing.commands import run_command
from pss.testing.configs import write_spec, write_tiny_overlay
from pss.testing.slurm import (
    cancel_jobs_submitted_from,
    require_cluster,
    sacct,
    scontrol_job,
    wait_for_requeue,
)
from pss.testing.waiting import wait_for
from pss.tracking.logger import Tracker, search_runs
from pss.tracking.logger import client as tracking_client

pytestmark = pytest.mark.slurm
# Jobs unpickle what they run; this module is not importable on the node, so send it by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])
PROFILE = str(REPO / "slurm" / "dev.yaml")


@pytest.fixture(autouse=True)
def cluster():
    require_cluster()


@pytest.fixture
def workdir(tmp_path, monkeypatch, shapes_root):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    write_tiny_overlay(tmp_path / "overlay.yaml", shapes_root)
    yield tmp_path
    cancel_jobs_submitted_from(tmp_path)  # a failed test's jobs (never anybody else's)
    for store in tmp_path.glob("*.db"):  # the tracking servers the sweeps or the test started
        stop_server(f"sqlite:///{store}")


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


def ended(job_ids: list[str]) -> list[dict[str, str]]:
    """Wait until SLURM has recorded the end of every job (a job may still be exiting
    after its run is marked finished); their accounting records."""
    fields = ("JobID", "State", "Submit", "Eligible", "Start", "End")

    def recorded():
        records = sacct(job_ids, *fields)
        done = len(records) == len(job_ids) and all(r["End"][:1].isdigit() for r in records)
        return records if done else None

    return wait_for(recorded, f"SLURM to record the end of jobs {job_ids}", 600)


def test_sweep_runs_on_slurm_with_a_stage_dependency(workdir, capsys):
    spec = write_spec(workdir / "onslurm.yaml", STAGED)
    argv = [str(spec), "--smoke", "--executor", "slurm", "--cluster", PROFILE, "--no-report"]
    assert main([*argv, "--no-wait"]) == 0
    entries = ledger(workdir, "onslurm-smoke")
    stage1 = entries["two_step@stage1/s0"]["job_id"]
    stage2 = entries["two_step@stage2/s0"]["job_id"]
    # SLURM itself holds stage 2 back with an afterok dependency on stage 1 (which trains
    # for a while yet, so the dependency is still unfulfilled here).
    held = scontrol_job(stage2)
    assert held["Dependency"].startswith(f"afterok:{stage1}("), held["Dependency"]
    assert held["JobState"] == "PENDING", held
    assert main(argv) == 0  # waits for the three jobs
    runs = search_runs("onslurm-smoke")
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}
    for run in runs:
        key = run.data.tags["pss.cell"]
        if run.data.tags["pss.stage"] != "none":
            key += "@" + run.data.tags["pss.stage"]
        assert run.data.tags["pss.slurm_job_id"] == entries[f"{key}/s0"]["job_id"]
    # Accounting: stage 2, submitted before stage 1 ended, became eligible only after it.
    acct = {r["JobID"]: r for r in ended([stage1, stage2])}
    first, second = acct[stage1], acct[stage2]
    assert first["State"] == second["State"] == "COMPLETED", acct
    assert second["Submit"] < first["End"] <= second["Eligible"] <= second["Start"], acct
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

    # The event: epoch 1's checkpoint is on disk (2 epochs are still to train).
    wait_for(first_epoch_done, "the first checkpoint")
    job = submitit.SlurmJob(folder=workdir / "outputs/sweeps/preempt-smoke/submitit/%j",
                            job_id=entry["job_id"])
    job._interrupt()  # what SLURM does before a preemption or timeout: USR2 to the job

    wait_for_requeue(entry["job_id"], workdir / "outputs/sweeps/preempt-smoke/submitit")
    assert main(argv) == 0  # waits for both cells
    assert int(scontrol_job(entry["job_id"])["Restarts"]) == 1
    runs = {r.data.tags["pss.cell"]: r for r in search_runs("preempt-smoke")}
    assert runs["preempted"].data.tags["pss.resumed_from_epoch"] in {"1", "2"}
    assert "pss.resumed_from_epoch" not in runs["steady"].data.tags
    for key in ("mAP_e2e", "mAP_nms", "mAR_e2e", "loss"):
        assert runs["preempted"].data.metrics[key] == runs["steady"].data.metrics[key], key
    steady = next((workdir / "outputs/sweeps/preempt-smoke/steady").iterdir()) / "last.pth"
    a, b = load_checkpoint(steady)["model"], load_checkpoint(ckpt)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    client = MlflowClient()
    for name in ("mAP_e2e", "mAR_nms"):  # each epoch evaluated exactly once, same values
        got, want = (
            [(m.step, m.value) for m in client.get_metric_history(runs[c].info.run_id, name)]
            for c in ("preempted", "steady")
        )
        assert sorted(s for s, _ in got) == [1, 2, 3] and sorted(got) == sorted(want), name


WRITERS = 8


def _arrive(barrier: Path, name: str, index: int, timeout: float = 1500) -> None:
    """Wait until all writers reached this point (each leaves a file). The timeout only
    catches a hang (on a cluster shared with other jobs the last writers may wait for a
    free CPU a while)."""
    (barrier / f"{name}-{index}").touch()
    deadline = time.monotonic() + timeout
    while len(list(barrier.glob(f"{name}-*"))) < WRITERS:
        if time.monotonic() > deadline:
            raise TimeoutError(f"not all {WRITERS} writers reached '{name}' in {timeout} s")
        time.sleep(0.05)


def _write_one_run(experiment: str, index: int, env: dict[str, str], barrier: str) -> dict:
    """One SLURM job: a run with 100 params and 3 x 50 metric values, logged while the
    seven other writers log theirs. Returns its own clock readings around the writes."""
    if not env:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.update(env)
    tracker = Tracker.create(experiment, f"writer-{index}", {"pss.cell": f"w{index}"})
    _arrive(Path(barrier), "start", index)
    start = time.time()
    tracker.log_params({f"param_{k}": k * index for k in range(100)})
    for step in range(50):
        tracker.log_metrics({"a": step, "b": index, "c": step * index}, step=step)
        if step == 24:  # halfway: every writer is in the middle of its writes
            _arrive(Path(barrier), "half", index)
    tracker.finish()
    return {"index": index, "start": start, "end": time.time()}


@pytest.mark.parametrize("store", ["default_local", "server"])
def test_eight_concurrent_slurm_jobs_lose_nothing(workdir, monkeypatch, store):
    if store == "default_local":
        monkeypatch.delenv("MLFLOW_TRACKING_URI")  # MLflow's own default: ./mlflow.db
        env = {}
        client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    else:
        env = ensure_server(f"sqlite:///{workdir / 'served.db'}").env()  # URL and login
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        client = tracking_client()
    barrier = workdir / "barrier"
    barrier.mkdir()
    executor = submitit.AutoExecutor(folder=workdir / "writers/%j", cluster="slurm")
    executor.update_parameters(slurm_partition="debug", cpus_per_task=1, mem_gb=1,
                               timeout_min=40, slurm_array_parallelism=WRITERS)
    with executor.batch():
        jobs = [executor.submit(_write_one_run, "writers", i, env, str(barrier))
                for i in range(WRITERS)]
    results = [j.result() for j in jobs]  # waits for the jobs; a writer's failure raises
    assert sorted(r["index"] for r in results) == list(range(WRITERS))
    # All eight were writing at the same time: their writing intervals, measured by the
    # jobs themselves, share an instant; SLURM's records of the jobs agree.
    assert max(r["start"] for r in results) < min(r["end"] for r in results), results
    acct = ended([j.job_id for j in jobs])
    assert len(acct) == WRITERS and {r["State"] for r in acct} == {"COMPLETED"}, acct
    assert max(r["Start"] for r in acct) <= min(r["End"] for r in acct), acct
    # Nothing lost, nothing mixed up: every value of every run.
    exp = client.get_experiment_by_name("writers")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    assert len(runs) == WRITERS and {r.info.status for r in runs} == {"FINISHED"}
    assert sorted(r.data.tags["pss.cell"] for r in runs) == [f"w{i}" for i in range(WRITERS)]
    for run in runs:
        index = int(run.data.tags["pss.cell"][1:])
        assert run.data.params == {f"param_{k}": str(k * index) for k in range(100)}
        expected = {
            "a": [(s, float(s)) for s in range(50)],
            "b": [(s, float(index)) for s in range(50)],
            "c": [(s, float(s * index)) for s in range(50)],
        }
        for name, values in expected.items():
            history = client.get_metric_history(run.info.run_id, name)
            assert sorted((m.step, m.value) for m in history) == values, (index, name)


CALIBRATED = """
name: calslurm
base: @EXP@/fcos_pss_r50_3x.yaml
smoke: overlay.yaml
cells:
  - id: pss
"""


def test_calibration_as_a_job_of_the_profile(workdir, capsys):
    """``python -m pss.sweep.calibrate --executor slurm``, run as a person runs it: the
    timing is one job of the profile, its answer written beside the profile here."""
    spec = write_spec(workdir / "calslurm.yaml", CALIBRATED)
    profile = workdir / "dev.yaml"
    profile.write_text((REPO / "slurm" / "dev.yaml").read_text())
    argv = ["-m", "pss.sweep.calibrate", spec, "--smoke", "--cluster", profile]
    done = run_command([*argv, "--executor", "slurm", "--steps", "2", "--warmup", "1"], workdir)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "submitted SLURM job " in done.stderr
    written = profile.with_name("dev.calibration.json")
    assert done.stdout.strip() == f"wrote 1 shapes to {written}"
    (entry,) = json.loads(written.read_text()).values()
    assert entry["name"] == "pss" and entry["steps"] == 2 and entry["sec_per_iter"] > 0
    assert entry["device"].endswith("(1 threads)")  # the profile's cpus_per_task
    assert main([str(spec), "--smoke", "--cluster", str(profile), "--dry-run", "--json"]) == 0
    (job,) = json.loads(capsys.readouterr().out)
    assert job["cost_source"] == "measured" and job["gpu_hours"] > 0
