"""One run's life in MLflow, the same on both engines (the contract: docs/tracking.md).

    opening = Opening(name, cfg.fingerprint(), seed, contract.TORCH, cfg.flat())
    with open_run(run, opening) as opened:   # run: the caller's RunInfo
        opened.resumed_from(epoch)           # when it continues from a checkpoint
        ... opened.tracker.log_metrics(...)
        opened.status = KILLED               # stopped before its last epoch on purpose

:func:`open_run` creates the run, or re-attaches to it (the caller's run id, or the
run of the checkpoint it resumes from, refused when that run was another config's);
tags it (fingerprint, seed, engine, torch's CPU threads, git commit and whether the
tree had uncommitted edits, SLURM job, the caller's), logs the
params and config texts and tells ``run.on_open``. On leaving it ends the run:
FINISHED (or ``opened.status``), KILLED when interrupted, preempted (submitit exits the
process) or stopped by a callback (:class:`StopTraining`), FAILED with its traceback
on any other exception. Only rank 0 tracks; the other ranks' tracker logs nothing.

The cadence both engines keep: a checkpoint every epoch, an evaluation every
``eval.interval`` epochs and after the last (:func:`evaluation_due`).
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import yaml

from pss import contract, dist
from pss.config import ExperimentConfig
from pss.errors import UserError
from pss.tracking.logger import FINISHED, KILLED, NullTracker, Tracker, slurm_tags
from pss.tracking.store import current_uri


class StopTraining(Exception):  # noqa: N818 - a signal, not an error
    """Raised by an ``on_epoch`` callback to end a run early (e.g. a pruned trial)."""


@dataclass
class RunInfo:
    """Where and how a training run is tracked (the caller's side)."""

    experiment: str = "pss"
    run_name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    run_id: str | None = None  # continue this MLflow run instead of creating one
    on_open: Callable[[str], None] | None = None  # told the run's id once it is open


@dataclass
class Opening:
    """What an engine says of the run it opens."""

    name: str  # the run's name unless RunInfo names one
    fingerprint: str  # of its config; a fingerprint in RunInfo.tags (a sweep job's) wins
    seed: int
    engine: str  # contract.TORCH or contract.MMDET
    params: dict[str, Any]  # logged once (a re-attached run keeps the params it has)
    texts: dict[str, str] = field(default_factory=dict)  # artifact file -> text
    resumes: str | None = None  # the checkpoint file it continues from
    checkpoint_run: str | None = None  # the run that checkpoint belongs to

    def tags(self, run: RunInfo) -> dict[str, str]:
        return {
            contract.TAG_FINGERPRINT: self.fingerprint,
            contract.TAG_SEED: str(self.seed),
            contract.TAG_ENGINE: self.engine,
            # CPU float sums depend on the thread count: same seed, other threads, another run
            contract.TAG_THREADS: str(torch.get_num_threads()),
            **slurm_tags(),
            **run.tags,
        }


@dataclass
class OpenRun:
    """The run :func:`open_run` holds; ``status`` is how it ends when training returns."""

    tracker: Tracker
    status: str = FINISHED

    def resumed_from(self, epoch: int) -> None:
        self.tracker.set_tags({contract.TAG_RESUMED_FROM_EPOCH: str(epoch)})


@contextmanager
def open_run(run: RunInfo, opening: Opening) -> Iterator[OpenRun]:
    """The run of this training, open (see the module's docstring); every rank calls it."""
    _check_resumed_run(run, opening)
    opened = OpenRun(_open(run, opening))
    try:
        opened.tracker.log_params(opening.params)  # new keys only
        for name, text in opening.texts.items():
            opened.tracker.log_text(text, name)
        yield opened
    except (KeyboardInterrupt, SystemExit, StopTraining):
        opened.tracker.finish(KILLED)
        raise
    except BaseException:
        opened.tracker.fail(traceback.format_exc())
        raise
    opened.tracker.finish(opened.status)


def config_artifact(cfg: ExperimentConfig) -> dict[str, str]:
    """``config.yaml``, the resolved config, as a run of our config keeps it."""
    return {contract.CONFIG_ARTIFACT: yaml.safe_dump(cfg.model_dump(mode="json"))}


def check_fingerprint(found: str | None, expected: str, where: str) -> None:
    """The checkpoint ``where`` (of fingerprint ``found``; None: unknown) is this config's."""
    if found not in (None, expected):
        raise UserError(
            f"a checkpoint of another config (fingerprint {found}, this config {expected})",
            where,
        )


def evaluation_due(epoch: int, interval: int, epochs: int) -> bool:
    """Whether epoch (1-based) of ``epochs`` ends with an evaluation (``eval.interval``)."""
    return epoch % interval == 0 or epoch == epochs


def _run_id(run: RunInfo, opening: Opening) -> str | None:
    return run.run_id or opening.checkpoint_run


def _check_resumed_run(run: RunInfo, opening: Opening) -> None:
    """The run a resumed training continues was opened for this fingerprint (rank 0 asks
    the store; every rank raises the refusal)."""
    run_id = _run_id(run, opening)
    if opening.resumes is None or run_id is None:
        return
    refusal = None
    if dist.is_main():
        try:
            tracker = Tracker(run_id)
            _check_run_exists(tracker, opening.resumes)
            found = tracker.tags().get(contract.TAG_FINGERPRINT)
            expected = opening.tags(run)[contract.TAG_FINGERPRINT]
            check_fingerprint(found, expected, opening.resumes)
        except UserError as exc:
            refusal = str(exc)
    refusal = dist.broadcast_object(refusal)
    if refusal is not None:
        raise UserError(refusal)


def _check_run_exists(tracker: Tracker, where: str) -> None:
    """The run the checkpoint ``where`` continues is still in the store (MLflow refuses to
    write to a deleted run, after the training would have started)."""
    stage = tracker.lifecycle_stage()
    if stage == "active":
        return
    run_id = tracker.run_id
    if stage == "deleted":
        fix = f"restore it (mlflow runs restore --run-id {run_id})"
        gone = "was deleted from"
    else:
        fix, gone = "point MLFLOW_TRACKING_URI at its store", "is not in"
    raise UserError(
        f"the MLflow run {run_id} this checkpoint continues {gone} the store "
        f"{current_uri()}; {fix}, or move the checkpoint away to start this run over",
        where,
    )


def _open(run: RunInfo, opening: Opening) -> Tracker:
    """Rank 0: the run created or re-attached (RUNNING), tagged; others: a NullTracker."""
    if not dist.is_main():
        return NullTracker()
    tags = opening.tags(run)
    run_id = _run_id(run, opening)
    if run_id:
        tracker = Tracker.attach(run_id)
        tracker.set_tags(tags)
    else:  # created now: the run's start time is when training started
        tracker = Tracker.create(run.experiment, run.run_name or opening.name, tags)
    if run.on_open is not None:
        run.on_open(tracker.run_id)
    return tracker
