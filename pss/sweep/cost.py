"""What a sweep's jobs cost, in GPU-hours, before they run: the dry-run's estimates.

    estimates = estimate_jobs(jobs, states, profile.gpu)   # {job key: Estimate}

Units: seconds (s), hours (h); a **GPU-hour** is one GPU for one hour (GPUs x wall
hours; on a CPU-only machine, processes x wall hours); FLOPs are floating-point
operations as ``torch.utils.flop_counter.FlopCounterMode`` counts them (a multiply-add
is 2); TFLOP/s is 1e12 FLOPs per second.

Each job's estimate has a source:

- **learned**: finished runs of the same *shape* (the job's config but its seed; the
  same engine) logged ``gpu_hours`` (:meth:`pss.tracking.logger.Tracker.log_cost`): their
  mean. Another seed of a finished cell, or a cell trained again, is learned.
- **measured**: ``python -m pss.sweep.calibrate`` timed a few training steps and an evaluation
  of the job's shape on the profile's device and stored them beside the profile
  (:mod:`pss.sweep.calibration`, which has the formula): the job's steps, epochs and
  evaluations at those times. Below learned: a finished run of the shape measured the
  whole of it (data loading over a whole epoch, the model as it learns), a calibration
  a few steps of an untrained one. Above derived: it is this code on this device, not a
  utilisation measured elsewhere.
- **derived**: the FLOPs of its training steps (a forward and backward pass of the
  cell's model on one image of its mean training size, times the global batch, times
  the steps) and of its evaluations (a forward pass at the test size per validation
  image), over the GPU's peak throughput times a utilisation, both declared in the
  cluster profile (``gpu:``, docs/cluster.md). GPU-hours do not depend on the GPU count
  (ideal data-parallel scaling). Not counted: what has no FLOP formula in torch
  (deformable convolution's own sampling, the matching, the loader), COCO evaluation on
  the CPU. FLOPs are counted once per distinct model and image size, on the meta
  device (no memory, no arithmetic: about a second per model), and cached on disk.
- **unknown**: none applies (no finished run of its shape, no calibration of it and no
  GPU declared, or a dataset whose size is not known without reading it); never a guess.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pss import contract
from pss.config import ExperimentConfig, fingerprint
from pss.sweep.calibration import Calibration, measured_hours

if TYPE_CHECKING:
    from pss.sweep.expand import Job
    from pss.sweep.profile import GpuSpec
    from pss.sweep.state import JobState

LEARNED, MEASURED, DERIVED, UNKNOWN = "learned", "measured", "derived", "unknown"
SOURCES = (LEARNED, MEASURED, DERIVED, UNKNOWN)  # in order of precedence

# Images of the COCO 2017 splits (annotation files' "images"), so that a paper-scale
# dry-run needs no 450 MB file: the published split sizes, all images kept (as
# pss.data does: images without boxes are negatives).
KNOWN_IMAGES = {"instances_train2017.json": 118_287, "instances_val2017.json": 5_000}
# Width / height of a training image: COCO's photos are mostly 640x480 (4:3); the
# synthetic shapes are square.
COCO_ASPECT = 4 / 3
# Annotation files read to count their images when the size is not known above.
MAX_READ_BYTES = 50_000_000


@dataclass(frozen=True)
class Estimate:
    """One job's cost: ``gpu_hours`` (None: unknown), its ``source`` and a few words on
    where it came from (``detail``)."""

    gpu_hours: float | None
    source: str
    detail: str


# ------------------------------------------------------------------------ shapes


def shape(job: Job) -> str:
    """What a job costs depends on: its config without the seed (and without what
    :data:`pss.config.NOT_COUNTED` leaves out), and its engine; 12 hex digits."""
    return shape_of(job.config, job.engine)


def shape_of(cfg: ExperimentConfig, engine: str) -> str:
    """:func:`shape` of a config trained on ``engine`` (what pss.sweep.calibrate keys by)."""
    flat = {k: v for k, v in cfg.flat().items() if k != "train.seed"}
    return fingerprint({**flat, "engine": engine})


def image_size(cfg: ExperimentConfig, train: bool) -> tuple[int, int]:
    """(height, width) in pixels of a typical image as the model sees it: the mean
    training scale (or the test scale) as the shorter side, the longer at the data's
    aspect within ``data.max_size``, both padded to ``data.size_divisibility``."""
    d = cfg.data
    short = sum(d.train_scales) / len(d.train_scales) if train else d.test_scale
    aspect = 1.0 if d.synthetic is not None else COCO_ASPECT
    long = min(short * aspect, d.max_size)

    def pad(x: float) -> int:
        return int(math.ceil(round(x) / d.size_divisibility) * d.size_divisibility)

    return pad(short), pad(long)


def images(cfg: ExperimentConfig, split: str) -> int | None:
    """Images in a split (``train`` or ``val``), or None when not known without reading
    a large file: a synthetic dataset's count, COCO 2017's published sizes, else an
    annotation file under :data:`MAX_READ_BYTES` read and counted. ``val`` is capped by
    ``data.max_val_images``."""
    d = cfg.data
    if d.synthetic is not None:
        count: int | None = d.synthetic.train if split == "train" else d.synthetic.val
    else:
        name = d.train_annotations if split == "train" else d.val_annotations
        path = Path(os.path.expandvars(d.root)) / name
        count = KNOWN_IMAGES.get(Path(name).name)
        if count is None:
            count = _count_images(path)
    if count is not None and split == "val" and d.max_val_images:
        count = min(count, d.max_val_images)
    return count


def _count_images(path: Path) -> int | None:
    try:
        if path.stat().st_size > MAX_READ_BYTES:
            return None
        return len(json.loads(path.read_text()).get("images", []))
    except (OSError, ValueError, AttributeError):
        return None


def steps(cfg: ExperimentConfig, train_images: int) -> int:
    """Optimizer steps of the whole training: whole global batches per epoch (at most
    ``train.iters_per_epoch``, at least one), times the epochs (as pss.engine.train)."""
    t = cfg.train
    whole = max(train_images // t.batch_size, 1)
    per_epoch = min(whole, t.iters_per_epoch) if t.iters_per_epoch else whole
    return per_epoch * t.epochs


def evaluations(cfg: ExperimentConfig) -> int:
    """How many times the training evaluates: every ``eval.interval`` epochs, and after
    the last (pss.engine.lifecycle.evaluation_due, which imports MLflow's client)."""
    epochs, interval = cfg.train.epochs, cfg.eval.interval
    return epochs // interval + (1 if epochs % interval else 0)


def derived_hours(
    train_flops: float, eval_flops: float, peak_tflops: float, utilisation: float
) -> float:
    """GPU-hours of ``train_flops + eval_flops`` FLOPs at ``utilisation`` (0-1) of a GPU's
    ``peak_tflops`` (TFLOP/s): FLOPs / (peak x 1e12 x utilisation) seconds / 3600."""
    return (train_flops + eval_flops) / (peak_tflops * 1e12 * utilisation) / 3600.0


def wall_hours(job_hours: Iterable[float], gpus_per_job: int, parallel: int) -> float:
    """Wall-clock hours of jobs of ``job_hours`` GPU-hours each, ``gpus_per_job`` GPUs each
    (at least 1), ``parallel`` at a time, longest first onto the earliest free slot
    (no dependencies between them, no time queued)."""
    slots = [0.0] * max(parallel, 1)
    for hours in sorted(job_hours, reverse=True):
        slots[slots.index(min(slots))] += hours / max(gpus_per_job, 1)
    return max(slots)


# ------------------------------------------------------------------------ FLOPs


def cache_dir() -> Path:
    """Where counted FLOPs are kept: ``$XDG_CACHE_HOME/pss/flops`` (~/.cache by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pss" / "flops"


def flops_per_image(cfg: ExperimentConfig, height: int, width: int, backward: bool) -> float:
    """FLOPs of the cell's model on one ``height`` x ``width`` image: a forward pass, and
    with ``backward`` the backward pass of what ``train.trainable`` trains (the outputs
    summed as the loss). Counted on the meta device (imports torch: about a second) and
    cached per model config, size and torch version (a cached count imports no torch)."""
    from importlib.metadata import version  # not torch itself: a cached count needs none

    model_cfg = cfg.model.model_copy(deep=True)
    model_cfg.backbone.weights = None  # nothing to load: the shapes are what counts
    trainable = cfg.train.trainable if backward else "none"
    key = json.dumps(
        [model_cfg.model_dump(mode="json"), height, width, trainable, version("torch")],
        sort_keys=True,
    )
    path = cache_dir() / (hashlib.sha256(key.encode()).hexdigest()[:20] + ".json")
    try:
        return float(json.loads(path.read_text())["flops"])
    except (OSError, ValueError, KeyError):
        pass
    flops = _count(model_cfg, height, width, trainable)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"flops": flops, "key": json.loads(key)}))
    tmp.replace(path)
    return flops


def _count(model_cfg: Any, height: int, width: int, trainable: str) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from pss.models import Detector  # the model's maths: only to count

    with torch.device("meta"):
        model = Detector(model_cfg)
    if trainable == "pss":
        model.requires_grad_(False)
        model.head.pss.requires_grad_(True)
    image = torch.empty(1, 3, height, width, device="meta")
    with FlopCounterMode(display=False) as counter:
        if trainable == "none":
            with torch.no_grad():
                model(image)
        else:
            out = model(image)
            parts = [t for t in (out.cls, out.reg, out.ctr, out.pss) if t is not None]
            loss = sum(t.float().sum() for t in parts if t.requires_grad)
            if isinstance(loss, torch.Tensor):
                loss.backward()
    return float(counter.get_total_flops())


# ------------------------------------------------------------------------ estimates


def spent_hours(state: JobState) -> float | None:
    """The GPU-hours a job's run has logged so far (finished or not), or None."""
    if state.run is None:
        return None
    value = state.run.metrics.get(contract.GPU_HOURS)
    return None if value is None or math.isnan(value) else float(value)


def finished_hours(states: Iterable[JobState]) -> dict[str, float]:
    """{job key: GPU-hours} of the jobs whose run finished and logged them."""
    return {
        s.job.key: hours
        for s in states
        if s.state == "finished" and (hours := spent_hours(s)) is not None
    }


def measure(job: Job, calibration: Calibration, processes: int) -> Estimate:
    """A job's estimate from its shape's calibration, on ``processes`` processes (GPUs)."""
    cfg = job.config
    n_train, n_val = images(cfg, "train"), images(cfg, "val")
    if n_train is None or n_val is None:
        return Estimate(None, UNKNOWN, "dataset size not known without reading it")
    total_steps = steps(cfg, n_train)
    hours = measured_hours(
        calibration,
        cfg.train.epochs,
        total_steps,
        cfg.train.batch_size,
        evaluations(cfg),
        n_val,
        processes,
    )
    return Estimate(hours, MEASURED, f"{total_steps:,} steps at {calibration.detail}")


def derive(job: Job, gpu: GpuSpec) -> Estimate:
    """A job's estimate from FLOPs and the profile's GPU (see the module's docstring)."""
    cfg = job.config
    n_train, n_val = images(cfg, "train"), images(cfg, "val")
    if n_train is None or n_val is None:
        return Estimate(None, UNKNOWN, "dataset size not known without reading it")
    train_hw, test_hw = image_size(cfg, train=True), image_size(cfg, train=False)
    step = flops_per_image(cfg, *train_hw, backward=True) * cfg.train.batch_size
    total_steps = steps(cfg, n_train)
    evals = flops_per_image(cfg, *test_hw, backward=False) * n_val * evaluations(cfg)
    peak = gpu.peak_tflops[gpu.precision]
    hours = derived_hours(step * total_steps, evals, peak, gpu.utilisation)
    detail = (
        f"{step / 1e12:.1f} TFLOP/step x {total_steps:,} steps at "
        f"{train_hw[0]}x{train_hw[1]}, {gpu.utilisation:.0%} of {peak:g} TFLOP/s "
        f"({gpu.name} {gpu.precision})"
    )
    return Estimate(hours, DERIVED, detail)


def estimate_jobs(
    jobs: list[Job],
    finished: dict[str, float],
    gpu: GpuSpec | None,
    calibrations: dict[str, Calibration] | None = None,
    processes: int = 1,
    own: bool = True,
) -> dict[str, Estimate]:
    """{job key: Estimate} for every job of a sweep, given the GPU-hours of its finished
    ones (``finished``, by job key: :func:`finished_hours`): learned where a run of its
    shape finished, else measured where ``calibrations`` (the profile's, by shape) has
    its shape, on ``processes`` processes a job, else derived where ``gpu`` is declared,
    else unknown. ``own=False``: a finished job is not learned from its own run (what
    the others would have said of it: ``status`` and the report's cost table)."""
    runs: dict[str, dict[str, float]] = defaultdict(dict)  # {shape: {job key: hours}}
    for job in jobs:
        if job.key in finished:
            runs[shape(job)][job.key] = finished[job.key]
    calibrations = calibrations or {}
    out: dict[str, Estimate] = {}
    derived: dict[str, Estimate] = {}  # per shape: the FLOP count of one job serves all
    for job in jobs:
        key = shape(job)
        others = [h for k, h in runs[key].items() if own or k != job.key]
        if others:
            mean = sum(others) / len(others)
            out[job.key] = Estimate(mean, LEARNED, f"mean of {len(others)} finished runs")
        elif key in calibrations:
            out[job.key] = measure(job, calibrations[key], processes)
        elif gpu is not None:
            if key not in derived:
                derived[key] = derive(job, gpu)
            out[job.key] = derived[key]
        else:
            out[job.key] = Estimate(
                None, UNKNOWN, "no finished run or calibration of its shape; no gpu: in the profile"
            )
    return out
