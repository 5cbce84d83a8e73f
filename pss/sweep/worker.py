"""What a submitted job runs: one training, resumable after preemption.

A :class:`CellJob` is pickled by submitit and called on the node. It is
``Checkpointable``: on timeout or preemption submitit requeues the same object,
and the new start resumes from the job's own last checkpoint (``resume="auto"``)
and re-attaches to the same MLflow run.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from dataclasses import dataclass, field
from typing import Any

import submitit

from pss.config import load_config
from pss.contract import RUNNING, SCHEDULED
from pss.tracking import Tracker


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


def prepare_process(payload: Payload) -> None:
    """Environment of the job process: tracking store, threads, logging."""
    if payload.cwd:
        os.chdir(payload.cwd)
    if payload.tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = payload.tracking_uri
    os.environ.update(payload.env)
    if payload.threads:
        import torch

        torch.set_num_threads(payload.threads)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr
    )


class CellJob(submitit.helpers.Checkpointable):
    """Train one sweep job (cell x stage x seed) to the end."""

    def __init__(self, payload: Payload) -> None:
        self.payload = payload

    def __call__(self) -> dict[str, float]:
        # Imported here, in the job: the driver that pickles this object never loads torch.
        from pss.engine.train import RunInfo, train

        p = self.payload
        prepare_process(p)
        try:
            cfg = load_config(p.config_files, p.overrides)
            run = RunInfo(
                experiment=p.experiment, run_name=p.run_name, tags=p.tags, run_id=p.run_id
            )
            return train(cfg, resume="auto", run=run)
        except Exception:
            # Bad input stops train() before it touches the run the sweep opened for
            # this job: say so there, so that the cell shows as failed, with the reason.
            if p.run_id and Tracker(p.run_id).status() in (SCHEDULED, RUNNING):
                Tracker(p.run_id).fail(traceback.format_exc())
            raise
