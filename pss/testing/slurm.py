"""A real SLURM cluster's view of a test's jobs (slurm/dev, started by `make test`)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from pss.testing.waiting import wait_for


def require_cluster() -> None:
    """Fail (never skip) unless slurm/dev is up and this process is configured for it."""
    assert os.environ.get("SLURM_CONF"), "run `bash slurm/dev/start.sh` and source its env.sh"
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip(), f"the SLURM cluster is not up: {out}"


def cancel_jobs_submitted_from(folder: Path) -> None:
    """Cancel the jobs still queued or running whose working directory is ``folder``."""
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%Z"], capture_output=True, text=True)
    ours = [
        job_id
        for job_id, _, where in (line.partition("|") for line in out.stdout.splitlines())
        if where and Path(where).resolve() == folder.resolve()
    ]
    if ours:
        subprocess.run(["scancel", *ours], capture_output=True)


def scontrol_job(job_id: str) -> dict[str, str]:
    """`scontrol show job` of one job, as {field: value}."""
    out = subprocess.run(
        ["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, check=True
    ).stdout
    return dict(f.split("=", 1) for f in out.split() if "=" in f)


def sacct(job_ids: list[str], *fields: str, duplicates: bool = False) -> list[dict[str, str]]:
    """SLURM accounting records of these jobs (allocations only; every requeued start too
    with ``duplicates``)."""
    argv = ["sacct", "-X", "-n", "-P", "-j", ",".join(job_ids), "-o", ",".join(fields)]
    out = subprocess.run([*argv, *(["-D"] if duplicates else [])], capture_output=True,
                         text=True, check=True).stdout
    return [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line]


ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL")


def wait_for_requeue(job_id: str, log_folder: Path | None = None) -> None:
    """Wait until SLURM has requeued the job (a lasting accounting record, not a state
    that may pass between two polls, then let it start at once); fail as soon as the job
    ended instead, with its states and the end of its log (``log_folder``: submitit's)."""
    def requeued_or_ended() -> str:
        states = [r["State"].split()[0] for r in sacct([job_id], "State", duplicates=True)]
        if "REQUEUED" in states:
            return "requeued"
        return "ended" if any(s in ENDED for s in states) else ""

    if wait_for(requeued_or_ended, f"the requeue of job {job_id}", 600) == "ended":
        logs = sorted(Path(log_folder).glob(f"{job_id}*/*_log.err")) if log_folder else []
        tail = logs[-1].read_text()[-3000:] if logs else ""
        states = sacct([job_id], "JobID", "State", duplicates=True)
        raise AssertionError(f"job {job_id} ended without a requeue: {states}\n{tail}")
    # A requeued job waits for its begin time; let it start now if it still waits.
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"],
                   capture_output=True)
