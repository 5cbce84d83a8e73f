"""Where sweep and search jobs run: submitit executors, and the driver's local job queue.

    kind = resolve_executor("auto")            # "slurm" where sbatch exists, else "local"
    executor = make_executor(kind, folder, resources, profile)

SLURM jobs are submitted and left to the cluster (the driver only polls their
state). Local and debug jobs are children of the driver: a :class:`LocalQueue`
starts them ``limit`` at a time, each once the jobs it waits for have
finished, and collects their results. Both sweeps (:mod:`pss.sweep.submit`) and
searches (:mod:`pss.sweep.search`) build their executors and report failed
jobs through this module.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import submitit

from pss.sweep.profile import ClusterProfile
from pss.sweep.spec import Job, Resources

log = logging.getLogger(__name__)
KINDS = ("auto", "slurm", "local", "debug")


def resolve_executor(name: str) -> str:
    """'auto' -> 'slurm' where ``sbatch`` exists, else 'local'; other names unchanged."""
    if name == "auto":
        return "slurm" if shutil.which("sbatch") else "local"
    return name


def make_executor(
    kind: str, folder: Path, res: Resources, profile: ClusterProfile
) -> submitit.Executor:
    """A submitit executor for ``kind`` (slurm, local or debug) writing logs under ``folder``."""
    if kind == "slurm":
        return slurm_executor(folder, res, profile)
    if kind == "debug":
        return submitit.DebugExecutor(folder=folder / "%j")
    executor = submitit.LocalExecutor(folder=folder / "%j")
    executor.update_parameters(timeout_min=res.timeout_min)
    return executor


def slurm_executor(folder: Path, res: Resources, profile: ClusterProfile) -> submitit.AutoExecutor:
    """One task per GPU (or one on a CPU-only profile) unless the profile says how many,
    the profile's partition, account and set-up lines."""
    executor = submitit.AutoExecutor(
        folder=folder / "%j", cluster="slurm", slurm_max_num_timeout=profile.max_requeues
    )
    params: dict[str, Any] = {
        "timeout_min": res.timeout_min,
        "nodes": res.nodes,
        "tasks_per_node": profile.tasks_per_node or max(res.gpus_per_node, 1),
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


def cancel_slurm(job_ids: Iterable[str]) -> None:
    """scancel jobs this driver submitted earlier (e.g. stuck behind a failed dependency)."""
    ids = [str(i) for i in job_ids]
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, timeout=60, check=False)


def max_array_size() -> int | None:
    """The most tasks one job array may have on this cluster (MaxArraySize), if known.

    Array task indices run from 0 to MaxArraySize - 1; submitit does not split a
    batch that is larger, so sweeps do (pss.sweep.launch).
    """
    try:
        out = subprocess.run(
            ["scontrol", "show", "config"], capture_output=True, text=True, timeout=60
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "MaxArraySize" and value.strip().isdigit():
            return int(value.strip())
    return None


def failure(handle: submitit.Job) -> str | None:
    """None if a finished job succeeded, else the last line of its error."""
    try:
        handle.result()
    except Exception as exc:  # noqa: BLE001 - whatever the job raised, as one line
        lines = str(exc).strip().splitlines()
        return lines[-1] if lines else type(exc).__name__
    return None


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

    ``submit(job)`` is called for each job when it may start (returns its
    submitit handle); a job waits while a job it depends on (``job.parent_keys``)
    is queued or running, and is dropped, like SLURM's ``afterok``, when one
    of them failed: ``drop(job, reason)`` is then called instead.
    """

    def __init__(
        self,
        kind: str,
        jobs: list[Job],
        submit: Callable[[Job], submitit.Job],
        drop: Callable[[Job, str], None],
    ) -> None:
        self.kind = kind
        self.queue = list(jobs)
        self.submit = submit
        self.drop = drop
        self.running: dict[str, submitit.Job] = {}
        self.failed: set[str] = set()

    @property
    def busy(self) -> bool:
        return bool(self.queue or self.running)

    def start_ready(self, limit: int) -> None:
        """Start queued jobs whose dependencies finished, up to ``limit`` running at once."""
        for job in list(self.queue):
            if len(self.running) >= limit:
                return
            parents = job.parent_keys
            failed = [p for p in parents if p in self.failed]
            if failed:
                self.queue.remove(job)
                self.failed.add(job.key)
                reason = f"not started: {', '.join(failed)} failed"
                log.error("%s %s", job.key, reason)
                self.drop(job, reason)
                continue
            waiting = {j.key for j in self.queue} | set(self.running)
            if any(p in waiting for p in parents):
                continue
            self.queue.remove(job)
            self.running[job.key] = self.submit(job)
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
