"""Where each job of a sweep stands: finished, running, pending, failed or missing.

The truth is the MLflow run of the job (matched by tags and fingerprint); the
sweep's ledger (``ledger.json`` beside its outputs) adds the scheduler job id,
which tells a run that is still going from one whose job died without saying
so (killed, out of memory, node failure).
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pss import contract
from pss.contract import FAILED, FINISHED, KILLED, RUNNING
from pss.sweep import process, slurm
from pss.sweep.expand import Job
from pss.tracking.store import StoredRun, read_runs

STATES = ("finished", "running", "pending", "failed", "missing")
FINISHED_S, RUNNING_S, PENDING_S, FAILED_S, MISSING_S = STATES


LEDGER = "ledger.json"  # in the sweep's folder (contract.sweep_dir)
# A pending SLURM job whose afterok dependency failed waits forever for it.
NEVER = "DependencyNeverSatisfied"
DEPENDENCY_FAILED = f"a job it depends on failed (SLURM: {NEVER})"


class Ledger:
    """Scheduler job ids of a sweep's submissions, in a small JSON file.

    Several processes may keep one (a driver running local jobs, another driver
    resubmitting): :meth:`save` merges this process's new entries into what the
    file holds now, under a lock, so nobody's entries are lost.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, dict[str, Any]] = self._read()
        self._changed: set[str] = set()

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def reload(self) -> None:
        """What the file holds now (another driver may have written it), plus unsaved entries."""
        self.entries = {**self._read(), **{k: self.entries[k] for k in self._changed}}

    @classmethod
    def of(cls, experiment: str) -> Ledger:
        """The ledger of a sweep's experiment, in its folder under contract.OUTPUT_ROOT."""
        return cls(contract.sweep_dir(experiment) / LEDGER)

    def record(self, job: Job, **entry: Any) -> None:
        self.entries[job.key] = {"fingerprint": job.fingerprint, **entry}
        self._changed.add(job.key)

    def get(self, job: Job) -> dict[str, Any] | None:
        entry = self.entries.get(job.key)
        return entry if entry and entry.get("fingerprint") == job.fingerprint else None

    def save(self) -> None:
        """Write this process's new entries into the file (atomically, merged, locked)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.reload()
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, suffix=".tmp")
            with os.fdopen(fd, "w") as handle:
                json.dump(self.entries, handle, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        self._changed.clear()


@dataclass
class JobState:
    job: Job
    state: str
    run_id: str | None = None
    scheduler_id: str | None = None
    reason: str = ""
    metrics: dict[str, float] | None = None
    run: StoredRun | None = None  # the run the state was read from


def sweep_states(experiment: str, jobs: list[Job], ledger: Ledger) -> list[JobState]:
    """One :class:`JobState` per job, from one read of the store and one squeue call
    (:func:`pss.sweep.slurm.queue`)."""
    runs: dict[tuple[str, str, str, str], list[StoredRun]] = {}
    for run in read_runs(experiment):
        tags = run.tags
        key = (
            tags.get(contract.TAG_CELL, ""),
            tags.get(contract.TAG_STAGE, contract.NO_STAGE),
            tags.get(contract.TAG_SEED, ""),
            tags.get(contract.TAG_FINGERPRINT, ""),
        )
        runs.setdefault(key, []).append(run)  # newest first
    slurm_ids = [
        e["job_id"]
        for j in jobs
        if (e := ledger.get(j)) and e.get("executor") == "slurm" and e.get("job_id")
    ]
    live = slurm.queue() if slurm_ids else {}
    known = live or {}
    states = []
    for job in jobs:
        key = (job.cell, contract.stage_tag(job.stage), str(job.seed), job.fingerprint)
        found = runs.get(key, [])
        entry = ledger.get(job) or {}
        if entry.get("token") and not entry.get("job_id"):
            entry = {}  # its driver stopped before recording the job: not submitted
        sched = entry.get("job_id")
        done = next((r for r in found if r.status == FINISHED), None)
        if done is not None:
            states.append(
                JobState(job, FINISHED_S, done.run_id, sched, metrics=done.metrics, run=done)
            )
            continue
        if not found:  # a job creates its run when it starts
            alive = _job_alive(entry, live)
            if alive and known.get(str(sched), ("", ""))[1] == NEVER:
                states.append(JobState(job, FAILED_S, None, sched, reason=DEPENDENCY_FAILED))
            else:
                states.append(JobState(job, PENDING_S if alive else MISSING_S, None, sched))
            continue
        run = found[0]
        status = run.status
        alive = _job_alive(entry, live)
        queued, why = known.get(str(sched), ("", ""))
        if alive and why == NEVER:
            states.append(
                JobState(job, FAILED_S, run.run_id, sched, reason=DEPENDENCY_FAILED)
            )
        elif alive:
            state = RUNNING_S if status == RUNNING and queued in ("", "RUNNING") else PENDING_S
            states.append(
                JobState(job, state, run.run_id, sched, reason=queued.lower(), run=run)
            )
        elif status == FAILED:
            states.append(JobState(job, FAILED_S, run.run_id, sched, reason="run failed"))
        elif status == KILLED:
            reason = "killed (preempted or cancelled) and not requeued"
            states.append(JobState(job, FAILED_S, run.run_id, sched, reason=reason))
        elif entry:
            reason = "its job ended without finishing the run"
            states.append(JobState(job, FAILED_S, run.run_id, sched, reason=reason))
        else:
            states.append(JobState(job, MISSING_S, run.run_id, sched))
    return states


def _job_alive(entry: dict[str, Any], live: dict[str, tuple[str, str]] | None) -> bool:
    if not entry:
        return False
    if entry.get("executor") == "slurm":
        return live is None or str(entry.get("job_id")) in live  # unknown: assume alive
    if entry.get("executor") == "local":
        return process.alive(str(entry.get("job_id")))
    return False


def format_table(states: list[JobState]) -> str:
    """A plain-text status table (cell, stage, seed, state, scheduler id, run id, mAP)."""
    header = ("cell", "stage", "seed", "state", "job id", "run id", "mAP", "note")
    rows = []
    for s in states:
        metrics = s.metrics or {}
        mode = contract.primary_mode(s.job.config.model.name)
        value = metrics.get(contract.metric_name(contract.MAP, mode))
        rows.append(
            (
                s.job.cell,
                s.job.stage or "-",
                str(s.job.seed),
                s.state,
                s.scheduler_id or "-",
                (s.run_id or "-")[:12],
                f"{value:.1f} ({mode})" if value is not None else "-",
                s.reason,
            )
        )
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    counts = {}
    for s in states:
        counts[s.state] = counts.get(s.state, 0) + 1
    lines.append(", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    return "\n".join(lines)
