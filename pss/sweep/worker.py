"""What a submitted job runs: one training, resumable after preemption.

A :class:`CellJob` is pickled by submitit and called on the node. It is
``Checkpointable``: on timeout or preemption submitit requeues the same object,
and the new start resumes from the job's own last checkpoint (``resume="auto"``)
and re-attaches to the same MLflow run. It trains on the job's engine: this
project's own loop (torch) or mmengine's Runner (mmdet, :mod:`pss.mmdet.cell`).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import traceback
from dataclasses import dataclass, field
from typing import Any

import submitit

from pss.config import ExperimentConfig, load_config
from pss.contract import MMDET, RUNNING, SCHEDULED, TORCH


@dataclass
class Payload:
    """Everything a job needs, in plain data (pickled into the job)."""

    config_files: list[str]
    overrides: dict[str, Any]
    experiment: str
    run_name: str
    run_id: str | None
    tags: dict[str, str]
    tracking_uri: str | None
    threads: int | None = None
    cwd: str | None = None  # the sweep driver's working directory (relative paths)
    env: dict[str, str] = field(default_factory=dict)
    engine: str = TORCH  # what trains it: contract.ENGINES


def prepare_process(payload: Payload) -> None:
    """Environment of the job process: tracking store, threads, logging."""
    if payload.cwd:
        os.chdir(payload.cwd)
    if payload.tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = payload.tracking_uri
    os.environ.update(payload.env)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr
    )
    if payload.threads:
        import torch

        torch.set_num_threads(payload.threads)
        logging.getLogger(__name__).info("%s: %d threads", payload.run_name, payload.threads)


class CellJob(submitit.helpers.Checkpointable):
    """Train one sweep job (cell x stage x seed) to the end.

    The job's MLflow run is created when training starts (so its start time is
    when the job started, not when the sweep was submitted), or continued: the
    failed run a resubmitted job inherits (``payload.run_id``), or the run of this
    same job before a requeue (submitit pickles this object, run id included).
    """

    def __init__(self, payload: Payload) -> None:
        self.payload = payload
        self.run_id: str | None = payload.run_id

    def __call__(self) -> dict[str, float]:
        # Imported here, in the job: the driver that pickles this object never loads torch
        # (nor MLflow's client, unless it submits).
        from pss.engine.train import RunInfo
        from pss.tracking.logger import Tracker

        p = self.payload
        prepare_process(p)
        run = RunInfo(
            experiment=p.experiment,
            run_name=p.run_name,
            tags=p.tags,
            run_id=self.run_id,
            on_open=self._opened,
        )
        try:
            cfg = load_config(p.config_files, p.overrides)
            return _train(p.engine, cfg, run)
        except Exception:
            # Bad input stops train() before it opens the run: record the failure in
            # one, so that the cell shows as failed, with the reason (rank 0 only).
            if _task_rank() != 0:
                raise
            if self.run_id is None:
                self.run_id = Tracker.create(p.experiment, p.run_name, p.tags).run_id
            if Tracker(self.run_id).status() in (SCHEDULED, RUNNING):
                Tracker(self.run_id).fail(traceback.format_exc())
            raise

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """The job to requeue (this object, run id included); called by submitit's
        USR2 handler on rank 0, which then runs ``scontrol requeue`` in a child process.

        A preemption also sends SIGTERM (SLURM's, and submitit's own ``_interrupt``,
        a moment before USR2). Should it reach the job while that child runs, it would
        kill it and the job would fail instead of requeueing (seen on slurm/dev). So
        from here on SIGTERM is ignored, which the child inherits: this process only
        logged SIGTERM anyway, and exits once the job is requeued.
        """
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return super().checkpoint(*args, **kwargs)

    def _opened(self, run_id: str) -> None:
        self.run_id = run_id


def _train(engine: str, cfg: ExperimentConfig, run) -> dict[str, float]:
    """Train ``cfg`` to the end on ``engine``, resuming from the job's last checkpoint."""
    if engine == MMDET:
        # Imported here: only a job that trains on mmdet loads mmdet and mmcv.
        from pss.mmdet.cell import train_cell

        return train_cell(cfg, run)
    from pss.engine.train import train

    return train(cfg, resume="auto", run=run)


def _task_rank() -> int:
    """This process's rank in its job, known before any process group exists."""
    return int(os.environ.get("SLURM_PROCID") or os.environ.get("RANK") or 0)
