"""Where sweep and search jobs run: submitit's executors, and the order of local jobs.

    kind = resolve_executor("auto")            # "slurm" where sbatch exists, else "local"
    handles = submit(kind, folder, resources, profile, [job, ...])

SLURM jobs are submitted and left to the cluster (:mod:`pss.sweep.slurm`; the driver
only polls their state). Debug jobs run in the driver's own process, one at a time, a
failure reported like any other job's (its traceback in the job's log file); only with
``post_mortem`` (``--pdb``) does submitit's debugger open on it. Local and debug jobs
are children of the driver: a
:class:`LocalQueue` says which may start (``limit`` at a time, each once the jobs it
waits for have finished) and which never will. Both sweeps (:mod:`pss.sweep.driver`)
and searches (:mod:`pss.sweep.search`) submit and report failed jobs through this
module.
"""

from __future__ import annotations

import logging
import shutil
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit

from pss.sweep import slurm
from pss.sweep.expand import Job
from pss.sweep.profile import ClusterProfile
from pss.sweep.schema import Resources

log = logging.getLogger(__name__)
KINDS = ("auto", "slurm", "local", "debug")


def resolve_executor(name: str) -> str:
    """'auto' -> 'slurm' where ``sbatch`` exists, else 'local'; other names unchanged."""
    if name == "auto":
        return "slurm" if shutil.which("sbatch") else "local"
    return name


def submit(
    kind: str,
    folder: Path,
    res: Resources,
    profile: ClusterProfile,
    jobs: list[Callable],
    post_mortem: bool = False,
) -> list[submitit.Job]:
    """Start ``jobs`` now on ``kind`` (slurm, local or debug), logs under ``folder``;
    their submitit handles. A debug job runs in this process, when its result is asked;
    ``post_mortem``: a failing one opens a debugger there (else it is reported)."""
    if kind == "slurm":
        return slurm.submit(folder, res, profile, jobs)
    if kind != "debug":
        executor = submitit.LocalExecutor(folder=folder / "%j")
        executor.update_parameters(timeout_min=res.timeout_min)
        return [executor.submit(job) for job in jobs]
    debug = submitit.DebugExecutor(folder=folder / "%j")
    if post_mortem:
        return [debug.submit(job) for job in jobs]
    handles = []
    for job in jobs:
        caught = Caught(job)
        handles.append(debug.submit(caught))
        caught.log = Path(handles[-1].paths.stderr)
    return handles


@dataclass
class Failed:
    """What a debug job raised, returned instead: submitit's DebugJob opens pdb on a raise."""

    error: str  # the exception's last line


class Caught:
    """A debug job whose exception is returned as :class:`Failed`, its traceback written
    to the job's log file (``log``, set once submitted)."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.log: Path | None = None

    def __call__(self) -> Any:
        try:
            return self.fn()
        except Exception as exc:  # noqa: BLE001 - reported by failure(), as other jobs'
            if self.log is not None:
                self.log.parent.mkdir(parents=True, exist_ok=True)
                with open(self.log, "a") as handle:
                    handle.write(traceback.format_exc())
            return Failed(_last_line(exc))


def _last_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[-1] if lines else type(exc).__name__


def failure(handle: submitit.Job) -> str | None:
    """None if a finished job succeeded, else the last line of its error."""
    try:
        result = handle.result()
    except Exception as exc:  # noqa: BLE001 - whatever the job raised, as one line
        return _last_line(exc)
    return result.error if isinstance(result, Failed) else None


def report_failures(handles: Iterable[tuple[str, submitit.Job]]) -> list[str]:
    """Log one line per failed job (``name: error``); returns the names that failed."""
    failed = []
    for name, handle in handles:
        line = failure(handle)
        if line is not None:
            log.error("%s failed: %s", name, line)
            failed.append(name)
    return failed


class LocalQueue:
    """Jobs that run on this machine as children of the driver, in dependency order.

    The driver asks :meth:`next_job` for a job that may start (none while ``limit``
    run, or while a job it depends on, ``job.parent_keys``, is queued or running),
    starts it and hands its submitit handle to :meth:`started`; :meth:`dropped` takes
    out the jobs that never will, like SLURM's ``afterok``, because a job they depend
    on failed; :meth:`poll` collects the jobs that ended.
    """

    def __init__(self, kind: str, jobs: list[Job]) -> None:
        self.kind = kind
        self.queue = list(jobs)
        self.running: dict[str, submitit.Job] = {}
        self.failed: set[str] = set()

    @property
    def busy(self) -> bool:
        return bool(self.queue or self.running)

    def dropped(self) -> list[tuple[Job, str]]:
        """The queued jobs that depend on a failed one, taken out (failed too), with why."""
        out = []
        for job in list(self.queue):  # in stage order: a dropped job's children come later
            failed = [p for p in job.parent_keys if p in self.failed]
            if failed:
                self.queue.remove(job)
                self.failed.add(job.key)
                reason = f"not started: {', '.join(failed)} failed"
                log.error("%s %s", job.key, reason)
                out.append((job, reason))
        return out

    def next_job(self, limit: int) -> Job | None:
        """The first queued job that may start now, taken out of the queue; None if none
        may (``limit`` jobs run, or each waits for another)."""
        if len(self.running) >= limit:
            return None
        waiting = {j.key for j in self.queue} | set(self.running)
        for job in self.queue:
            if not any(p in waiting for p in job.parent_keys):
                self.queue.remove(job)
                return job
        return None

    def started(self, job: Job, handle: submitit.Job) -> None:
        self.running[job.key] = handle
        if self.kind == "debug":  # the debug executor runs the job here, on result()
            self.poll()

    def poll(self) -> None:
        """Collect the jobs that have ended; a failed one is logged and remembered."""
        ended = [
            (key, handle)
            for key, handle in self.running.items()
            if self.kind == "debug" or handle.done()
        ]
        for key, _ in ended:
            del self.running[key]
        self.failed.update(report_failures(ended))
