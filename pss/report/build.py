"""Build a sweep's report: tables (Markdown, LaTeX, CSV), figures and REPORT.md.

:func:`make_report` is what ``reports/make_tables.py`` and the sweep runner
call. It reads the spec, expands it into jobs (the reported cells and stages),
reads every run of the sweep's MLflow experiment in one paged search, and
writes ``reports/out/<experiment>/``: ``<name>.md/.tex/.csv`` for a
``table:`` block, ``<name>.png/.pdf`` for a ``figure:`` block, and
``REPORT.md`` gathering them (with when and from which store it was made).
Table files carry no timestamps, so they are reproducible from the same runs.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pss import contract
from pss.errors import UserError
from pss.report import latex, markdown
from pss.report.collect import (
    CellResult,
    RunRecord,
    collect_cells,
    copy_artifact,
    failure_reason,
    fetch_runs,
    report_jobs,
)
from pss.report.cost import cost_table
from pss.report.figures import figure_panels, plot, store_history
from pss.report.layout import build_table
from pss.report.table import Table
from pss.sweep.expand import Job
from pss.sweep.schema import LoadedSpec, load_spec
from pss.tracking.store import current_uri

FORMATS = ("md", "tex", "csv")
REPORT = "REPORT.md"
SMOKE_NOTE = (
    "Smoke run: the CPU variant (experiments/smoke/overlay.yaml, a half-width ResNet-18 "
    "trained from scratch for minutes on synthetic shapes), not the paper's setting: "
    "compare the columns with each other, not with the paper's numbers."
)


@dataclass
class Report:
    """What :func:`make_report` built and wrote."""

    path: Path  # REPORT.md
    experiment: str
    table: Table | None = None
    markdown: str | None = None  # the table as Markdown (what the CLI prints)
    files: list[Path] = field(default_factory=list)  # everything written, REPORT.md last


def parse_formats(formats: str | Iterable[str]) -> tuple[str, ...]:
    """'md,tex' or ['md', 'tex'] -> ('md', 'tex'); UserError for anything else."""
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    chosen = tuple(dict.fromkeys(f.strip().lower() for f in items if f.strip()))
    unknown = [f for f in chosen if f not in FORMATS]
    if unknown or not chosen:
        raise UserError(
            f"--format: expected a comma list of {', '.join(FORMATS)} (got {formats!r})"
        )
    return chosen


def default_out_dir(experiment: str) -> Path:
    """``reports/out/<experiment>`` in the repository (else under the current directory)."""
    root = Path(__file__).resolve().parents[2]
    base = root if (root / "reports").is_dir() and (root / "pyproject.toml").is_file() else Path()
    return base / "reports" / "out" / experiment


def store_uri(client: Any = None) -> str:
    """The tracking URI (the client's, else this process's) with any user:password removed."""
    uri = str(client.tracking_uri) if client is not None else current_uri()
    return re.sub(r"//[^/@]*@", "//", uri)


def write_text(path: Path, text: str) -> Path:
    """Write through a temporary file and a rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def make_report(
    spec_path: str | Path,
    smoke: bool = False,
    formats: str | Iterable[str] = FORMATS,
    out_dir: str | Path | None = None,
    with_paper: bool = False,
    *,
    client: Any = None,
    engine: str | None = None,
    cluster: str | None = None,
) -> Report:
    """Build a spec's tables and figures from its MLflow runs; returns what was written.

    spec_path: a sweep spec (``sweeps/table5.yaml``); a bad spec raises UserError.
    smoke: read the ``<name>-smoke`` experiment (and the smoke variant's jobs).
    formats: table files to write, any of ``md``, ``tex``, ``csv`` (REPORT.md always).
    out_dir: where to write; default ``reports/out/<experiment>``.
    with_paper: add the paper's value and the difference (ours - paper) beside ours.
    client: an MlflowClient to read through; default: the store of ``MLFLOW_TRACKING_URI``
    (or MLflow's default), read directly where it is a local SQLite store.
    engine: the runs of every cell trained on this engine (``--engine``; docs/specs.md).
    cluster: the profile whose estimates the cost table sets against what was spent
    (pss.report.cost; None: estimates learned from other seeds only).
    """
    chosen = parse_formats(formats)
    loaded = load_spec(spec_path, engine)
    spec = loaded.spec
    if spec.table is None and spec.figure is None:
        raise UserError(
            "no table: or figure: block, so there is no report to build", str(spec_path)
        )
    jobs = report_jobs(loaded, smoke=smoke)
    experiment = loaded.experiment(smoke)
    runs = fetch_runs(experiment, client)
    results = collect_cells(loaded, jobs, runs, lambda run: failure_reason(run, client))
    out = Path(out_dir) if out_dir is not None else default_out_dir(experiment)
    report = Report(path=out / REPORT, experiment=experiment)

    # Everything that can fail happens before anything is written.
    table = build_table(loaded, results, with_paper=with_paper) if spec.table else None
    if table is not None and smoke:  # keep the spec's caption: it explains the columns
        paper = f" Paper's setting: {table.caption}" if table.caption else ""
        table.caption = SMOKE_NOTE + paper
    costs = cost_table(loaded, smoke, runs, cluster)  # GPU-hours estimated and spent
    writers = {"md": markdown.render, "tex": latex.render, "csv": Table.csv}
    panels, notes = ([], [])
    if spec.figure is not None:
        history = store_history(results, spec.figure.metric, client=client)
        panels, notes = figure_panels(loaded, results, history)
    sections: list[str] = []
    if table is not None:
        report.table, report.markdown = table, markdown.render(table)
        sections.append(_table_section(report.markdown, spec.name, chosen))
        for fmt in chosen:
            report.files.append(write_text(out / f"{spec.name}.{fmt}", writers[fmt](table)))
    if spec.figure is not None:
        report.files += plot(spec.figure, panels, out / spec.name)
        sections.append(_figure_section(spec.figure.title, spec.name, notes))
    rendered = tuple(f for f in chosen if f != "csv")  # the cost table has no numbers frame
    sections.append(_table_section(markdown.render(costs), costs.name, rendered))
    for fmt in rendered:
        report.files.append(write_text(out / f"{costs.name}.{fmt}", writers[fmt](costs)))
    picture = _modes_picture(results, out, client)
    if picture is not None:
        report.files.append(out / contract.MODES_FIGURE)
        sections.append(picture)
    header = _header(loaded, experiment, store_uri(client), runs, _cells(jobs), results)
    report.files.append(write_text(report.path, "\n".join([header, *sections]).rstrip() + "\n"))
    return report


