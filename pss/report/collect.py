"""From MLflow runs to per-cell results: the runs as a frame, one finished run per seed.

One read of the store (:func:`pss.tracking.store.read_runs`: one SQL snapshot of a local
store, one paged ``search_runs`` of any other) gives every run of a sweep's experiment
(:func:`fetch_runs`); they become a frame keyed by their tags (``pss.cell``,
``pss.stage``, ``pss.seed``) and are matched to the spec's reported jobs. For each cell
and seed the newest FINISHED run is used; every seed without one (not run yet, running,
failed, killed) becomes an *issue* that the table shows as a footnote, so nothing is
dropped silently. A failed run's reason (its ``traceback.txt``) and other artifacts are
read from the artifact folder where it is local, else downloaded through MLflow.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from pss import contract
from pss.contract import NO_STAGE, TRACEBACK_FILE
from pss.sweep.expand import Job, expand
from pss.sweep.schema import CellSpec, LoadedSpec, all_cells, row_values
from pss.tracking.store import StoredRun, read_runs, retry

SHORT_ID = 8  # run ids in notes are shortened to this many characters
MODEL_NAME = "model.name"  # the param that says which model a run trained
MAX_REASON = 160
KEY = ["cell", "stage", "seed"]  # a run is one seed of one stage of one cell


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
    git_dirty: bool = False  # uncommitted edits to tracked files ran too
    threads: int | None = None  # torch's CPU threads (the pss.threads tag), None: not recorded
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
        git_dirty=tags.get(contract.TAG_GIT_DIRTY) == "true",
        threads=int(t) if (t := tags.get(contract.TAG_THREADS, "")).isdigit() else None,
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


def copy_artifact(run: RunRecord, name: str, dest: Path, client: Any = None) -> bool:
    """Copy artifact ``name`` of ``run`` to ``dest`` (via a temporary file); False if absent."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    local = _local_artifacts(run.artifact_uri)
    try:
        if local is not None:
            if not (local / name).is_file():
                return False
            shutil.copyfile(local / name, tmp)
        else:
            with tempfile.TemporaryDirectory() as folder:
                shutil.copyfile(download_artifact(run, name, folder, client), tmp)
    except Exception:  # noqa: BLE001 - no such artifact, unreachable artifact store, ...
        tmp.unlink(missing_ok=True)
        return False
    tmp.replace(dest)
    return True


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


Reason = Callable[[RunRecord], str | None]  # why a failed run failed (its traceback)


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


def describe(run: RunRecord, reason: Reason) -> str:
    """'running (run abc12345)', 'failed (run abc12345): ValueError: ...', ..."""
    where = f"(run {run.short_id})"
    status = run.status.upper()
    if status == contract.FAILED:
        line = reason(run)
        return f"failed {where}: {line}" if line else f"failed {where}, no {TRACEBACK_FILE}"
    if status == contract.RUNNING:
        return f"running {where}"
    return f"{status.lower()} {where}"


def runs_frame(runs: Iterable[RunRecord]) -> pd.DataFrame:
    """One row per run, in the given order: its key (cell, stage, seed), whether it
    FINISHED, and the run."""
    rows = [(r.cell, r.stage, r.seed, r.status.upper() == contract.FINISHED, r) for r in runs]
    frame = pd.DataFrame(rows, columns=[*KEY, "finished", "run"], dtype=object)
    return frame.astype({"seed": "int64", "finished": bool})


def collect_cells(
    loaded: LoadedSpec,
    jobs: Iterable[Job],
    runs: Iterable[RunRecord],
    reason: Reason = lambda run: None,
) -> list[CellResult]:
    """One :class:`CellResult` per reported job cell, in spec order.

    ``runs`` must be newest first; ``reason`` explains a failed run (its traceback).
    """
    spec = loaded.spec
    reported: dict[str, Job] = {}  # cell -> its reported job
    stages: dict[str, list[str]] = defaultdict(list)  # cell -> its stages, in order
    for job in jobs:
        if job.stage and job.stage not in stages[job.cell]:
            stages[job.cell].append(job.stage)
        if job.report:
            reported.setdefault(job.cell, job)
    frame = runs_frame(runs)
    # each seed's newest finished run, else its newest run (which says what became of it)
    chosen = frame.sort_values("finished", ascending=False, kind="stable").drop_duplicates(KEY)
    wanted = pd.DataFrame(
        [(cell, job.stage or NO_STAGE) for cell, job in reported.items()],
        columns=["cell", "stage"],
        dtype=object,
    )
    seeds = pd.concat(
        [
            wanted.merge(pd.DataFrame({"seed": spec.seeds}, dtype="int64"), how="cross"),
            chosen[KEY].merge(wanted),  # and the seeds that ran but the spec no longer has
        ]
    ).drop_duplicates()
    seeds = seeds.sort_values("seed", kind="stable").merge(chosen, how="left", on=KEY)
    seeds["finished"] = seeds["finished"].eq(True)  # no run at all: NaN

    done: dict[str, list[RunRecord]] = defaultdict(list)
    issues: dict[str, list[tuple[int, str]]] = defaultdict(list)
    chosen = chosen.set_index(KEY)  # a staged cell's earlier stages are looked up here
    for cell, stage, seed, finished, run in seeds.itertuples(index=False, name=None):
        if finished:
            done[cell].append(run)
        elif isinstance(run, RunRecord):
            issues[cell].append((seed, describe(run, reason)))
        else:
            issues[cell].append((seed, _not_run((cell, stage, seed), stages[cell], chosen, reason)))
    cells = {c.id: c for c in all_cells(spec)}
    results = []
    for cell, job in reported.items():
        names = [r.model_name for r in done[cell] if r.model_name]
        results.append(
            CellResult(
                cell=cells[cell],
                row=row_values(spec, cells[cell]),
                mode=contract.primary_mode(names[0] if names else job.config.model.name),
                runs=done[cell],
                issues=issues[cell],
                multi_seed=len(spec.seeds) > 1,
            )
        )
    return results


def _not_run(
    key: tuple[str, str, int], stages: list[str], chosen: pd.DataFrame, reason: Reason
) -> str:
    """'not run yet' and, for a later stage of a staged cell, the first earlier stage that
    has not finished; ``chosen``: each seed's newest finished run, else its newest run."""
    cell, stage, seed = key
    for earlier in stages[: stages.index(stage)] if stage in stages else []:
        at = (cell, earlier, seed)
        if at not in chosen.index:
            return f"not run yet ({earlier} not run yet)"
        if not chosen.at[at, "finished"]:
            return f"not run yet ({earlier} {describe(chosen.at[at, 'run'], reason)})"
    return "not run yet"
