"""Submitting a sweep's jobs: open their MLflow runs, then hand them to SLURM or a local queue.

    states, queue = submit_sweep(loaded, jobs, ledger, "slurm", profile, smoke=False)

One driver at a time submits a sweep (:mod:`pss.sweep.lock`); it decides what
to submit from the sweep's state read under that lock.
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
import subprocess
import sys
import time
import uuid
from pathlib import Path

from pss import contract
from pss.contract import SCHEDULED
from pss.sweep.executors import (
    LocalQueue,
    cancel_slurm,
    make_executor,
    max_array_size,
    slurm_executor,
)
from pss.sweep.lock import sweep_lock
from pss.sweep.profile import ClusterProfile, effective_resources
from pss.sweep.spec import Job, LoadedSpec, Resources, all_cells
from pss.sweep.state import (
    DEPENDENCY_FAILED,
    FAILED_S,
    FINISHED_S,
    MISSING_S,
    JobState,
    Ledger,
    sweep_states,
)
from pss.sweep.store import uri_for_jobs
from pss.sweep.worker import CellJob, Payload
from pss.tracking import logger as tracking
from pss.tracking.logger import Tracker, retry

log = logging.getLogger(__name__)


def logs_folder(profile: ClusterProfile, experiment: str) -> Path:
    """Where submitit writes jobs' pickles and logs."""
    if profile.logs_folder:
        return Path(profile.logs_folder)
    return contract.sweep_dir(experiment) / "submitit"


def _payloads(
    loaded: LoadedSpec,
    todo: list[Job],
    run_ids: dict[str, str | None],
    uri: str,
    env: dict[str, str],
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
            env=env,
            engine=job.engine,
        )
    return payloads


def _reopen_runs(todo: list[JobState]) -> dict[str, str | None]:
    """The run each job continues: a failed job's old run, SCHEDULED again; None for the
    others, whose run the job creates when it starts training (its start time then)."""
    run_ids: dict[str, str | None] = {}
    for state in todo:
        if state.run_id:
            tracker = Tracker(state.run_id)
            retry(tracker.mlflow.update_run, state.run_id, status=SCHEDULED)
        run_ids[state.job.key] = state.run_id
    return run_ids


