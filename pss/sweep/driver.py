"""The sweep driver: the command line of ``sweeps/run.py`` (see its docstring and
docs/cli.md) and the pipeline it runs, spec -> jobs -> states -> submit -> wait -> report.

    loaded, jobs = plan("sweeps/table5.yaml", smoke=True)   # the spec, checked; its jobs
    code = run_sweep(loaded, jobs, SweepOptions(smoke=True, executor="local"))

Each step is one call into a module that does not call back: the spec is read and
checked (:mod:`pss.sweep.schema`) and expanded into jobs (:mod:`pss.sweep.expand`);
where each job stands is read from the store and the sweep's ledger
(:mod:`pss.sweep.state`); what is left is submitted here, the one module that
submits, to SLURM (:mod:`pss.sweep.slurm`, every SLURM command) or to a queue of
local jobs this process runs (:mod:`pss.sweep.executors`); each job runs
:class:`~pss.sweep.worker.CellJob`. The driver then waits (:mod:`pss.sweep.progress`
shows it) and builds the report (:mod:`pss.report`) and the MLflow UI's view of the
runs (:mod:`pss.tracking.ui`).

Idempotent: jobs whose fingerprint already has a FINISHED run are skipped; failed,
killed and missing ones are (re)submitted, re-using their MLflow run. ``status``,
``--dry-run`` and a re-run of a finished sweep import neither torch nor MLflow's
client: they read the store directly (:mod:`pss.tracking.store`) and answer in about
a second; only submitting loads MLflow's client (:func:`submit_sweep`).

One driver at a time submits a sweep (:mod:`pss.sweep.lock`), deciding from the
sweep's state read under that lock. On SLURM, jobs that wait for nothing go out as
one job array and a stage that waits for others gets an ``afterok`` dependency. Each
submission goes out held, under a job name made of a token the ledger holds before
sbatch, and is released once the job ids are saved: a driver killed in between leaves
held jobs that never run, which the next driver finds by name and cancels (no id
saved) or releases (ids saved): :func:`recover_interrupted`. The local and debug
executors run jobs on this machine, ``max_parallel`` at a time, in dependency order,
while this process waits.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

from pss import contract
from pss.contract import ENGINES, SCHEDULED
from pss.errors import EXIT_FAILED, EXIT_INVALID, EXIT_OK, UserError
from pss.mmdet.translate import require_installed
from pss.sweep import slurm
from pss.sweep.budget import cell_costs, check_budget, format_spent, print_dry_run, sweep_cost
from pss.sweep.executors import KINDS, LocalQueue, resolve_executor, submit
from pss.sweep.expand import Job, expand
from pss.sweep.profile import ClusterProfile, effective_resources, for_local_jobs, load_profile
from pss.sweep.progress import Progress
from pss.sweep.schema import LoadedSpec, Resources, load_spec
from pss.sweep.state import (
    DEPENDENCY_FAILED,
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
from pss.sweep.worker import CellJob, Payload
from pss.tracking.store import current_uri
from pss.tracking.ui import sweep_hint

log = logging.getLogger(__name__)
POLL_S = 3.0
REPORTS_OUT = Path("reports") / "out"  # the driver's report folder: <here>/<experiment>


# --------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sweeps/run.py",
        description="Run a sweep spec (or `status SPEC` to see where it stands).",
    )
    parser.add_argument("spec", help="sweep spec YAML (e.g. sweeps/table5.yaml)")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="CPU smoke variant: synthetic shapes, small backbone, short "
        "schedule; logs to experiment <name>-smoke",
    )
    parser.add_argument(
        "--executor",
        choices=KINDS,
        default="auto",
        help="auto: SLURM where sbatch exists, else local",
    )
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default=None,
        help="train every cell on this engine, whatever the spec says; the experiment's "
        "name says it (<name>[-smoke]-mmdet)",
    )
    parser.add_argument("--cluster", metavar="PROFILE", help="cluster profile, slurm/<name>.yaml")
    parser.add_argument("--no-wait", action="store_true", help="submit and return")
    parser.add_argument("--dry-run", action="store_true", help="expand only; submit nothing")
    parser.add_argument("--json", action="store_true", help="with --dry-run: JSON on stdout")
    parser.add_argument(
        "--budget",
        type=float,
        metavar="GPU_HOURS",
        help="refuse (exit 2, nothing submitted) when the jobs to submit are estimated at "
        "more GPU-hours than this, or some at unknown cost; with --dry-run the same verdict",
    )
    parser.add_argument(
        "--check-data",
        action="store_true",
        help="check every cell's dataset (both splits) and exit: 0 fine, 2 problems",
    )
    parser.add_argument(
        "--max-parallel",
        type=int,
        default=None,
        metavar="N",
        help="local/debug executors: jobs at a time (default 1)",
    )
    parser.add_argument("--no-report", action="store_true", help="do not build the report")
    parser.add_argument(
        "--pdb",
        action="store_true",
        help="with --executor debug: open a post-mortem debugger on a failing job "
        "(else it is reported like any other executor's)",
    )
    return parser


def main(argv: list[str]) -> int:
    if argv[:1] == ["server"]:
        return server_command(argv[1:])
    status = bool(argv) and argv[0] == "status"
    args = _parser().parse_args(argv[1:] if status else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # not its schema set-up chatter
    try:
        if status:
            return print_status(args.spec, args.smoke, args.engine, args.cluster)
        loaded, jobs = plan(args.spec, args.smoke, args.engine)
        profile = load_profile(args.cluster)  # a bad profile fails a dry run too
        if args.check_data:
            return check_datasets(jobs)
        if args.dry_run or args.budget is not None:
            parallel = profile.array_parallelism if args.cluster else args.max_parallel or 1
            costs = sweep_cost(loaded, jobs, profile, args.cluster, args.smoke, parallel)
            if args.dry_run:
                print_dry_run(jobs, costs, args.json, args.cluster)
            if args.budget is not None:
                check_budget(costs, args.budget, str(loaded.path))
            if args.dry_run:
                return EXIT_OK
        if loaded.spec.search is not None:
            from pss.sweep.search import run_search  # Optuna and MLflow: searches only

            return run_search(loaded, profile, args.smoke, args.executor, not args.no_wait)
        if args.pdb and args.executor != "debug":
            raise UserError("--pdb needs --executor debug (jobs that run in this process)")
        options = SweepOptions(
            smoke=args.smoke,
            executor=args.executor,
            cluster=args.cluster,
            wait=not args.no_wait,
            max_parallel=args.max_parallel,
            report=not args.no_report,
            pdb=args.pdb,
        )
        return run_sweep(loaded, jobs, options)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID


def server_command(argv: list[str]) -> int:
    """``sweeps/run.py server status|stop [--store URI]``: the tracking server of a store."""
    parser = argparse.ArgumentParser(
        prog="sweeps/run.py server",
        description="The MLflow tracking server SLURM sweeps start on a local store "
        "(docs/cluster.md): show it, or stop it and everything it started.",
    )
    parser.add_argument("action", choices=["status", "stop"])
    parser.add_argument(
        "--store", metavar="URI", help="the store (default: MLFLOW_TRACKING_URI or ./mlflow.db)"
    )
    args = parser.parse_args(argv)
    from pss.sweep.server import server_status, stop_server

    store = args.store or current_uri()
    try:
        if args.action == "stop":
            stopped = stop_server(store)
            print(f"stopped the tracking server of {store}" if stopped else f"no server on {store}")
            return EXIT_OK
        server = server_status(store)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    if server is None:
        print(f"no server on {store}")
        return EXIT_FAILED
    print(f"{server.url} (pid {server.pid}, store {store}, credentials {server.credentials})")
    return EXIT_OK


# --------------------------------------------------------------------------- the pipeline


@dataclass
class SweepOptions:
    smoke: bool = False
    executor: str = "auto"  # auto | slurm | local | debug
    cluster: str | None = None  # slurm/<profile>.yaml
    wait: bool = True
    max_parallel: int | None = None  # local/debug: jobs at a time (default 1)
    report: bool = True
    pdb: bool = False  # debug executor: a debugger on a failing job


def plan(
    path: str | Path, smoke: bool, engine: str | None = None
) -> tuple[LoadedSpec, list[Job]]:
    """Validate the spec and expand it (everything that can fail on bad input); ``engine``
    trains every cell on that engine (``--engine``)."""
    loaded = load_spec(path, engine)
    return loaded, expand(loaded, smoke=smoke)


def check_datasets(jobs: list[Job]) -> int:
    """``--check-data``: the data check of each distinct dataset of the jobs (one summary
    per split); a problem is a UserError listing them all."""
    from pss.data.check import check_data  # Pillow and the annotation files: this path only

    seen = set()
    for job in jobs:
        data = job.config.data
        key = data.model_dump_json()
        if key not in seen:
            seen.add(key)
            print(check_data(data))
    return EXIT_OK


def print_status(
    path: str | Path, smoke: bool, engine: str | None = None, cluster: str | None = None
) -> int:
    """Where each job stands, then GPU-hours spent against estimated per cell and in all
    (a finished job's estimate without its own run: pss.sweep.budget)."""
    loaded, jobs = plan(path, smoke, engine)
    costs = sweep_cost(loaded, jobs, load_profile(cluster), cluster, smoke, 1, own=False)
    print(format_table(costs.states))
    print()
    print(format_spent(cell_costs(costs)))
    return EXIT_OK if all(s.state == FINISHED_S for s in costs.states) else EXIT_FAILED


def run_sweep(loaded: LoadedSpec, jobs: list[Job], options: SweepOptions) -> int:
    """Submit what is left of a sweep (``plan``'s result), wait unless told not to, report."""
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
    profile = load_profile(options.cluster)
    if kind != "slurm":
        profile = for_local_jobs(profile, options.max_parallel or 1)
    local = None
    if todo:
        require_installed((s.job.engine for s in todo), str(loaded.path))  # mmdet's jobs
        target = Target(
            experiment=experiment,
            sweep=loaded.spec.name,
            kind=kind,
            profile=profile,
            res=effective_resources(loaded.spec.resources, profile, options.smoke),
            pdb=options.pdb,
        )
        local = submit_sweep(jobs, ledger, target)
    if not options.wait:
        if local is not None:
            print(
                "--no-wait with a local executor: jobs run in this process's children; "
                "starting them all now",
                file=sys.stderr,
            )
            local.start_ready(limit=len(jobs))
        print(
            f"submitted; check with: python sweeps/run.py status {loaded.path}"
            + (" --smoke" if options.smoke else ""),
            file=sys.stderr,
        )
        return EXIT_OK
    final = _wait(experiment, jobs, ledger, local, options.max_parallel or 1)
    print(format_table(final))
    if options.report and (loaded.spec.table or loaded.spec.figure):
        shown = _report(loaded.path, loaded.spec.engine, experiment, options)
        print(f"MLflow UI on these runs (experiment '{shown}'):")
        print(sweep_hint(loaded, shown))
    failed = [s for s in final if s.state != FINISHED_S]
    return EXIT_FAILED if failed else EXIT_OK


def _wait(
    experiment: str, jobs: list[Job], ledger: Ledger, local: LocalJobs | None, limit: int
) -> list[JobState]:
    """Wait for the sweep's jobs, showing where each stands; returns the final states."""
    shown = Progress(sys.stderr)
    try:
        while True:
            if local is not None:
                local.queue.poll()
                local.start_ready(limit)
            states = sweep_states(experiment, jobs, ledger)
            shown.update(states)
            active = sum(s.state in (RUNNING_S, PENDING_S) for s in states)
            if not active and not (local is not None and local.queue.busy):
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


def _report(path: Path, engine: str, experiment: str, options: SweepOptions) -> str:
    """Build the sweep's report; print its table and where it went. Returns the
    experiment it read."""
    from pss.report import make_report  # the report's tables and figures: only here

    out = REPORTS_OUT / experiment
    report = make_report(
        path, smoke=options.smoke, out_dir=out, engine=engine, cluster=options.cluster
    )
    if report.markdown:
        print()
        print(report.markdown)
    print(f"\nreport: {report.path}")
    picture = report.path.parent / contract.MODES_FIGURE
    if picture in report.files:
        print(f"raw / nms / e2e detections of one cell: {picture}")
    return report.experiment


# --------------------------------------------------------------------------- submitting


@dataclass(frozen=True)
class Target:
    """Where a sweep's jobs go and what each gets: the same for all of them."""

    experiment: str
    sweep: str  # the spec's name (the runs' pss.sweep tag)
    kind: str  # slurm | local | debug
    profile: ClusterProfile
    res: Resources
    uri: str = ""  # the store jobs log to (uri_for_jobs)
    env: dict[str, str] = field(default_factory=dict)  # what jobs need to reach it
    pdb: bool = False  # debug executor: a debugger on a failing job

    @property
    def folder(self) -> Path:
        """Where submitit writes jobs' pickles and logs."""
        if self.profile.logs_folder:
            return Path(self.profile.logs_folder)
        return contract.sweep_dir(self.experiment) / "submitit"


def submit_sweep(jobs: list[Job], ledger: Ledger, target: Target) -> LocalJobs | None:
    """Under the sweep's lock, find what is still to do and submit it.

    Returns, for the local and debug executors, the jobs this driver must run.
    Another driver that got the lock first has submitted (or is running) its jobs
    by the time this one decides.
    """
    from pss.sweep.lock import sweep_lock  # MLflow's client: only to submit
    from pss.tracking.logger import client

    with sweep_lock(client(), target.experiment) as waited:
        ledger.reload()
        recover_interrupted(ledger, jobs)
        states = sweep_states(target.experiment, jobs, ledger)
        todo = [s for s in states if s.state in (FAILED_S, MISSING_S)]
        if waited:
            left = f"{len(todo)} jobs to submit"
            print(f"{target.experiment}: after the other driver, {left}", file=sys.stderr)
        local = _submit(todo, states, ledger, target) if todo else None
        ledger.save()
    return local


def _submit(
    todo: list[JobState], states: list[JobState], ledger: Ledger, target: Target
) -> LocalJobs | None:
    """Open the jobs' runs and submit them: to SLURM, or into a local queue (returned)."""
    from pss.sweep.server import uri_for_jobs  # MLflow: only to submit

    # Everything that can refuse the submission comes before any run is opened.
    if target.kind == "slurm":
        slurm.executor(target.folder, target.res, target.profile)
    uri, env = uri_for_jobs(target.kind, target.profile)
    target = replace(target, uri=uri, env=env)
    # A failed job may still sit in SLURM's queue (behind a failed dependency).
    stuck = [s.scheduler_id for s in todo if s.reason == DEPENDENCY_FAILED]
    run_ids = _reopen_runs(todo)
    payloads = {s.job.key: _payload(s.job, run_ids[s.job.key], target) for s in todo}
    if target.kind == "slurm":
        slurm.cancel(stuck)
        _submit_slurm([s.job for s in todo], states, payloads, ledger, target)
        ledger.save()
        return None
    for s in todo:  # queued behind this driver: pending while it lives
        ledger.record(
            s.job, executor="local", job_id=str(os.getpid()), queued=True, run_id=run_ids[s.job.key]
        )
    ledger.save()
    return LocalJobs(LocalQueue(target.kind, [s.job for s in todo]), payloads, ledger, target)


def _payload(job: Job, run_id: str | None, target: Target) -> Payload:
    """What the job's CellJob needs, in plain data (paths absolute: it runs elsewhere)."""
    init_from = job.config.train.init_from
    return Payload(
        config_files=[str(p) for p in job.config_files],
        overrides={
            **job.overrides,
            "name": job.config.name,
            "output_dir": str(Path(job.config.run_dir).resolve()),
            **({"train.init_from": str(Path(init_from).resolve())} if init_from else {}),
        },
        experiment=target.experiment,
        run_name=job.run_name,
        run_id=run_id,
        tags=job.tags(target.sweep),
        tracking_uri=target.uri,
        threads=target.res.cpus_per_task,
        cwd=str(Path.cwd()),
        env=target.env,
        engine=job.engine,
    )


def _reopen_runs(todo: list[JobState]) -> dict[str, str | None]:
    """The run each job continues: a failed job's old run, SCHEDULED again; None for the
    others, whose run the job creates when it starts training (its start time then)."""
    from pss.tracking.logger import Tracker, retry

    run_ids: dict[str, str | None] = {}
    for state in todo:
        if state.run_id:
            tracker = Tracker(state.run_id)
            retry(tracker.mlflow.update_run, state.run_id, status=SCHEDULED)
        run_ids[state.job.key] = state.run_id
    return run_ids


@dataclass
class LocalJobs:
    """The jobs this driver runs as its own children (local and debug executors): the queue
    says which may start; this starts them, or fails the runs of those that never will."""

    queue: LocalQueue
    payloads: dict[str, Payload]
    ledger: Ledger
    target: Target

    def start_ready(self, limit: int) -> None:
        """Start the jobs that may start, up to ``limit`` running at once."""
        while True:
            for job, reason in self.queue.dropped():
                self._drop(job, reason)
            job = self.queue.next_job(limit)
            if job is None:
                return
            self.queue.started(job, self._start(job))

    def _start(self, job: Job):
        t = self.target
        payload = self.payloads[job.key]
        [handle] = submit(t.kind, t.folder, t.res, t.profile, [CellJob(payload)], t.pdb)
        job_id, when = str(handle.job_id), time.time()
        self.ledger.record(
            job, executor=t.kind, job_id=job_id, run_id=payload.run_id, submitted=when
        )
        self.ledger.save()
        return handle

    def _drop(self, job: Job, reason: str) -> None:
        """A job that will never start: a failed run says why; its ledger entry queues nothing."""
        from pss.tracking.logger import Tracker

        p = self.payloads[job.key]
        if p.run_id:
            tracker = Tracker(p.run_id)
        else:
            tracker = Tracker.create(p.experiment, p.run_name, p.tags)
        tracker.fail(reason + "\n")
        self.ledger.record(job, executor=self.target.kind, job_id=None, run_id=tracker.run_id)
        self.ledger.save()


def _submit_slurm(
    todo: list[Job],
    states: list[JobState],
    payloads: dict[str, Payload],
    ledger: Ledger,
    target: Target,
) -> None:
    """Jobs that wait for nothing as job arrays; the others each with ``afterok``, held
    until their ids are in the ledger (see the module's docstring)."""
    by_key = {s.job.key: s for s in states}
    submitted: dict[str, str] = {}
    where = (target.folder, target.res, target.profile)

    def intend(jobs: list[Job], **extra) -> str:
        """Record the jobs under a new submission token, before sbatch."""
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

    def record(job: Job, job_id: str) -> None:
        submitted[job.key] = job_id
        ledger.record(job, **{**(ledger.get(job) or {}), "job_id": job_id})
        log.info("submitted %s as SLURM job %s", job.key, job_id)

    def release(batch: list[Job]) -> None:
        slurm.release([submitted[j.key] for j in batch])
        for job in batch:
            ledger.record(job, **{**(ledger.get(job) or {}), "released": True})
        ledger.save()

    first = [j for j in todo if not j.after]
    size = slurm.max_array_size() or max(len(first), 1)  # larger than the cluster allows: split
    for start in range(0, len(first), size):
        array = first[start : start + size]
        name = submission_name(intend(array))
        cells = [CellJob(payloads[j.key]) for j in array]
        for job, job_id in zip(array, slurm.submit_array(*where, name, cells)):
            record(job, job_id)
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
        name = submission_name(intend([job], depends_on=":".join(parents) or None))
        record(job, slurm.submit_after(*where, name, CellJob(payloads[job.key]), parents))
        ledger.save()
        release([job])


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
        orphans = slurm.named(sorted(unsaved))
        if orphans:
            log.warning("cancelling %d held jobs of an interrupted submission", len(orphans))
            slurm.cancel(orphans)
    if unreleased:
        ids = [str(ledger.get(job)["job_id"]) for job in unreleased]
        log.warning("releasing %d held jobs of an interrupted submission", len(ids))
        slurm.release(ids)
        for job in unreleased:
            ledger.record(job, **{**(ledger.get(job) or {}), "released": True, "adopted": True})
    ledger.save()
