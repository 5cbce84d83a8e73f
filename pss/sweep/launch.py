"""Submitting a sweep's jobs: open their MLflow runs, then hand them to SLURM or a local queue.

    queue = submit_jobs(loaded, todo, states, ledger, "slurm", profile, smoke=False)

Imported by :func:`pss.sweep.submit.run_sweep` only when a sweep has jobs to
submit: this is the part that needs MLflow's client and submitit, so status
queries and re-runs of a finished sweep never load them. On SLURM, jobs that
wait for nothing go out as one job array (``array_parallelism`` at a time) and
a stage that waits for others gets an ``afterok`` dependency on them; the
local and debug executors get a :class:`~pss.sweep.executors.LocalQueue` that
the driver runs, in dependency order.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from pss import contract
from pss.contract import SCHEDULED
from pss.sweep.executors import LocalQueue, cancel_slurm, make_executor, slurm_executor
from pss.sweep.profile import ClusterProfile, effective_resources
from pss.sweep.spec import Job, LoadedSpec, Resources, all_cells
from pss.sweep.state import DEPENDENCY_FAILED, FINISHED_S, JobState, Ledger
from pss.sweep.store import uri_for_jobs
from pss.sweep.worker import CellJob, Payload
from pss.tracking import Tracker, retry

log = logging.getLogger(__name__)


def logs_folder(profile: ClusterProfile, experiment: str) -> Path:
    """Where submitit writes jobs' pickles and logs."""
    if profile.logs_folder:
        return Path(profile.logs_folder)
    return contract.sweep_dir(experiment) / "submitit"


def _payloads(
    loaded: LoadedSpec,
    todo: list[Job],
    run_ids: dict[str, str],
    uri: str,
    res: Resources,
    smoke: bool,
) -> dict[str, Payload]:
    cells = {c.id: c for c in all_cells(loaded.spec)}
    payloads = {}
    for job in todo:
        init_from = job.config.train.init_from
        payloads[job.key] = Payload(
            config_files=[str(p) for p in loaded.config_files(smoke, cells[job.cell])],
            overrides={
                **job.overrides,
                "name": job.config.name,
                "output_dir": str(Path(job.config.run_dir).resolve()),
                **({"train.init_from": str(Path(init_from).resolve())} if init_from else {}),
            },
            experiment=loaded.experiment(smoke),
            run_name=job.run_name,
            run_id=run_ids[job.key],
            tags=job.tags(loaded.spec.name),
            tracking_uri=uri,
            threads=res.cpus_per_task,
            cwd=str(Path.cwd()),
        )
    return payloads


def _open_runs(experiment: str, todo: list[JobState], sweep: str) -> dict[str, str]:
    """An MLflow run per job to submit (re-using a failed one), status SCHEDULED."""
    run_ids = {}
    for state in todo:
        job = state.job
        if state.run_id:
            tracker = Tracker(state.run_id)
            retry(tracker.mlflow.update_run, state.run_id, status=SCHEDULED)
        else:
            tracker = Tracker.create(experiment, job.run_name, job.tags(sweep), status=SCHEDULED)
        run_ids[job.key] = tracker.run_id
    return run_ids


def submit_jobs(
    loaded: LoadedSpec,
    todo: list[JobState],
    states: list[JobState],
    ledger: Ledger,
    kind: str,
    profile: ClusterProfile,
    smoke: bool,
) -> LocalQueue | None:
    """Open the jobs' runs and submit them: to SLURM, or into a local queue (returned)."""
    experiment = loaded.experiment(smoke)
    res = effective_resources(loaded.spec.resources, profile, smoke)
    folder = logs_folder(profile, experiment)
    # Everything that can refuse the submission comes before any run is opened.
    executor = slurm_executor(folder, res, profile) if kind == "slurm" else None
    uri = profile.tracking_uri or uri_for_jobs(kind)
    # A failed job may still sit in SLURM's queue (behind a failed dependency).
    stuck = [s.scheduler_id for s in todo if s.reason == DEPENDENCY_FAILED]
    run_ids = _open_runs(experiment, todo, loaded.spec.name)
    payloads = _payloads(loaded, [s.job for s in todo], run_ids, uri, res, smoke)
    if executor is not None:
        cancel_slurm(stuck)
        jobs = [s.job for s in todo]
        _submit_slurm(executor, jobs, states, payloads, ledger, folder, res, profile)
        ledger.save()
        return None

    def start(job: Job):
        handle = make_executor(kind, folder, res, profile).submit(CellJob(payloads[job.key]))
        ledger.record(
            job,
            executor=kind,
            job_id=str(handle.job_id),
            run_id=payloads[job.key].run_id,
            submitted=time.time(),
        )
        ledger.save()
        return handle

    def drop(job: Job, reason: str) -> None:
        """A job that will never start: its run fails, its ledger entry queues nothing."""
        Tracker(payloads[job.key].run_id).fail(reason + "\n")
        ledger.record(job, executor=kind, job_id=None, run_id=payloads[job.key].run_id)
        ledger.save()

    for s in todo:  # queued behind this driver: pending while it lives
        ledger.record(
            s.job, executor="local", job_id=str(os.getpid()), queued=True, run_id=run_ids[s.job.key]
        )
    ledger.save()
    return LocalQueue(kind, [s.job for s in todo], start, drop)


def _submit_slurm(
    executor,
    todo: list[Job],
    states: list[JobState],
    payloads: dict[str, Payload],
    ledger: Ledger,
    folder: Path,
    res: Resources,
    profile: ClusterProfile,
) -> None:
    """Jobs that wait for nothing as one job array; the others each with ``afterok``."""
    by_key = {s.job.key: s for s in states}
    submitted: dict[str, str] = {}

    def record(job: Job, handle, **extra) -> None:
        submitted[job.key] = handle.job_id
        ledger.record(
            job,
            executor="slurm",
            job_id=handle.job_id,
            run_id=payloads[job.key].run_id,
            submitted=time.time(),
            **extra,
        )
        log.info("submitted %s as SLURM job %s", job.key, handle.job_id)

    first = [j for j in todo if not j.after]
    if first:
        with executor.batch():
            handles = [executor.submit(CellJob(payloads[j.key])) for j in first]
        for job, handle in zip(first, handles):
            record(job, handle)
    for job in (j for j in todo if j.after):  # in stage order: parents come first
        parents = []
        for key in job.parent_keys:
            parent = by_key.get(key)
            if key in submitted:
                parents.append(submitted[key])
            elif parent is not None and parent.state != FINISHED_S:
                job_id = (ledger.get(parent.job) or {}).get("job_id")  # queued or running
                if job_id:
                    parents.append(str(job_id))
        staged = slurm_executor(folder, res, profile)
        if parents:
            staged.update_parameters(slurm_dependency="afterok:" + ":".join(parents))
        record(job, staged.submit(CellJob(payloads[job.key])), depends_on=":".join(parents) or None)