def submit_sweep(
    loaded: LoadedSpec,
    jobs: list[Job],
    ledger: Ledger,
    kind: str,
    profile: ClusterProfile,
    smoke: bool,
) -> tuple[list[JobState], LocalQueue | None]:
    """Under the sweep's lock, find what is still to do and submit it.

    Returns the states the decision was made on and, for the local and debug
    executors, the queue the driver must run. Another driver that got the lock
    first has submitted (or is running) its jobs by the time this one decides.
    """
    experiment = loaded.experiment(smoke)
    with sweep_lock(tracking.client(), experiment) as waited:
        ledger.reload()
        recover_interrupted(ledger, jobs)
        states = sweep_states(experiment, jobs, ledger)
        todo = [s for s in states if s.state in (FAILED_S, MISSING_S)]
        if waited:
            left = f"{len(todo)} jobs to submit"
            print(f"{experiment}: after the other driver, {left}", file=sys.stderr)
        queue = submit_jobs(loaded, todo, states, ledger, kind, profile, smoke) if todo else None
        ledger.save()
    return states, queue


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
    uri, env = uri_for_jobs(kind, profile)
    # A failed job may still sit in SLURM's queue (behind a failed dependency).
    stuck = [s.scheduler_id for s in todo if s.reason == DEPENDENCY_FAILED]
    run_ids = _reopen_runs(todo)
    payloads = _payloads(loaded, [s.job for s in todo], run_ids, uri, env, res, smoke)
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
        """A job that will never start: a failed run says why; its ledger entry queues nothing."""
        p = payloads[job.key]
        if p.run_id:
            tracker = Tracker(p.run_id)
        else:
            tracker = Tracker.create(p.experiment, p.run_name, p.tags)
        tracker.fail(reason + "\n")
        ledger.record(job, executor=kind, job_id=None, run_id=tracker.run_id)
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

    def intend(jobs: list[Job], **extra) -> str:
        """Record the jobs under a new submission token, before sbatch (see below)."""
        token = uuid.uuid4().hex[:12]
        for index, job in enumerate(jobs):
            ledger.record(
                job,
                executor="slurm",
                job_id=None,
                token=token,
                index=index,
                run_id=payloads[job.key].run_id,
                submitted=time.time(),
                **extra,
            )
        ledger.save()
        return token

    def record(job: Job, handle) -> None:
        submitted[job.key] = handle.job_id
        ledger.record(job, **{**(ledger.get(job) or {}), "job_id": handle.job_id})
        log.info("submitted %s as SLURM job %s", job.key, handle.job_id)

    def release(batch: list[Job]) -> None:
        _scontrol_release([submitted[j.key] for j in batch])
        for job in batch:
            ledger.record(job, **{**(ledger.get(job) or {}), "released": True})
        ledger.save()

    # Each submission goes out held, under a job name made of a token the ledger
    # holds before sbatch, and is released once the job ids are saved: a driver
    # killed in between leaves held jobs that never run, which the next driver
    # finds by name and cancels (no id saved) or releases (ids saved); see
    # recover_interrupted.
    executor.update_parameters(slurm_additional_parameters={"hold": True})
    first = [j for j in todo if not j.after]
    size = max_array_size() or len(first)  # an array larger than the cluster allows: split
    for start in range(0, len(first), size):
        array = first[start : start + size]
        executor.update_parameters(name=submission_name(intend(array)))
        with executor.batch():
            handles = [executor.submit(CellJob(payloads[j.key])) for j in array]
        for job, handle in zip(array, handles):
            record(job, handle)
        ledger.save()
        release(array)
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
        staged.update_parameters(slurm_additional_parameters={"hold": True})
        if parents:
            staged.update_parameters(slurm_dependency="afterok:" + ":".join(parents))
        token = intend([job], depends_on=":".join(parents) or None)
        staged.update_parameters(name=submission_name(token))
        record(job, staged.submit(CellJob(payloads[job.key])))
        ledger.save()
        release([job])


# ------------------------------------------------------------ interrupted submissions


def submission_name(token: str) -> str:
    """The SLURM job name of one submission (an array, or one job) of a driver."""
    return f"pss-{token}"


def recover_interrupted(ledger: Ledger, jobs: list[Job]) -> None:
    """Settle what a driver killed while submitting left behind (see _submit_slurm).

    Held jobs whose ids it never saved (found by their submission's name) may lack
    the pickle they would run, and are cancelled: those jobs are submitted again.
    Held jobs whose ids it saved but never released are released: they run as
    submitted, and nothing is submitted twice.
    """
    unsaved, unreleased = {}, []
    for job in jobs:
        entry = ledger.get(job)
        if not entry or entry.get("executor") != "slurm":
            continue
        if entry.get("token") and not entry.get("job_id"):
            unsaved[submission_name(entry["token"])] = job
        elif entry.get("token") and entry.get("job_id") and not entry.get("released"):
            unreleased.append(job)
    if unsaved:
        orphans = _jobs_named(sorted(unsaved))
        if orphans:
            log.warning("cancelling %d held jobs of an interrupted submission", len(orphans))
            cancel_slurm(orphans)
    if unreleased:
        ids = [str(ledger.get(job)["job_id"]) for job in unreleased]
        log.warning("releasing %d held jobs of an interrupted submission", len(ids))
        _scontrol_release(ids)
        for job in unreleased:
            ledger.record(job, **{**(ledger.get(job) or {}), "released": True, "adopted": True})
    ledger.save()


def _scontrol_release(job_ids: list[str]) -> None:
    subprocess.run(["scontrol", "release", *job_ids], capture_output=True, timeout=60, check=False)


def _jobs_named(names: list[str]) -> list[str]:
    """Ids of the jobs (array tasks) SLURM still has queued under these job names."""
    out = subprocess.run(
        ["squeue", "-h", "-r", "-o", "%i", f"--name={','.join(names)}"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]
