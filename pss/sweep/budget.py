"""What a sweep costs, as the sweep CLI shows it: the dry-run's estimates, ``--budget``'s
verdict, and ``status``'s and the report's GPU-hours spent against estimated.

    costs = sweep_cost(loaded, jobs, profile, "slurm/v100x8.yaml", smoke=False, parallel=16)
    print_dry_run(jobs, costs, as_json=False, cluster="slurm/v100x8.yaml")
    check_budget(costs, 500.0, "sweeps/table1.yaml")    # a UserError over the budget
    print(format_spent(cell_costs(costs)))               # status: spent against estimated

The estimates are :mod:`pss.sweep.cost`'s (learned, measured, derived or unknown); the
calibration a profile has beside it is :mod:`pss.sweep.calibration`'s. No torch and no
MLflow client: the store is read directly (:mod:`pss.sweep.state`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pss.errors import UserError
from pss.sweep import calibration
from pss.sweep.cost import SOURCES, Estimate, estimate_jobs, finished_hours, spent_hours, wall_hours
from pss.sweep.expand import Job
from pss.sweep.profile import ClusterProfile, effective_resources
from pss.sweep.schema import LoadedSpec
from pss.sweep.state import FAILED_S, MISSING_S, JobState, Ledger, sweep_states


@dataclass
class SweepCost:
    """What a sweep's jobs cost (pss.sweep.cost): each job's estimate and state, and what
    a job gets (GPUs, on ``parallel`` jobs at once)."""

    states: list[JobState]
    estimates: dict[str, Estimate]  # by job key
    gpus_per_job: int  # what a job's GPU-hours are spread over: its GPUs, or its cores
    parallel: int
    device: str = "GPU"  # what gpus_per_job counts: GPUs, or CPU cores of a CPU-only job

    @property
    def todo(self) -> list[JobState]:
        """The jobs a run of the sweep would submit: failed and missing ones."""
        return [s for s in self.states if s.state in (FAILED_S, MISSING_S)]

    def total(self, states: list[JobState]) -> tuple[float, list[JobState]]:
        """(GPU-hours of the jobs with an estimate, the jobs without one)."""
        known = [self.estimates[s.job.key].gpu_hours for s in states]
        unknown = [s for s, h in zip(states, known) if h is None]
        return sum(h for h in known if h is not None), unknown

    def sources(self, states: list[JobState]) -> str:
        """'derived', 'learned 2, derived 8', ... for these jobs."""
        return sources([self.estimates[s.job.key] for s in states])


def sweep_cost(
    loaded: LoadedSpec,
    jobs: list[Job],
    profile: ClusterProfile,
    cluster: str | Path | None,
    smoke: bool,
    parallel: int,
    own: bool = True,
) -> SweepCost:
    """Each job's state (from the store) and estimate, with the calibration beside the
    profile file ``cluster`` (if any); FLOPs are counted only for jobs that need them (no
    finished run or calibration of their shape) on a profile that declares its GPU.
    ``own=False``: finished jobs estimated without their own run (``status``)."""
    experiment = loaded.experiment(smoke)
    states = sweep_states(experiment, jobs, Ledger.of(experiment))
    res = effective_resources(loaded.spec.resources, profile, smoke)
    processes = res.nodes * max(res.gpus_per_node, 1)  # a CPU-only job: one process a node
    estimates = estimate_jobs(
        jobs, finished_hours(states), profile.gpu, calibration.read(cluster), processes, own
    )
    if res.gpus_per_node:
        return SweepCost(states, estimates, processes, parallel)
    # On a CPU, GPU-hours are CPU (core) hours: a job's are spread over its cores.
    return SweepCost(states, estimates, res.nodes * res.cpus_per_task, parallel, "CPU core")


def hours_text(hours: float | None) -> str:
    """GPU-hours as the CLI prints them: '?' unknown, 1 decimal under 100 (3 significant
    digits under 1: a smoke cell's few seconds), none above."""
    if hours is None:
        return "?"
    if hours < 1:
        return f"{hours:.3g}"
    return f"{hours:,.1f}" if hours < 100 else f"{hours:,.0f}"


def wall_text(hours: float) -> str:
    """Wall-clock hours as the CLI prints them, in days too from half a day on."""
    return f"{hours_text(hours)} h" + (f" ({hours / 24:.1f} days)" if hours >= 12 else "")


def print_dry_run(jobs: list[Job], costs: SweepCost, as_json: bool, cluster: str | None) -> None:
    """The jobs, each with its estimate; then the total and the wall-clock time of the
    jobs still to run (``--dry-run``, docs/cli.md)."""
    if as_json:
        out = []
        for job in jobs:
            estimate = costs.estimates[job.key]
            out.append(
                {**job.as_json(), "gpu_hours": estimate.gpu_hours, "cost_source": estimate.source}
            )
        print(json.dumps(out, indent=1))
        return
    states = {s.job.key: s for s in costs.states}
    for job in jobs:
        e = costs.estimates[job.key]
        state = states[job.key].state
        print(
            f"{job.key}  {job.fingerprint}  {json.dumps(job.overrides)}\n"
            f"    {hours_text(e.gpu_hours)} GPU-h ({e.source}: {e.detail})"
            + ("" if state == MISSING_S else f"  [{state}]")
        )
    todo = costs.todo
    hours, unknown = costs.total(todo)
    known = [h for s in todo if (h := costs.estimates[s.job.key].gpu_hours) is not None]
    wall = wall_hours(known, costs.gpus_per_job, costs.parallel)
    plural = "" if costs.gpus_per_job == 1 else "s"
    at = (
        f"{cluster + ': ' if cluster else ''}{costs.gpus_per_job} {costs.device}{plural} a "
        f"job, {costs.parallel} job{'s' if costs.parallel != 1 else ''} at once"
    )
    if not todo:
        print(f"estimate: nothing to run ({len(jobs)} jobs finished)")
    elif len(unknown) == len(todo):
        print(f"estimate: unknown for the {len(todo)} of {len(jobs)} jobs still to run ({at})")
    else:
        some = f" and {len(unknown)} jobs of unknown cost" if unknown else ""
        print(
            f"estimate: {hours_text(hours)} GPU-hours ({costs.sources(todo)}) for the "
            f"{len(todo)} of {len(jobs)} jobs still to run{some}; wall clock about "
            f"{wall_text(wall)}{' or more' if unknown else ''} at {at}"
        )


def check_budget(costs: SweepCost, budget: float, spec: str) -> None:
    """``--budget``: a UserError when the jobs to submit are estimated over ``budget``
    GPU-hours, or some of them at unknown cost."""
    todo = costs.todo
    hours, unknown = costs.total(todo)
    if unknown:
        names = ", ".join(s.job.key for s in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise UserError(
            f"--budget {budget:g} GPU-hours: {len(unknown)} of the {len(todo)} jobs to run "
            f"have no estimate ({names}{more}): give a cluster profile that declares its "
            "gpu: or has a calibration (--cluster), or run without --budget",
            spec,
        )
    if hours > budget:
        raise UserError(
            f"estimated {hours_text(hours)} GPU-hours ({costs.sources(todo)}) for the "
            f"{len(todo)} jobs to run, over the budget of {budget:g} GPU-hours (--budget)",
            spec,
        )


# --------------------------------------------------------------------- spent against estimated


@dataclass(frozen=True)
class CellCost:
    """One cell's GPU-hours: ``spent`` by its runs so far (finished or not), ``estimated``
    for all its jobs (None: some job of unknown cost), and where the estimates came from."""

    cell: str
    jobs: int
    spent: float
    estimated: float | None
    sources: str


def cell_costs(costs: SweepCost) -> list[CellCost]:
    """Per cell (its stages and seeds together), in the sweep's order."""
    spent = {s.job.key: h for s in costs.states if (h := spent_hours(s)) is not None}
    return costs_by_cell([s.job for s in costs.states], spent, costs.estimates)


def costs_by_cell(
    jobs: list[Job], spent: dict[str, float], estimates: dict[str, Estimate]
) -> list[CellCost]:
    """Per cell of ``jobs``, in their order: the GPU-hours its runs ``spent`` (by job key)
    and its jobs' ``estimates`` (by job key) added up."""
    by_cell: dict[str, list[Job]] = {}
    for job in jobs:
        by_cell.setdefault(job.cell, []).append(job)
    out = []
    for cell, cell_jobs in by_cell.items():
        hours = [estimates[j.key].gpu_hours for j in cell_jobs]
        estimated = None if None in hours else sum(h for h in hours if h is not None)
        used = sources([estimates[j.key] for j in cell_jobs])
        total_spent = sum(spent.get(j.key, 0.0) for j in cell_jobs)
        out.append(CellCost(cell, len(cell_jobs), total_spent, estimated, used))
    return out


def sources(estimates: list[Estimate]) -> str:
    """'derived', 'learned 2, derived 8', ... for these estimates."""
    counts = {src: 0 for src in SOURCES}
    for e in estimates:
        counts[e.source] += 1
    used = [(src, n) for src, n in counts.items() if n]
    if len(used) == 1:
        return used[0][0]
    return ", ".join(f"{src} {n}" for src, n in used)


def totals(cells: list[CellCost]) -> CellCost:
    """All cells together (estimated None when some cell's is unknown)."""
    known = [c.estimated for c in cells]
    estimated = None if any(e is None for e in known) else sum(e for e in known if e is not None)
    sources = sorted({c.sources for c in cells})
    jobs, spent = sum(c.jobs for c in cells), sum(c.spent for c in cells)
    return CellCost("total", jobs, spent, estimated, "; ".join(sources))


def spent_ratio(cost: CellCost) -> str:
    """Spent over estimated in percent ('-' where either is missing)."""
    if cost.estimated is None or cost.estimated <= 0 or cost.spent <= 0:
        return "-"
    return f"{100 * cost.spent / cost.estimated:.0f}%"


def format_spent(cells: list[CellCost]) -> str:
    """``status``'s cost table: per cell and in total, GPU-hours spent and estimated."""
    header = ("cell", "jobs", "GPU-h spent", "GPU-h estimated", "spent/est.", "estimate from")
    rows = [
        (c.cell, str(c.jobs), hours_text(c.spent), hours_text(c.estimated))
        + (spent_ratio(c), c.sources)
        for c in [*cells, totals(cells)]
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)