def _cells(jobs: Iterable[Job]) -> set[str]:
    return {job.cell for job in jobs}


def _table_section(text: str, name: str, formats: tuple[str, ...]) -> str:
    names = {"md": "Markdown", "tex": "LaTeX (booktabs)", "csv": "CSV"}
    links = " · ".join(f"[{names[f]}]({name}.{f})" for f in formats)
    return f"{text}\nFiles: {links}\n"


def _figure_section(title: str, name: str, notes: list[str]) -> str:
    lines = [
        f"### {title}",
        "",
        f"![{title}]({name}.png)",
        "",
        f"Files: [PNG]({name}.png) · [PDF]({name}.pdf)",
        "",
    ]
    if notes:
        lines += ["Runs missing from the figure:", "", *(f"- {n}" for n in notes), ""]
    return "\n".join(lines)


def _modes_picture(results: list[CellResult], out: Path, client: Any) -> str | None:
    """Copy the first reported PSS cell's ``modes.png`` into ``out``; its report section.

    The picture is drawn by the training run (:func:`pss.engine.train.draw_validation_modes`)
    and kept with its artifacts; runs without it (baselines, older runs) are passed over.
    """
    for result in results:
        for run in result.runs:
            if not (run.model_name and contract.has_pss(run.model_name)):
                continue
            if copy_artifact(run, contract.MODES_FIGURE, out / contract.MODES_FIGURE, client):
                return "\n".join(
                    [
                        "### What PSS removes",
                        "",
                        f"![raw / nms / e2e detections]({contract.MODES_FIGURE})",
                        "",
                        f"Cell `{result.id}` (run `{run.short_id}`) on validation images: `raw` "
                        "(base score, no NMS) keeps the duplicate boxes, `nms` removes them, "
                        "`e2e` (PSS score, no NMS) does not produce them. Class and score on "
                        "every box.",
                        "",
                    ]
                )
    return None


def _header(
    loaded: LoadedSpec,
    experiment: str,
    store: str,
    runs: list[RunRecord],
    cells: set[str],
    results: list[CellResult],
) -> str:
    spec = loaded.spec
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    statuses = Counter(r.status for r in runs)
    counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(statuses.items())) or "none"
    reported = [r for res in results for r in res.runs]
    commits = sorted({r.git_commit[:10] for r in reported if r.git_commit})
    dirty = sum(r.git_dirty for r in reported)
    code = ", ".join(commits) + (
        f"; {dirty} of {len(reported)} runs with uncommitted edits besides" if dirty else ""
    )
    lines = [
        f"# {experiment}: {spec.description or spec.name}",
        "",
        f"Generated {now} from the MLflow store `{store}`, experiment `{experiment}`, "
        f"spec `{loaded.path}`.",
        "",
        f"Runs in the experiment: {len(runs)} ({counts}). Cells reported: {len(results)}, "
        f"from {len(reported)} finished runs"
        + (f" (code: git {code})" if commits else "")
        + ".",
    ]
    lines += _threads_line(results)
    stray = sorted({r.cell for r in runs} - cells)
    if stray:
        n = sum(r.cell in stray for r in runs)
        lines += ["", f"Not in the spec (ignored): {n} runs of cells {', '.join(stray)}."]
    return "\n".join(lines) + "\n"


def _threads_line(results: list[CellResult]) -> list[str]:
    """The torch CPU thread counts the reported runs recorded, and the cells whose seeds
    ran at different counts: on a CPU the same seed at another count is another run."""
    counts = sorted({r.threads for res in results for r in res.runs if r.threads})
    if not counts:
        return []
    mixed = [res.id for res in results if len({r.threads for r in res.runs if r.threads}) > 1]
    line = f"Torch CPU threads: {', '.join(map(str, counts))}"
    if mixed:
        line += f"; seeds at different counts in {', '.join(mixed)} (a CPU's results follow it)"
    return ["", line + "."]
