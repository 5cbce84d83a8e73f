"""Every SLURM command the suite runs: submitting (through submitit), releasing, cancelling,
and reading the queue and the cluster's limits.

    executor(folder, resources, profile)          # submitit's, with the profile's settings
    handles = submit(folder, resources, profile, jobs)                    # a search's workers
    ids = submit_array(folder, resources, profile, "pss-<token>", jobs)   # held
    release(ids)
    queue()                                       # {job id: (state, reason)} of this user

Submissions go out held (``--hold``) under a job name; the caller releases them once it
has saved their ids (:mod:`pss.sweep.driver` says why). Jobs that wait for nothing go as
one job array; a job that waits for others goes alone, with an ``afterok`` dependency.
Every command has a timeout: a busy controller does not hang a driver.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import submitit

from pss.sweep.profile import ClusterProfile
from pss.sweep.schema import Resources

TIMEOUT_S = 60
QUEUE_TIMEOUT_S = 120  # squeue of all this user's jobs


def executor(folder: Path, res: Resources, profile: ClusterProfile) -> submitit.AutoExecutor:
    """submitit's SLURM executor writing under ``folder``: one task per GPU (or one on a
    CPU-only profile) unless the profile says how many, the profile's partition, account
    and set-up lines. A profile SLURM refuses fails here, before anything is submitted."""
    made = submitit.AutoExecutor(
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
    made.update_parameters(**params)
    return made


def submit(
    folder: Path, res: Resources, profile: ClusterProfile, jobs: list[Callable]
) -> list[submitit.Job]:
    """Submit ``jobs`` to start as soon as SLURM can, one job each; their submitit handles
    (a search's workers, which the caller waits for)."""
    made = executor(folder, res, profile)
    return [made.submit(job) for job in jobs]


def _held(
    folder: Path, res: Resources, profile: ClusterProfile, name: str, after: list[str]
) -> submitit.AutoExecutor:
    """A fresh executor for one held submission (a dependency, once set, stays set)."""
    held = executor(folder, res, profile)
    held.update_parameters(name=name, slurm_additional_parameters={"hold": True})
    if after:
        held.update_parameters(slurm_dependency="afterok:" + ":".join(after))
    return held


def submit_array(
    folder: Path, res: Resources, profile: ClusterProfile, name: str, jobs: list[Callable]
) -> list[str]:
    """Submit ``jobs`` held, as one job array named ``name``; their ids (``<array>_<i>``)."""
    array = _held(folder, res, profile, name, [])
    with array.batch():
        handles = [array.submit(job) for job in jobs]
    return [str(h.job_id) for h in handles]


def submit_after(
    folder: Path,
    res: Resources,
    profile: ClusterProfile,
    name: str,
    job: Callable,
    after: list[str],
) -> str:
    """Submit one job held, named ``name``, to start once the jobs ``after`` finished
    (``afterok``; none: it waits for nothing); its id."""
    return str(_held(folder, res, profile, name, after).submit(job).job_id)


def release(job_ids: list[str]) -> None:
    """Let held jobs run (``scontrol release``)."""
    if job_ids:
        _run(["scontrol", "release", *job_ids])


def cancel(job_ids: Iterable[str]) -> None:
    """Cancel jobs (``scancel``): e.g. ones stuck behind a failed dependency."""
    ids = [str(i) for i in job_ids]
    if ids:
        _run(["scancel", *ids])


def named(names: list[str]) -> list[str]:
    """Ids of the jobs (array tasks) SLURM still has queued under these job names."""
    out = _run(["squeue", "-h", "-r", "-o", "%i", f"--name={','.join(names)}"]).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


def queue() -> dict[str, tuple[str, str]] | None:
    """(state, reason) of each of this user's jobs the controller knows (``squeue -r``);
    None when squeue did not answer (a busy controller), which proves nothing."""
    try:  # all of this user's jobs: `-j` fails as a whole when one id has aged out
        out = _run(["squeue", "-h", "-r", "--me", "-o", "%i %T %r"], QUEUE_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    states = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2:
            states[parts[0]] = (parts[1], parts[2] if len(parts) > 2 else "")
    return states


def max_array_size() -> int | None:
    """The most tasks one job array may have on this cluster (MaxArraySize), if known.

    Array task indices run from 0 to MaxArraySize - 1; submitit does not split a
    batch that is larger, so the driver does.
    """
    try:
        out = _run(["scontrol", "show", "config"]).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "MaxArraySize" and value.strip().isdigit():
            return int(value.strip())
    return None


def _run(argv: list[str], timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
