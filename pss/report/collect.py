"""From MLflow runs to per-cell results.

One read of the store (:func:`pss.tracking.store.read_runs`: one SQL snapshot of a local
store, one paged ``search_runs`` of any other) gives every run of a sweep's
experiment; runs are then matched to the spec's reported jobs by their
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

from pss import contract
from pss.contract import NO_STAGE, TRACEBACK_FILE
from pss.sweep.expand import Job, expand
from pss.sweep.schema import CellSpec, LoadedSpec, all_cells, row_values
from pss.tracking.store import StoredRun, read_runs, retry

SHORT_ID = 8  # run ids in notes are shortened to this many characters
MODEL_NAME = "model.name"  # the param that says which model a run trained
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


def run_record(run: StoredRun) -> RunRecord | None:
    """A :class:`RunRecord` for a stored run, or None if it is not a sweep cell's run."""
    tags = run.tags
    cell = tags.get(contract.TAG_CELL)
    try:
        seed = int(tags.get(contract.TAG_SEED, ""))
    except ValueError:
        return None
    if not cell:
        return None
    return RunRecord(
        run_id=run.run_id,
        cell=cell,
        stage=tags.get(contract.TAG_STAGE) or NO_STAGE,
        seed=seed,
        status=run.status,
        start_time=run.start_time,
        metrics=run.metrics,
        model_name=run.params.get(MODEL_NAME),
        git_commit=tags.get(contract.TAG_GIT_COMMIT),
        artifact_uri=run.artifact_uri,
    )


def fetch_runs(experiment: str, client: Any = None, uri: str | None = None) -> list[RunRecord]:
    """Every sweep run of ``experiment`` (one read of the store), newest first.

    ``client``: an ``MlflowClient`` to read through; default: ``uri`` (or this
    process's tracking URI), read directly where it is a local SQLite store.
    """
    stored = read_runs(experiment, uri, params=(MODEL_NAME,), client=client)
    records = (run_record(r) for r in stored)
    return sorted((r for r in records if r is not None), key=_newest_first)


def _newest_first(run: RunRecord) -> tuple[int, str]:
    return (-run.start_time, run.run_id)


def failure_reason(run: RunRecord, client: Any = None) -> str | None:
    """The exception line of the run's ``traceback.txt`` artifact, or None.

    Read from the file where the artifacts are a local folder, else downloaded
    through MLflow (a tracking server's artifact store).
    """
    local = _local_artifacts(run.artifact_uri)
    try:
        if local is not None:
            text = (local / TRACEBACK_FILE).read_text(errors="replace")
        else:
            text = _download_text(run, TRACEBACK_FILE, client)
    except Exception:  # noqa: BLE001 - no artifact, unreachable artifact store, ...
        return None
    return traceback_line(text)


def _local_artifacts(uri: str | None) -> Path | None:
    if not uri or ("://" in uri and not uri.startswith("file://")) or uri.startswith("mlflow-"):
        return None
    return Path(uri.removeprefix("file://"))


def _download_text(run: RunRecord, name: str, client: Any) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        return download_artifact(run, name, tmp, client).read_text(errors="replace")


def download_artifact(run: RunRecord, name: str, folder: str | Path, client: Any) -> Path:
    """Artifact ``name`` of ``run`` from a remote artifact store, downloaded into ``folder``."""
    from mlflow.artifacts import download_artifacts  # a remote artifact store only

    with _no_progress_bar():
        if run.artifact_uri:  # known from the search: no get_run round trips
            uri = run.artifact_uri.rstrip("/") + "/" + name
            return Path(retry(download_artifacts, artifact_uri=uri, dst_path=str(folder)))
        return Path(retry(client.download_artifacts, run.run_id, name, str(folder)))


@contextlib.contextmanager
def _no_progress_bar() -> Iterator[None]:
    """MLflow draws a download progress bar on stderr unless told not to."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
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


def describe(run: RunRecord, reason: Callable[[RunRecord], str | None]) -> str:
    """'running (run abc12345)', 'failed (run abc12345): ValueError: ...', ..."""
    where = f"(run {run.short_id})"
    status = run.status.upper()
    if status == contract.FAILED:
        line = reason(run)
        return f"failed {where}: {line}" if line else f"failed {where}, no {TRACEBACK_FILE}"
    if status == contract.RUNNING:
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
            done = [r for r in history if r.status.upper() == contract.FINISHED]
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
            mode=contract.primary_mode(model_name),
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
        if any(r.status.upper() == contract.FINISHED for r in history):
            continue
        if not history:
            return f"{earlier} not run yet"
        return f"{earlier} {describe(history[0], reason)}"
    return None
