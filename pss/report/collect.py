"""From MLflow runs to per-cell results.

One ``search_runs`` pass (paged, 1,000 runs a page) reads every run of a
sweep's experiment; runs are then matched to the spec's reported jobs by their
tags (``pss.cell``, ``pss.stage``, ``pss.seed``). For each cell and seed the
newest FINISHED run is used; every seed without one (not run yet, running,
failed, killed) becomes an *issue* that the table shows as a footnote, so
nothing is dropped silently.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.artifacts import download_artifacts
from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR
from mlflow.tracking import MlflowClient

from pss import tracking
from pss.sweep.spec import CellSpec, Job, LoadedSpec, all_cells, expand, row_values

TAG = tracking.TAG_PREFIX
NO_STAGE = "none"  # pss.stage of unstaged cells
SHORT_ID = 8  # run ids in notes are shortened to this many characters
TRACEBACK_FILE = "traceback.txt"
MAX_REASON = 160


@dataclass(frozen=True)
class RunRecord:
    """What the report needs from one MLflow run."""

    run_id: str
    cell: str
    stage: str
    seed: int
    status: str
    start_time: int
    metrics: Mapping[str, float] = field(default_factory=dict)  # latest value of each
    model_name: str | None = None  # param model.name
    git_commit: str | None = None
    artifact_uri: str | None = None

    @property
    def short_id(self) -> str:
        return self.run_id[:SHORT_ID]


def run_record(run: Any) -> RunRecord | None:
    """A :class:`RunRecord` for an MLflow run, or None if it is not a sweep cell's run."""
    tags = run.data.tags
    cell = tags.get(f"{TAG}cell")
    try:
        seed = int(tags.get(f"{TAG}seed", ""))
    except ValueError:
        return None
    if not cell:
        return None
    return RunRecord(
        run_id=run.info.run_id,
        cell=cell,
        stage=tags.get(f"{TAG}stage") or NO_STAGE,
        seed=seed,
        status=run.info.status,
        start_time=run.info.start_time or 0,
        metrics=dict(run.data.metrics),
        model_name=run.data.params.get("model.name"),
        git_commit=tags.get(f"{TAG}git_commit"),
        artifact_uri=run.info.artifact_uri,
    )


def fetch_runs(experiment: str, client: MlflowClient) -> list[RunRecord]:
    """Every sweep run of ``experiment`` (one paged search), newest first."""
    records = (run_record(r) for r in tracking.search_runs(experiment, mlflow=client))
    return sorted((r for r in records if r is not None), key=_newest_first)


def _newest_first(run: RunRecord) -> tuple[int, str]:
    return (-run.start_time, run.run_id)


def failure_reason(client: MlflowClient, run: RunRecord) -> str | None:
    """The exception line of the run's ``traceback.txt`` artifact, or None."""
    try:
        with tempfile.TemporaryDirectory() as tmp, _no_progress_bar():
            if run.artifact_uri:  # known from the search: no get_run round trips
                uri = run.artifact_uri.rstrip("/") + "/" + TRACEBACK_FILE
                path = tracking.retry(download_artifacts, artifact_uri=uri, dst_path=tmp)
            else:
                path = tracking.retry(client.download_artifacts, run.run_id, TRACEBACK_FILE, tmp)
            text = Path(path).read_text(errors="replace")
    except Exception:  # noqa: BLE001 - no artifact, unreachable artifact store, ...
        return None
    return traceback_line(text)


@contextlib.contextmanager
def _no_progress_bar() -> Iterator[None]:
    """MLflow draws a download progress bar on stderr unless told not to."""
    name = MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name
    old = os.environ.get(name)
    os.environ[name] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def traceback_line(text: str) -> str | None:
    """The line that says what went wrong.

    A Python traceback starts with the useless 'Traceback (most recent call
    last):' and ends with the exception ('ValueError: ...'), so for those the
    last unindented line is taken; for any other text the first line.
    """
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    if not lines:
        return None
    line = lines[0]
    if line.startswith("Traceback (most recent call last)"):
        unindented = [x for x in lines if not x[0].isspace()]
        line = unindented[-1]
    return line if len(line) <= MAX_REASON else line[: MAX_REASON - 3] + "..."


