"""Run a sweep: decide what is left to do, submit it through submitit, wait, report.

    code = run_sweep("sweeps/table5.yaml", SweepOptions(smoke=True, executor="local"))

Idempotent: jobs whose fingerprint already has a FINISHED run are skipped;
failed, killed and missing ones are (re)submitted, re-using their MLflow run.
On SLURM, cells become job arrays (``array_parallelism`` at a time) and a stage
that starts from another waits for it through an ``afterok`` dependency. The
local and debug executors run jobs on this machine, ``max_parallel`` at a time,
in dependency order.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit
from tqdm import tqdm

from pss.errors import EXIT_FAILED, EXIT_OK
from pss.sweep.profile import ClusterProfile, effective_resources, load_profile
from pss.sweep.spec import Job, LoadedSpec, Resources, expand, load_spec
from pss.sweep.state import (
    FAILED_S,
    FINISHED_S,
    MISSING_S,
    JobState,
    Ledger,
    format_table,
    job_tags,
    sweep_states,
)
from pss.sweep.store import uri_for_jobs
from pss.sweep.worker import CellJob, Payload
from pss.tracking import Tracker, retry

log = logging.getLogger("pss.sweep")
OUTPUT_ROOT = Path("outputs") / "sweeps"
POLL_S = 3.0


@dataclass
class SweepOptions:
    smoke: bool = False
    executor: str = "auto"  # auto | slurm | local | debug
    cluster: str | None = None  # slurm/<profile>.yaml
    wait: bool = True
    max_parallel: int | None = None  # local/debug: jobs at a time (default 1)
    report: bool = True


def resolve_executor(name: str) -> str:
    if name == "auto":
        return "slurm" if shutil.which("sbatch") else "local"
    return name


def sweep_dir(experiment: str) -> Path:
    return OUTPUT_ROOT / experiment


def plan(path: str | Path, smoke: bool) -> tuple[LoadedSpec, list[Job]]:
    """Validate the spec and expand it (everything that can fail on bad input)."""
    loaded = load_spec(path)
    return loaded, expand(loaded, smoke=smoke, output_root=OUTPUT_ROOT)


def _payload(loaded: LoadedSpec, job: Job, run_id: str, uri: str, res: Resources, smoke: bool):
    return Payload(
        config_files=[str(p) for p in loaded.config_files(smoke, _cell(loaded, job))],
        overrides={
            **job.overrides,
            "name": job.config.name,
            "output_dir": str(Path(job.config.run_dir).resolve()),
            **(
                {"train.init_from": str(Path(job.config.train.init_from).resolve())}
                if job.config.train.init_from
                else {}
            ),
        },
        experiment=loaded.experiment(smoke),
        run_name=job.cell if not job.stage else f"{job.cell}@{job.stage}",
        run_id=run_id,
        tags=job_tags(loaded.spec.name, job),
        tracking_uri=uri,
        threads=res.cpus_per_task,
        cwd=str(Path.cwd()),
    )


def _cell(loaded: LoadedSpec, job: Job):
    from pss.sweep.spec import all_cells

    return next(c for c in all_cells(loaded.spec) if c.id == job.cell)


def _slurm_executor(folder: Path, res: Resources, profile: ClusterProfile) -> submitit.AutoExecutor:
    executor = submitit.AutoExecutor(
        folder=folder / "%j", cluster="slurm", slurm_max_num_timeout=profile.max_requeues
    )
    params: dict[str, Any] = {
        "timeout_min": res.timeout_min,
        "nodes": res.nodes,
        "tasks_per_node": max(res.gpus_per_node, 1),
        "cpus_per_task": res.cpus_per_task,
        "mem_gb": res.mem_gb,
        "slurm_array_parallelism": profile.array_parallelism,
        "slurm_setup": list(profile.setup),
    }
    if res.gpus_per_node:
        params["gpus_per_node"] = res.gpus_per_node
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(profile, key):
            params[f"slurm_{key}"] = getattr(profile, key)
    executor.update_parameters(**params)
    return executor


def _open_runs(experiment: str, todo: list[JobState], sweep: str) -> dict[str, str]:
    """An MLflow run per job to submit (re-using a failed one), status SCHEDULED."""
    run_ids = {}
    for state in todo:
        job = state.job
        if state.run_id:
            tracker = Tracker(state.run_id)
            retry(tracker.mlflow.update_run, state.run_id, status="SCHEDULED")
        else:
            name = job.cell if not job.stage else f"{job.cell}@{job.stage}"
            tracker = Tracker.create(experiment, name, job_tags(sweep, job), status="SCHEDULED")
        run_ids[job.key] = tracker.run_id
    return run_ids


def run_sweep(path: str | Path, options: SweepOptions) -> int:
    loaded, jobs = plan(path, options.smoke)
    profile = load_profile(options.cluster)
    if loaded.spec.search is not None:
        from pss.sweep.search import run_search

        return run_search(loaded, options, profile)
    experiment = loaded.experiment(options.smoke)
    ledger = Ledger(sweep_dir(experiment) / "ledger.json")
    states = sweep_states(experiment, jobs, ledger)
    todo = [s for s in states if s.state in (FAILED_S, MISSING_S)]
    done = sum(s.state == FINISHED_S for s in states)
    print(
        f"{loaded.path}: {len(jobs)} jobs in '{experiment}': {done} finished, "
        f"{len(todo)} to submit, {len(jobs) - done - len(todo)} already queued or running",
        file=sys.stderr,
    )
    kind = resolve_executor(options.executor)
    if todo:
        res = effective_resources(loaded.spec.resources, profile, options.smoke)
        folder = (
            Path(profile.logs_folder) if profile.logs_folder else sweep_dir(experiment) / "submitit"
        )
        # Everything that can refuse the submission comes before any run is opened.
        executor = _slurm_executor(folder, res, profile) if kind == "slurm" else None
        uri = profile.tracking_uri or uri_for_jobs(kind)
        run_ids = _open_runs(experiment, todo, loaded.spec.name)
        payloads = {
            s.job.key: _payload(loaded, s.job, run_ids[s.job.key], uri, res, options.smoke)
            for s in todo
        }
        if executor is not None:
            _submit_slurm(executor, todo, states, payloads, ledger, folder, res, profile)
            handles: dict[str, Any] = {}
        else:
            for s in todo:  # queued behind this driver: pending while it lives
                ledger.record(
                    s.job,
                    executor="local",
                    job_id=str(os.getpid()),
                    queued=True,
                    run_id=run_ids[s.job.key],
                )
            handles = {
                "queue": [s.job for s in todo],
                "payloads": payloads,
                "folder": folder,
                "kind": kind,
                "res": res,
                "running": {},
                "failed": set(),
            }
        ledger.save()
    else:
        handles = {}
    if not options.wait:
        if handles.get("queue"):
            print(
                "--no-wait with a local executor: jobs run in this process's children; "
                "starting them all now",
                file=sys.stderr,
            )
            _start_local(handles, ledger, limit=len(handles["queue"]))
            ledger.save()
        print(
            f"submitted; check with: python sweeps/run.py status {loaded.path}"
            + (" --smoke" if options.smoke else ""),
            file=sys.stderr,
        )
        return EXIT_OK
    final = _wait(experiment, jobs, ledger, handles, options)
    print(format_table(final))
    if options.report and (loaded.spec.table or loaded.spec.figure):
        _report(loaded, options.smoke)
    failed = [s for s in final if s.state != FINISHED_S]
    return EXIT_FAILED if failed else EXIT_OK


def _submit_slurm(executor, todo, states, payloads, ledger, folder, res, profile) -> None:
    """Unstaged jobs and first stages as one job array; later stages each with afterok."""
    by_key = {s.job.key: s for s in states}
    first = [s.job for s in todo if not s.job.init_from_stage]
    later = [s.job for s in todo if s.job.init_from_stage]
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

    if first:
        with executor.batch():
            handles = [executor.submit(CellJob(payloads[j.key])) for j in first]
        for job, handle in zip(first, handles):
            record(job, handle)
    for job in later:
        parent_key = _parent_key(job)
        parent = submitted.get(parent_key)
        waiting = by_key.get(parent_key)
        if parent is None and waiting is not None and waiting.state != FINISHED_S:
            parent = (ledger.get(waiting.job) or {}).get("job_id")  # queued or running
        staged = _slurm_executor(folder, res, profile)
        if parent:
            staged.update_parameters(slurm_dependency=f"afterok:{parent}")
        record(job, staged.submit(CellJob(payloads[job.key])), depends_on=parent)


def _parent_key(job: Job) -> str:
    return job.key.replace(f"@{job.stage}", f"@{job.init_from_stage}")


def _start_local(handles: dict[str, Any], ledger: Ledger, limit: int) -> None:
    """Start queued local/debug jobs whose dependencies are met, up to ``limit`` running.

    A stage waits while the stage it starts from is queued or running, and is dropped
    (left unsubmitted) when that stage failed, like SLURM's ``afterok``.
    """
    queue: list[Job] = handles["queue"]
    running: dict[str, Any] = handles["running"]
    failed: set[str] = handles["failed"]
    for job in list(queue):
        if len(running) >= limit:
            return
        if job.init_from_stage:
            parent = _parent_key(job)
            if parent in failed:
                queue.remove(job)
                log.error("%s not started: %s failed", job.key, parent)
                continue
            if parent in running or any(j.key == parent for j in queue):
                continue
        payload = handles["payloads"][job.key]
        if handles["kind"] == "debug":
            executor = submitit.DebugExecutor(folder=handles["folder"] / "%j")
        else:
            executor = submitit.LocalExecutor(folder=handles["folder"] / "%j")
            executor.update_parameters(timeout_min=handles["res"].timeout_min)
        handle = executor.submit(CellJob(payload))
        queue.remove(job)
        running[job.key] = handle
        ledger.record(
            job,
            executor=handles["kind"],
            job_id=str(handle.job_id),
            run_id=payload.run_id,
            submitted=time.time(),
        )
        ledger.save()
        if handles["kind"] == "debug":
            _poll_local(handles)


def _poll_local(handles: dict[str, Any]) -> None:
    """Collect finished local jobs (the debug executor runs its job here, in-process)."""
    for key, handle in list(handles["running"].items()):
        if handles["kind"] == "debug" or handle.done():
            try:
                handle.result()
            except Exception as exc:  # noqa: BLE001 - the run itself is marked FAILED
                lines = str(exc).strip().splitlines()
                log.error("%s failed: %s", key, lines[-1] if lines else type(exc).__name__)
                handles["failed"].add(key)
            del handles["running"][key]


def _wait(
    experiment: str, jobs: list[Job], ledger: Ledger, handles: dict[str, Any], options: SweepOptions
) -> list[JobState]:
    """Wait for the sweep's jobs, showing progress; returns the final states."""
    limit = options.max_parallel or 1
    interactive = sys.stderr.isatty()
    bar = tqdm(
        total=len(jobs), desc="sweep", unit="job", disable=not interactive, dynamic_ncols=True
    )
    seen: dict[str, str] = {}
    try:
        while True:
            if handles.get("queue") is not None:
                _poll_local(handles)
                _start_local(handles, ledger, limit)
            states = sweep_states(experiment, jobs, ledger)
            for s in states:
                if seen.get(s.job.key) != s.state:
                    seen[s.job.key] = s.state
                    _announce(s, interactive, bar)
            counts = {
                k: sum(s.state == k for s in states)
                for k in ("finished", "running", "pending", "failed", "missing")
            }
            bar.n = counts["finished"]
            bar.set_postfix({k: v for k, v in counts.items() if v and k != "finished"})
            bar.refresh()
            active = counts["running"] + counts["pending"]
            local_busy = bool(handles.get("running")) or bool(handles.get("queue"))
            if not active and not local_busy:
                return states
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        print(
            "\ninterrupted: submitted SLURM jobs keep running; check with "
            "`python sweeps/run.py status SPEC`",
            file=sys.stderr,
        )
        raise
    finally:
        bar.close()


