"""Time a few training steps and an evaluation of each distinct cell shape, and store the
times beside a cluster profile: the dry-run's **measured** estimates (pss.sweep.cost).

    python -m pss.sweep.calibrate CONFIG... --cluster PROFILE [--set KEY=VALUE ...]
    python -m pss.sweep.calibrate SPEC --cluster PROFILE [--smoke] [--engine torch]
        [--steps 10] [--warmup 3] [--eval-images 200] [--executor local|slurm]

CONFIG... are experiment files merged in order (as ``python -m pss.train``): one shape.
A sweep spec (a YAML file with a ``base:`` key) stands for every distinct shape of its
jobs (:func:`pss.sweep.cost.shape`: the config but the seed, and the engine). Each shape
is built as its job would be (model, data, optimizer; a second stage without the
checkpoint it starts from: the weights do not change the time) with one process's share
of the global batch on the profile, and timed: the first batch of an epoch, ``--warmup``
untimed steps, ``--steps`` timed steps (each with its batch's loading), then a whole
evaluation of the first ``--eval-images`` validation images in every mode (COCO
evaluation and the detections written included). The times go into
``<profile>.calibration.json`` (:mod:`pss.sweep.calibration`), replacing the same shapes.

``--executor local`` (the default) times on this machine's device, with the threads a
local job gets; ``--executor slurm`` runs the same timing as one short job of the
profile (one process on one of its GPUs) and writes its answer here. A profile that
declares a GPU is not calibrated on a machine without CUDA: its times would be a CPU's.
mmdet's cells are not timed (their estimates stay learned or derived).

Exit status: 0 written, 1 a timing failed (the training diverged), 2 bad input (config,
spec, profile, calibration file, options), one line on stderr.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pss.config import ExperimentConfig, add_config_arguments, load_config, read_yaml
from pss.contract import ENGINES, TORCH
from pss.errors import EXIT_FAILED, EXIT_INVALID, EXIT_OK, RunFailed, UserError
from pss.sweep import calibration
from pss.sweep.calibration import Calibration
from pss.sweep.cost import shape_of
from pss.sweep.profile import ClusterProfile, effective_resources, for_local_jobs, load_profile
from pss.sweep.schema import Resources


@dataclass(frozen=True)
class Target:
    """One shape to time: its key, a name for people, its config and its processes a job."""

    shape: str
    name: str
    config: ExperimentConfig
    processes: int


@dataclass(frozen=True)
class Settings:
    steps: int
    warmup: int
    eval_images: int
    threads: int | None  # torch's CPU threads (None: torch's default)


def is_spec(path: str | Path) -> bool:
    """A sweep spec, not an experiment config: a mapping with a ``base:`` key (every spec
    names its base experiment; no config has one)."""
    data = read_yaml(path)
    return isinstance(data, dict) and "base" in data


def targets(
    files: list[str],
    overrides: list[str],
    profile: ClusterProfile,
    smoke: bool,
    engine: str | None,
) -> tuple[list[Target], list[str], Resources]:
    """The distinct shapes to time, the names of jobs left untimed (mmdet's), and what a
    job gets on the profile."""
    specs = [f for f in files if is_spec(f)]
    if specs and len(files) > 1:
        raise UserError(f"give one sweep spec or experiment config files, not both ({specs[0]})")
    if not specs:
        if smoke or engine:
            raise UserError("--smoke and --engine apply to a sweep spec, not to config files")
        cfg = load_config(files, overrides)
        res = effective_resources(Resources(), profile, smoke=False)
        return [Target(shape_of(cfg, TORCH), cfg.name, cfg, _processes(res))], [], res
    if overrides:
        raise UserError("--set applies to config files; a spec's cells set their own values")
    from pss.sweep.driver import plan  # the spec's jobs, as the sweep runs them

    loaded, jobs = plan(specs[0], smoke, engine)
    res = effective_resources(loaded.spec.resources, profile, smoke)
    found: dict[str, Target] = {}
    skipped = []
    for job in jobs:
        if job.engine != TORCH:
            skipped.append(job.key)
            continue
        key = shape_of(job.config, job.engine)
        if key not in found:
            found[key] = Target(key, job.run_name, job.config, _processes(res))
    return list(found.values()), skipped, res


def _processes(res: Resources) -> int:
    """Processes of a job: one per GPU, one a node on a CPU-only profile."""
    return res.nodes * max(res.gpus_per_node, 1)


# --------------------------------------------------------------------- timing (torch)


@dataclass
class Calibrate:
    """Time ``targets`` (a picklable callable: here, or as a SLURM job); returns
    {shape: Calibration}, saying what it does on stderr."""

    targets: list[Target]
    settings: Settings

    def __call__(self) -> dict[str, Calibration]:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        out = {}
        spawn = multiprocessing.get_context("spawn")
        for i, target in enumerate(self.targets, 1):
            prefix = f"[{i}/{len(self.targets)}] {target.name} (shape {target.shape})"
            # Each shape in a fresh process, as its job runs: nothing warmed up by another.
            with ProcessPoolExecutor(1, mp_context=spawn) as pool:
                out[target.shape] = pool.submit(time_shape, target, self.settings, prefix).result()
        return out


def time_shape(target: Target, settings: Settings, prefix: str) -> Calibration:
    """Build ``target``'s training as its job would (one process's share of the batch) and
    time its steps and two evaluations (see the module's docstring)."""
    import torch

    from pss.engine.evaluate import evaluate
    from pss.engine.train import build_loop, train_step
    from pss.models.decode import modes_for

    if settings.threads:
        torch.set_num_threads(settings.threads)
    cfg = target.config.model_copy(deep=True)
    batch = max(cfg.train.batch_size // target.processes, 1)
    with tempfile.TemporaryDirectory(prefix="pss-calibrate-") as scratch:
        cfg.output_dir = scratch
        cfg.train.batch_size = batch  # one process's share, on the one process here
        cfg.train.init_from = None  # a second stage's timing does not need its weights
        cfg.data.max_val_images = min(cfg.data.max_val_images or sys.maxsize, settings.eval_images)
        loop = build_loop(cfg, None)
        device = loop.device
        say(f"{prefix}: {settings.warmup}+{settings.steps} training steps of {batch} images")
        began = _now(device)
        batches = _batches(loop)
        first = next(batches)
        epoch_start = _now(device) - began
        took = []
        for step in range(settings.warmup + settings.steps):
            start = _now(device)
            images, targets_ = first if step == 0 else next(batches)
            train_step(loop, 1, images, targets_)
            took.append(_now(device) - start)
        per_step = sum(took[settings.warmup :]) / settings.steps
        n_val = len(loop.val_set)
        say(f"{prefix}: {per_step:.3f} s/step; evaluating {n_val} images twice")
        modes = list(modes_for(cfg.model.has_pss, cfg.eval.modes))
        evaluations = []
        for _ in range(2):  # the first with its warm-up, the second as every later one
            start = _now(device)
            evaluate(loop.detector, loop.val_loader, loop.val_set, modes, device, Path(scratch))
            evaluations.append(_now(device) - start)
        per_image = evaluations[1] / n_val
        warmup = max(sum(took[: settings.warmup]) - settings.warmup * per_step, 0.0)
        warmup += max(evaluations[0] - evaluations[1], 0.0)
        say(f"{prefix}: {per_image * 1000:.1f} ms/val image ({', '.join(modes)}); "
            f"{warmup:.2f} s of warm-up")
    return Calibration(
        name=target.name,
        engine=TORCH,
        device=describe(device),
        processes=target.processes,
        batch=batch,
        steps=settings.steps,
        sec_per_iter=per_step,
        eval_images=n_val,
        sec_per_eval_image=per_image,
        epoch_start_s=epoch_start,
        warmup_s=warmup,
        measured=datetime.now(UTC).isoformat(timespec="seconds"),
        torch=torch.__version__,
    )


def _batches(loop: Any):
    """The training batches of epochs 1, 2, ... one after the other."""
    epoch = 1
    while True:
        yield from loop.train_loader(epoch)
        epoch += 1


def _now(device: Any) -> float:
    """The cost clock (wall seconds on a GPU, this process's CPU seconds on a CPU:
    :func:`pss.tracking.logger.cost_clock`, as the runs log ``gpu_hours``) after the
    device's queued work (CUDA's kernels run asynchronously)."""
    import torch

    from pss.tracking.logger import cost_clock

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return cost_clock(device.type)()


def describe(device: Any) -> str:
    """'cuda: NVIDIA H100 80GB HBM3', 'cpu: x86_64 (2 threads)'."""
    import torch

    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {platform.machine()} ({torch.get_num_threads()} threads)"


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pss.sweep.calibrate",
        description="Time a few training steps and an evaluation of each distinct cell "
        "shape; store them beside the cluster profile (the dry-run's measured estimates).",
    )
    parser.add_argument(
        "config", nargs="+", help="experiment YAML file(s), merged in order; or one sweep spec"
    )
    add_config_arguments(parser, configs=False)
    parser.add_argument(
        "--cluster", metavar="PROFILE", required=True, help="cluster profile, slurm/<name>.yaml"
    )
    parser.add_argument("--smoke", action="store_true", help="a spec's CPU smoke variant")
    parser.add_argument("--engine", choices=ENGINES, default=None, help="a spec's cells on it")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps (10)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (3)")
    parser.add_argument(
        "--eval-images", type=int, default=200, help="validation images evaluated (200)"
    )
    parser.add_argument(
        "--max-parallel",
        type=int,
        default=1,
        metavar="N",
        help="local: the jobs will run N at a time (their share of this machine's cores)",
    )
    parser.add_argument(
        "--executor",
        choices=("local", "slurm"),
        default="local",
        help="local: time here; slurm: as one short job of the profile",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        for name in ("steps", "eval_images", "max_parallel"):
            if getattr(args, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1")
        if args.warmup < 0:
            raise UserError("--warmup must be 0 or more")
        profile = load_profile(args.cluster)
        calibration.read(args.cluster)  # a damaged file is refused before any timing
        local = args.executor == "local"
        if local:
            profile = for_local_jobs(profile, args.max_parallel)
        found, skipped, res = targets(
            args.config, args.overrides, profile, args.smoke, args.engine
        )
        if local:
            _check_device(profile, args.cluster)
        settings = Settings(args.steps, args.warmup, args.eval_images, res.cpus_per_task)
        if skipped:
            say(f"not timed (mmdet's engine): {', '.join(skipped)}")
        if not found:
            raise UserError("no cell of this spec trains on torch: nothing to time")
        say(f"timing {len(found)} shapes for {args.cluster} ({args.executor})")
        job = Calibrate(found, settings)
        measured = job() if local else _on_slurm(job, profile, res)
        path = calibration.write(args.cluster, measured)
    except (UserError, RunFailed) as exc:  # bad input, or a timing that diverged
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID if isinstance(exc, UserError) else EXIT_FAILED
    print(f"wrote {len(measured)} shapes to {path}")
    return EXIT_OK


def _check_device(profile: ClusterProfile, cluster: str) -> None:
    """A profile that declares a GPU is timed on a GPU, never on this machine's CPU."""
    import torch

    if profile.gpu is not None and not torch.cuda.is_available():
        raise UserError(
            f"declares a {profile.gpu.name} GPU but this machine has no CUDA device: time it "
            "on the profile's GPU (--executor slurm, or run this there)",
            cluster,
        )


def _on_slurm(job: Calibrate, profile: ClusterProfile, res: Resources) -> dict[str, Calibration]:
    """Run ``job`` as one short job of the profile (one process, one GPU) and wait for it."""
    from pss.sweep.executors import failure, submit

    one = res.model_copy(update={"nodes": 1, "gpus_per_node": min(res.gpus_per_node, 1)})
    one = one.model_copy(update={"timeout_min": min(res.timeout_min, 60)})
    profile = profile.model_copy(update={"tasks_per_node": 1})
    folder = Path("outputs") / "calibrate" / "submitit"
    [handle] = submit("slurm", folder, one, profile, [job])
    say(f"submitted SLURM job {handle.job_id}; waiting (its log: {handle.paths.stderr})")
    while not handle.done():
        time.sleep(5)
    why = failure(handle)
    if why:
        raise RunFailed(f"the calibration job {handle.job_id} failed: {why}")
    return handle.result()


if __name__ == "__main__":
    # The module's own classes, not __main__'s copies: a SLURM job and the process each
    # shape is timed in unpickle them by this module's name.
    from pss.sweep.calibrate import main as calibrate

    sys.exit(calibrate())
