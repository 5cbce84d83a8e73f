"""Run a sweep: decide what is left to do, submit it (:mod:`pss.sweep.launch`), wait, report.

    loaded, jobs = plan("sweeps/table5.yaml", smoke=True)
    code = run_sweep(loaded, jobs, SweepOptions(smoke=True, executor="local"))

Idempotent: jobs whose fingerprint already has a FINISHED run are skipped;
failed, killed and missing ones are (re)submitted, re-using their MLflow run.
The local and debug executors run jobs on this machine, ``max_parallel`` at a
time, in dependency order, while this process waits. A sweep with nothing left
to do only reads the store and rebuilds the report (no MLflow client, no
torch: see docs/cli.md).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pss import contract
from pss.errors import EXIT_FAILED, EXIT_OK
from pss.mmdet.translate import require_installed
from pss.report import make_report
from pss.sweep.executors import LocalQueue, resolve_executor
from pss.sweep.profile import load_profile
from pss.sweep.progress import Progress
from pss.sweep.spec import Job, LoadedSpec, expand, load_spec
from pss.sweep.state import (
    FAILED_S,
    FINISHED_S,
    MISSING_S,
    PENDING_S,
    RUNNING_S,
    JobState,
    Ledger,
    format_table,
    sweep_states,
)
from pss.tracking.store import current_uri, experiment_tags

log = logging.getLogger(__name__)
POLL_S = 3.0
REPORTS_OUT = Path("reports") / "out"  # the driver's report folder: <here>/<experiment>


@dataclass
class SweepOptions:
    smoke: bool = False
    executor: str = "auto"  # auto | slurm | local | debug
    cluster: str | None = None  # slurm/<profile>.yaml
    wait: bool = True
    max_parallel: int | None = None  # local/debug: jobs at a time (default 1)
    report: bool = True


def plan(
    path: str | Path, smoke: bool, engine: str | None = None
) -> tuple[LoadedSpec, list[Job]]:
    """Validate the spec and expand it (everything that can fail on bad input); ``engine``
    trains every cell on that engine (``--engine``)."""
    loaded = load_spec(path, engine)
    return loaded, expand(loaded, smoke=smoke)


def run_sweep(loaded: LoadedSpec, jobs: list[Job], options: SweepOptions) -> int:
    """Submit what is left of a sweep (``plan``'s result), wait unless told not to, report."""
    profile = load_profile(options.cluster)
    experiment = loaded.experiment(options.smoke)
    ledger = Ledger.of(experiment)
    states = sweep_states(experiment, jobs, ledger)
    todo = [s for s in states if s.state in (FAILED_S, MISSING_S)]
    done = sum(s.state == FINISHED_S for s in states)
    print(
        f"{loaded.path}: {len(jobs)} jobs in '{experiment}': {done} finished, "
        f"{len(todo)} to submit, {len(jobs) - done - len(todo)} already queued or running",
        file=sys.stderr,
    )
    kind = resolve_executor(options.executor)
    if kind != "slurm" and profile.cpus_per_task is None:
        # Jobs on this machine share its cores: each of max_parallel jobs gets its share
        # of threads (two jobs with two threads each on two cores run slower than one).
        share = max(1, len(os.sched_getaffinity(0)) // (options.max_parallel or 1))
        profile = profile.model_copy(update={"cpus_per_task": share})
    queue = None
    if todo:
        require_installed((s.job.engine for s in todo), str(loaded.path))  # mmdet's jobs
        # Only now the parts that need MLflow's client and submitit (seconds to import).
        from pss.sweep.launch import submit_sweep

        states, queue = submit_sweep(loaded, jobs, ledger, kind, profile, options.smoke)
    if not options.wait:
        if queue is not None:
            print(
                "--no-wait with a local executor: jobs run in this process's children; "
                "starting them all now",
                file=sys.stderr,
            )
            queue.start_ready(limit=len(queue.queue))
        print(
            f"submitted; check with: python sweeps/run.py status {loaded.path}"
            + (" --smoke" if options.smoke else ""),
            file=sys.stderr,
        )
        return EXIT_OK
    final = _wait(experiment, jobs, ledger, queue, options)
    print(format_table(final))
    if options.report and (loaded.spec.table or loaded.spec.figure):
        _report(loaded, options.smoke)
    failed = [s for s in final if s.state != FINISHED_S]
    return EXIT_FAILED if failed else EXIT_OK


def _wait(
    experiment: str,
    jobs: list[Job],
    ledger: Ledger,
    queue: LocalQueue | None,
    options: SweepOptions,
) -> list[JobState]:
    """Wait for the sweep's jobs, showing where each stands; returns the final states."""
    limit = options.max_parallel or 1
    shown = Progress(sys.stderr)
    try:
        while True:
            if queue is not None:
                queue.poll()
                queue.start_ready(limit)
            states = sweep_states(experiment, jobs, ledger)
            shown.update(states)
            active = sum(s.state in (RUNNING_S, PENDING_S) for s in states)
            if not active and not (queue is not None and queue.busy):
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
        shown.close()


def _report(loaded: LoadedSpec, smoke: bool) -> None:
    """Print the sweep's table, where the report went and how to browse the runs."""
    experiment = loaded.experiment(smoke)
    report = make_report(
        loaded.path, smoke=smoke, out_dir=REPORTS_OUT / experiment, engine=loaded.spec.engine
    )
    if report.markdown:
        print()
        print(report.markdown)
    print(f"\nreport: {report.path}")
    picture = report.path.parent / contract.MODES_FIGURE
    if picture in report.files:
        print(f"raw / nms / e2e detections of one cell: {picture}")
    print(f"MLflow UI on these runs (experiment '{report.experiment}'):")
    print(_ui_hint(loaded, report.experiment))


def _ui_hint(loaded: LoadedSpec, experiment: str) -> str:
    """The command that serves the store (as printed) and the URL of the experiment's
    runs table in the model-training view, with the spec's saved view published (through
    MLflow's client only when it is not there yet: a re-run of a finished sweep on a
    local store imports no MLflow)."""
    from pss.tracking.ui import is_published, publish_view, ui_hint, view_id

    uri = current_uri()
    known = experiment_tags(experiment, uri)
    if known is not None and is_published(loaded, known[1]):
        return ui_hint(uri, known[0], view_id(loaded))
    from pss.tracking.logger import client

    mlflow = client(uri)
    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        return ui_hint(uri, None, None)
    return ui_hint(uri, found.experiment_id, publish_view(mlflow, found.experiment_id, loaded))


def print_status(path: str | Path, smoke: bool, engine: str | None = None) -> int:
    loaded, jobs = plan(path, smoke, engine)
    experiment = loaded.experiment(smoke)
    states = sweep_states(experiment, jobs, Ledger.of(experiment))
    print(format_table(states))
    return EXIT_OK if all(s.state == FINISHED_S for s in states) else EXIT_FAILED