def _announce(state: JobState, interactive: bool, bar: tqdm) -> None:
    metrics = state.metrics or {}
    detail = ""
    if state.state == FINISHED_S:
        parts = [f"{k} {metrics[k]:.1f}" for k in ("mAP_e2e", "mAP_nms") if k in metrics]
        detail = ": " + ", ".join(parts) if parts else ""
    elif state.reason:
        detail = f" ({state.reason})"
    line = f"{state.job.key}: {state.state}{detail}"
    if interactive:
        bar.write(line)
    else:
        print(line, file=sys.stderr, flush=True)


def _report(loaded: LoadedSpec, smoke: bool) -> None:
    """Print the sweep's table, where the report went and how to browse the runs."""
    from pss.report import make_report
    from pss.sweep.store import current_uri

    experiment = loaded.experiment(smoke)
    report = make_report(loaded.path, smoke=smoke, out_dir=Path("reports") / "out" / experiment)
    if report.markdown:
        print()
        print(report.markdown)
    print(f"\nreport: {report.path}")
    uri = current_uri()
    ui = f"mlflow ui --backend-store-uri {uri}" if not uri.startswith("http") else uri
    print(f"MLflow UI on these runs (experiment '{report.experiment}'): {ui}")


def print_status(path: str | Path, smoke: bool) -> int:
    loaded, jobs = plan(path, smoke)
    experiment = loaded.experiment(smoke)
    states = sweep_states(experiment, jobs, Ledger(sweep_dir(experiment) / "ledger.json"))
    print(format_table(states))
    return EXIT_OK if all(s.state == FINISHED_S for s in states) else EXIT_FAILED