@dataclass
class CellResult:
    """One table row: a cell, its finished runs (one per seed) and what is missing."""

    cell: CellSpec
    row: dict[str, Any]  # row_values(spec, cell)
    mode: str  # primary mode: "e2e" for *_pss models, else "nms"
    runs: list[RunRecord]  # newest FINISHED run per seed, by seed
    issues: list[tuple[int, str]]  # (seed, what is wrong) for seeds without a finished run
    multi_seed: bool  # the spec asks for several seeds

    @property
    def id(self) -> str:
        return self.cell.id

    def values(self, metric: str) -> list[float]:
        return [r.metrics[metric] for r in self.runs if metric in r.metrics]

    def without(self, metric: str) -> list[RunRecord]:
        """Finished runs that did not log ``metric``."""
        return [r for r in self.runs if metric not in r.metrics]

    def note(self) -> str | None:
        """One line on the seeds without a finished run, or None."""
        if not self.issues:
            return None
        merged: dict[str, list[int]] = defaultdict(list)
        for seed, text in self.issues:
            merged[text].append(seed)
        if not self.multi_seed and not self.runs and len(self.issues) == 1:
            return f"{self.id}: {self.issues[0][1]}"  # the only seed: no need to name it
        parts = []
        for text, seeds in merged.items():
            label = "seed" if len(seeds) == 1 else "seeds"
            parts.append(f"{label} {', '.join(map(str, seeds))} {text}")
        return f"{self.id}: " + "; ".join(parts)


def report_jobs(loaded: LoadedSpec, smoke: bool = False) -> list[Job]:
    """The spec's jobs for its first seed only: enough to know every cell's stages,
    which stage is reported and its model (a report needs no per-seed configs, and
    expanding 1,000 jobs would cost more than reading 1,000 runs)."""
    spec = loaded.spec
    one_seed = spec.model_copy(update={"seeds": spec.seeds[:1]})
    return expand(LoadedSpec(one_seed, loaded.path), smoke=smoke)


def mode_of(model_name: str) -> str:
    return "e2e" if model_name.endswith("_pss") else "nms"


def describe(run: RunRecord, reason: Callable[[RunRecord], str | None]) -> str:
    """'running (run abc12345)', 'failed (run abc12345): ValueError: ...', ..."""
    where = f"(run {run.short_id})"
    status = run.status.upper()
    if status == tracking.FAILED:
        line = reason(run)
        return f"failed {where}: {line}" if line else f"failed {where}, no {TRACEBACK_FILE}"
    if status == tracking.RUNNING:
        return f"running {where}"
    return f"{status.lower()} {where}"


def collect_cells(
    loaded: LoadedSpec,
    jobs: Iterable[Job],
    runs: Iterable[RunRecord],
    reason: Callable[[RunRecord], str | None] = lambda run: None,
) -> list[CellResult]:
    """One :class:`CellResult` per reported job cell, in spec order.

    ``runs`` must be newest first; ``reason`` explains a failed run (its traceback).
    """
    spec = loaded.spec
    jobs = list(jobs)
    cells = {c.id: c for c in all_cells(spec)}
    by_key: dict[tuple[str, str], dict[int, list[RunRecord]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for run in runs:
        by_key[(run.cell, run.stage)][run.seed].append(run)
    stages: dict[str, list[str]] = defaultdict(list)  # cell -> its stages, in order
    for job in jobs:
        if job.stage and job.stage not in stages[job.cell]:
            stages[job.cell].append(job.stage)

    results: dict[str, CellResult] = {}
    for job in jobs:
        if not job.report or job.cell in results:
            continue
        cell = cells[job.cell]
        seeds_runs = by_key.get((job.cell, job.stage or NO_STAGE), {})
        seeds = sorted(set(spec.seeds) | set(seeds_runs))
        finished, issues = [], []
        for seed in seeds:
            history = seeds_runs.get(seed, [])
            done = [r for r in history if r.status.upper() == tracking.FINISHED]
            if done:
                finished.append(done[0])
            elif history:
                issues.append((seed, describe(history[0], reason)))
            else:
                waiting = _earlier_stage(by_key, stages[job.cell], job, seed, reason)
                issues.append((seed, "not run yet" + (f" ({waiting})" if waiting else "")))
        names = [r.model_name for r in finished if r.model_name]
        model_name = names[0] if names else job.config.model.name
        results[job.cell] = CellResult(
            cell=cell,
            row=row_values(spec, cell),
            mode=mode_of(model_name),
            runs=finished,
            issues=issues,
            multi_seed=len(spec.seeds) > 1,
        )
    return list(results.values())


def _earlier_stage(
    by_key: Mapping[tuple[str, str], Mapping[int, list[RunRecord]]],
    stages: list[str],
    job: Job,
    seed: int,
    reason: Callable[[RunRecord], str | None],
) -> str | None:
    """For a staged cell: the first earlier stage of ``seed`` that has not finished."""
    if not job.stage or job.stage not in stages:
        return None
    for earlier in stages[: stages.index(job.stage)]:
        history = by_key.get((job.cell, earlier), {}).get(seed, [])
        if any(r.status.upper() == tracking.FINISHED for r in history):
            continue
        if not history:
            return f"{earlier} not run yet"
        return f"{earlier} {describe(history[0], reason)}"
    return None
