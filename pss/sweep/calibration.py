"""Measured step times beside a cluster profile: what ``python -m pss.sweep.calibrate`` writes
and the dry-run's **measured** estimates read.

    slurm/v100x8.yaml               # the profile
    slurm/v100x8.calibration.json   # {shape: Calibration}, written by pss.sweep.calibrate

A :class:`Calibration` is one cell shape (:func:`pss.sweep.cost.shape`: its config but
the seed, and its engine) timed on the profile's device: seconds per training step of
``batch`` images on one process, seconds of an evaluation per validation image (forward,
post-processing of every mode, COCO evaluation, the detections written), and the seconds
an epoch waits for its first batch (the loader's workers starting), and what a fresh
process's first steps and first evaluation take over their steady time (``warmup_s``:
kernels chosen and primitives built per input size, memory allocated; on a CPU about a
third of a tiny smoke job's first epoch). A job's GPU-hours are then
(:func:`measured_hours`):

    processes x (warmup_s + epochs x epoch_start_s
                 + steps x global_batch / batch x sec_per_iter
                 + evaluations x val_images / processes x sec_per_eval_image) / 3600

in the seconds of :func:`pss.tracking.logger.cost_clock` (wall on a GPU, the process's
CPU time on a CPU), as the runs log them. Not counted: the run's MLflow writes (losses
every ``train.log_interval`` steps, metrics after an evaluation: tens of milliseconds
an epoch; the smoke test's cells spent 96-111% of their estimate).

each process training its share of the global batch (at the job's own share, ``batch``,
the calibration timed exactly that step), and the evaluation split between them. No
torch here: the dry-run reads the file in milliseconds.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from pss.errors import UserError

SUFFIX = ".calibration.json"


@dataclass(frozen=True)
class Calibration:
    """One shape's measured times (units in the names: seconds, images)."""

    name: str  # the config's (or cell's) name, for people reading the file
    engine: str
    device: str  # what timed it: 'cuda: NVIDIA H100 80GB HBM3', 'cpu (2 threads)'
    processes: int  # processes (GPUs) a job of this shape gets on the profile
    batch: int  # images a timed training step took (one process's share of the batch)
    steps: int  # training steps timed (after the untimed first ones)
    sec_per_iter: float  # one process's training step of ``batch`` images
    eval_images: int  # validation images the timed evaluation took
    sec_per_eval_image: float  # a whole evaluation's seconds over its images
    epoch_start_s: float  # from an epoch's loader to its first batch
    warmup_s: float  # once a job: its first steps and evaluation over their steady time
    measured: str  # when (UTC, ISO 8601)
    torch: str  # torch's version

    @property
    def detail(self) -> str:
        """A few words for the dry-run: what it measured, where."""
        return (
            f"{self.sec_per_iter:.3g} s/step of {self.batch} images, "
            f"{self.sec_per_eval_image * 1000:.3g} ms/val image on {self.device}"
        )


def path_for(profile: str | Path) -> Path:
    """The calibration file of a profile: ``slurm/v100x8.yaml`` ->
    ``slurm/v100x8.calibration.json``."""
    profile = Path(profile)
    return profile.with_name(profile.stem + SUFFIX)


def read(profile: str | Path | None) -> dict[str, Calibration]:
    """{shape: Calibration} beside ``profile`` ({} without a profile or a file); a file
    that is not one of ours is a UserError naming it."""
    if profile is None:
        return {}
    path = path_for(profile)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise UserError(f"cannot read the calibration: {exc.strerror or exc}", str(path)) from None
    names = {f.name for f in fields(Calibration)}
    try:
        data = json.loads(text)
        out = {}
        for shape, entry in data.items():
            if set(entry) != names:
                raise ValueError(f"entry {shape}: keys {sorted(entry)}")
            out[shape] = Calibration(**entry)
            if not all(math.isfinite(x) and x >= 0 for x in _numbers(out[shape])):
                raise ValueError(f"entry {shape}: a time that is not a number of seconds")
    except (ValueError, TypeError, AttributeError) as exc:
        raise UserError(
            f"not a calibration file ({exc}); delete it and time the shapes again "
            "(python -m pss.sweep.calibrate)",
            str(path),
        ) from None
    return out


def _numbers(c: Calibration) -> tuple[float, ...]:
    times = (c.sec_per_iter, c.sec_per_eval_image, c.epoch_start_s, c.warmup_s)
    return (*times, c.batch, c.processes)


def write(profile: str | Path, found: dict[str, Calibration]) -> Path:
    """Add ``found`` to the profile's calibration file (replacing the same shapes), written
    through a temporary file and a rename: never half a file. Returns its path."""
    path = path_for(profile)
    merged = {**read(profile), **found}
    body = {shape: asdict(c) for shape, c in sorted(merged.items())}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(body, handle, indent=1, sort_keys=True)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def measured_hours(
    c: Calibration,
    epochs: int,
    steps: int,
    global_batch: int,
    evaluations: int,
    val_images: int,
    processes: int,
) -> float:
    """GPU-hours of a job of ``steps`` optimizer steps of ``global_batch`` images over
    ``epochs`` epochs and ``evaluations`` evaluations of ``val_images`` images, on
    ``processes`` processes, from a calibration (the formula in the module's docstring)."""
    per_process_batch = global_batch / max(processes, 1)
    train_s = steps * per_process_batch / c.batch * c.sec_per_iter
    eval_s = evaluations * math.ceil(val_images / max(processes, 1)) * c.sec_per_eval_image
    once = c.warmup_s + epochs * c.epoch_start_s
    return max(processes, 1) * (once + train_s + eval_s) / 3600.0
