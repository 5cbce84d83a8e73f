"""Writing to MLflow (the tracking contract: docs/tracking.md; its names: pss.contract).

One run per cell-and-seed in one experiment per spec. A :class:`Tracker`
talks to one run through ``MlflowClient`` (explicit run ids, no global active
run), so several runs can be driven from one process and a requeued job can
re-attach to its run. The store is ``MLFLOW_TRACKING_URI`` when set, else
MLflow's own default (a local SQLite ``mlflow.db``). Metrics are in percent;
per-epoch metrics use step = epoch, training losses step = iteration.
"""

from __future__ import annotations

import fcntl
import functools
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pss.contract import (
    EXPERIMENT_KIND_TRAINING,
    FAILED,
    FINISHED,
    GPU_HOURS,
    IMAGES_PER_SEC,
    KILLED,
    RUNNING,
    SEC_PER_ITER,
    TAG_EXPERIMENT_KIND,
    TAG_GIT_COMMIT,
    TAG_GIT_DIRTY,
    TAG_SLURM_JOB_ID,
    TRACEBACK_FILE,
)
from pss.tracking.store import check_store, current_uri, retry, search, sqlite_path, use_credentials

__all__ = ["FAILED", "FINISHED", "KILLED", "RUNNING", "NullTracker", "Tracker", "retry"]


def _git(*args: str) -> str | None:
    """``git ARGS`` in the checkout this package is imported from: its stdout, or None
    when git is missing or fails (not a checkout)."""
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


@functools.cache
def git_commit() -> str:
    """The commit of the code that runs (``unknown`` outside a git checkout)."""
    return (_git("rev-parse", "HEAD") or "").strip() or "unknown"


@functools.cache
def git_dirty() -> str:
    """``true`` when tracked files of the checkout differ from :func:`git_commit` (the
    code that runs is not that commit's: edits made during a sweep reach the cells that
    start after them), ``false`` when they do not, ``unknown`` outside a checkout."""
    out = _git("status", "--porcelain", "--untracked-files=no")
    return "unknown" if out is None else str(bool(out.strip())).lower()


def client(uri: str | None = None) -> MlflowClient:
    """A client of ``uri`` (default: this process's store), the store created if needed."""
    uri = uri or current_uri()
    ensure_store(uri)
    use_credentials()
    return MlflowClient(uri)


_READY: set[str] = set()


def ensure_store(uri: str) -> None:
    """Create (or upgrade) a local SQLite store once, whoever else is opening it.

    MLflow migrates a SQLite store's schema when a process first opens it, and
    several processes doing so at once on a new file fail ('duplicate column
    name: step'). Here the first contact happens under an exclusive lock on a
    file beside the store, so one process migrates and the others find it done.
    """
    path = sqlite_path(uri)
    if path is None or uri in _READY:
        return
    check_store(uri)  # another application's database, a newer MLflow's store...: refused
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.init.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        retry(MlflowClient(uri).search_experiments, max_results=1)
    _READY.add(uri)


def experiment_id(name: str, mlflow: MlflowClient | None = None) -> str:
    """The id of experiment ``name``, created if needed (safe when several processes race).

    New experiments are tagged as model training (MLflow's "Machine learning" kind).
    """
    mlflow = mlflow or client()
    for _ in range(5):
        exp = retry(mlflow.get_experiment_by_name, name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                retry(mlflow.restore_experiment, exp.experiment_id)
            return exp.experiment_id
        try:
            return retry(
                mlflow.create_experiment,
                name,
                tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND_TRAINING},
            )
        except MlflowException as exc:
            if "already exists" not in str(exc).lower() and "unique" not in str(exc).lower():
                raise
    raise RuntimeError(f"could not create or find MLflow experiment '{name}'")


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."


