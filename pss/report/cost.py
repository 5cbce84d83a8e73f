"""The report's cost table: each cell's GPU-hours estimated against spent, and the total.

    table = cost_table(loaded, smoke=True, runs=fetch_runs("table5-smoke"), cluster=None)

*Spent* is what the cell's runs logged (``gpu_hours``: every run of each of its jobs,
finished or not, all stages and seeds); *estimated* is what the dry-run would say of the
cell's jobs without their own runs (:func:`pss.sweep.cost.estimate_jobs` with
``own=False``: learned from the other seeds of its shape, else measured by the profile's
calibration, else derived from its GPU, else unknown). The same :class:`Table` as the
paper tables, so it renders as Markdown and LaTeX.
"""

from __future__ import annotations

from pss import contract
from pss.report.collect import RunRecord
from pss.report.table import Cell, Column, HeaderGroup, Row, RowGroup, Table
from pss.sweep import calibration
from pss.sweep.budget import CellCost, costs_by_cell, hours_text, spent_ratio, totals
from pss.sweep.cost import estimate_jobs
from pss.sweep.expand import expand
from pss.sweep.profile import effective_resources, load_profile
from pss.sweep.schema import LoadedSpec

NAME = "cost"  # its files: cost.md, cost.tex
HEADERS = ("Jobs", "GPU-h estimated", "GPU-h spent", "Spent / estimated", "Estimate from")


def cost_table(
    loaded: LoadedSpec, smoke: bool, runs: list[RunRecord], cluster: str | None
) -> Table:
    """The cost table of a sweep's ``runs`` (:func:`pss.report.collect.fetch_runs`), its
    estimates with the profile ``cluster`` (None: learned ones only)."""
    jobs = expand(loaded, smoke=smoke)
    spent: dict[str, float] = {}
    finished: dict[str, float] = {}
    for run in sorted(runs, key=lambda r: r.start_time):  # the newest finished one last
        hours = run.metrics.get(contract.GPU_HOURS)
        if hours is None:
            continue
        stage = None if run.stage == contract.NO_STAGE else run.stage
        key = contract.job_key(run.cell, stage, run.seed)
        spent[key] = spent.get(key, 0.0) + hours
        if run.status == contract.FINISHED:
            finished[key] = hours
    profile = load_profile(cluster)
    res = effective_resources(loaded.spec.resources, profile, smoke)
    processes = res.nodes * max(res.gpus_per_node, 1)
    estimates = estimate_jobs(
        jobs, finished, profile.gpu, calibration.read(cluster), processes, own=False
    )
    cells = costs_by_cell(jobs, spent, estimates)
    groups = [RowGroup(Cell(c.cell), [Row([], _cells(c), c.cell)]) for c in cells]
    groups.append(RowGroup(Cell("Total"), [Row([], _cells(totals(cells)))]))
    where = f" with {cluster}" if cluster else " (no cluster profile: learned only)"
    return Table(
        name=NAME,
        title=f"Cost of {loaded.spec.name}{' (smoke)' if smoke else ''}: GPU-hours",
        caption=(
            "Spent: what the cell's runs logged (GPUs x wall hours; CPU hours on a CPU), "
            "training and evaluation. Estimated: what the dry-run says of the cell's jobs "
            f"without their own runs{where}."
        ),
        row_headers=["Cell"],
        header=[HeaderGroup("", tuple(Column(h, NAME) for h in HEADERS))],
        groups=groups,
    )


def _cells(cost: CellCost) -> list[Cell]:
    texts = (str(cost.jobs), hours_text(cost.estimated), hours_text(cost.spent))
    return [Cell(t) for t in (*texts, spent_ratio(cost), cost.sources)]