class Tracker:
    """Logs to one MLflow run."""

    def __init__(self, run_id: str, mlflow: MlflowClient | None = None) -> None:
        self.run_id = run_id
        self.mlflow = mlflow or client()

    @classmethod
    def create(
        cls,
        experiment: str,
        run_name: str,
        tags: dict[str, Any] | None = None,
        status: str = RUNNING,
    ) -> Tracker:
        mlflow = client()
        exp = experiment_id(experiment, mlflow)
        all_tags = {TAG_GIT_COMMIT: git_commit(), TAG_GIT_DIRTY: git_dirty(), **(tags or {})}
        run = retry(
            mlflow.create_run,
            exp,
            run_name=run_name,
            tags={k: str(v) for k, v in all_tags.items()},
        )
        tracker = cls(run.info.run_id, mlflow)
        if status != RUNNING:
            retry(mlflow.update_run, run.info.run_id, status=status)
        return tracker

    @classmethod
    def attach(cls, run_id: str) -> Tracker:
        """Continue an existing run (created by a sweep, or resumed after preemption)."""
        tracker = cls(run_id)
        retry(tracker.mlflow.update_run, run_id, status=RUNNING)
        return tracker

    def log_params(self, params: dict[str, Any]) -> None:
        existing = retry(self.mlflow.get_run, self.run_id).data.params
        new = [Param(k, _param_value(v)) for k, v in params.items() if k not in existing]
        for start in range(0, len(new), 100):
            retry(self.mlflow.log_batch, self.run_id, params=new[start : start + 100])

    def set_tags(self, tags: dict[str, Any]) -> None:
        retry(self.mlflow.log_batch, self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for start in range(0, len(batch), 500):
            retry(self.mlflow.log_batch, self.run_id, metrics=batch[start : start + 500])

    def log_cost(
        self, epoch: int, steps: int, images: int, train_s: float, epoch_s: float, gpus: int
    ) -> dict[str, float]:
        """Log what epoch ``epoch`` cost (step = epoch) and return it: ``steps`` optimizer
        steps of ``images`` images in all took ``train_s`` wall seconds of training, and
        the epoch with its evaluation ``epoch_s`` seconds of :func:`cost_clock` on each of
        ``gpus`` processes (GPUs; CPU processes on a CPU). ``gpu_hours`` adds up over the
        run, across a resume into the same run."""
        if not hasattr(self, "_spent"):
            stored = retry(self.mlflow.get_run, self.run_id).data.metrics
            self._spent = float(stored.get(GPU_HOURS, 0.0))  # before a resume
        self._spent += gpus * epoch_s / 3600.0
        cost = {
            SEC_PER_ITER: train_s / max(steps, 1),
            IMAGES_PER_SEC: images / train_s if train_s > 0 else 0.0,
            GPU_HOURS: self._spent,
        }
        self.log_metrics(cost, step=epoch)
        return cost

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        retry(self.mlflow.log_artifact, self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        retry(self.mlflow.log_text, self.run_id, text, artifact_file)

    def finish(self, status: str = FINISHED) -> None:
        retry(self.mlflow.set_terminated, self.run_id, status)

    def fail(self, why: str) -> None:
        """End the run FAILED, saying why in its traceback artifact (reports show it)."""
        self.log_text(why, TRACEBACK_FILE)
        self.finish(FAILED)

    def status(self) -> str:
        return retry(self.mlflow.get_run, self.run_id).info.status

    def tags(self) -> dict[str, str]:
        return retry(self.mlflow.get_run, self.run_id).data.tags

    def lifecycle_stage(self) -> str | None:
        """MLflow's ``active`` or ``deleted`` (``mlflow runs delete``); None when the store
        has no such run (deleted for good by ``mlflow gc``, or another store)."""
        from mlflow.exceptions import MlflowException

        try:
            return retry(self.mlflow.get_run, self.run_id).info.lifecycle_stage
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise


def cost_clock(device_type: str) -> Callable[[], float]:
    """The clock a run's cost (``gpu_hours``) is counted by, on a device of ``device_type``
    (torch's: 'cuda', 'cpu'): wall seconds on a GPU (the GPU is the job's while it runs);
    this process's CPU seconds, all its threads together, on a CPU, where a shared
    machine's wall clock also counts other processes' work (CPU-hours: core-hours)."""
    return time.perf_counter if device_type == "cuda" else time.process_time


class NullTracker(Tracker):
    """For processes other than rank 0: logs nothing."""

    def __init__(self) -> None:
        self.run_id = None  # type: ignore[assignment]

    def log_params(self, params: dict[str, Any]) -> None: ...
    def set_tags(self, tags: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_cost(self, *args: Any) -> dict[str, float]:
        return {}

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def log_text(self, text: str, artifact_file: str) -> None: ...
    def finish(self, status: str = FINISHED) -> None: ...
    def fail(self, why: str) -> None: ...


def slurm_tags() -> dict[str, str]:
    job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if job and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return {TAG_SLURM_JOB_ID: f"{job}_{os.environ['SLURM_ARRAY_TASK_ID']}"}
    if os.environ.get("SLURM_JOB_ID"):
        return {TAG_SLURM_JOB_ID: os.environ["SLURM_JOB_ID"]}
    return {}


def search_runs(experiment: str, filter_string: str = "", mlflow: MlflowClient | None = None):
    """All runs of an experiment matching a filter (MLflow's Run objects), newest first."""
    return search(mlflow or client(), experiment, filter_string)
