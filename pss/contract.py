"""The names this project's tools share, spelled once: tags, metrics, job keys, run folders.

Other tools rely on these (the MLflow UI, reports, a second sweep driver, a
requeued job, scripts that read the store), so every module that writes or
reads them imports them from here. ``docs/tracking.md`` describes the whole
tracking contract; ``docs/specs.md`` how a spec becomes jobs.

This module imports nothing beyond the standard library: the sweep CLI's
quick commands (``status``, ``--dry-run``) must stay fast.
"""

from __future__ import annotations

from pathlib import Path

# --------------------------------------------------------------------------- MLflow tags

TAG_SWEEP = "pss.sweep"  # spec name (without -smoke)
TAG_CELL = "pss.cell"  # cell id
TAG_SEED = "pss.seed"
TAG_STAGE = "pss.stage"  # stage name, NO_STAGE for unstaged cells
TAG_FINGERPRINT = "pss.fingerprint"  # the job's config fingerprint
TAG_GIT_COMMIT = "pss.git_commit"
TAG_GIT_DIRTY = "pss.git_dirty"  # "true": uncommitted edits to tracked files ran too
TAG_THREADS = "pss.threads"  # torch CPU threads of the training (CPU results depend on it)
TAG_SLURM_JOB_ID = "pss.slurm_job_id"  # "<job>" or "<array job>_<task>"
TAG_RESUMED_FROM_EPOCH = "pss.resumed_from_epoch"
TAG_TRIAL = "pss.trial"  # Optuna trial number (searches)
TAG_STUDY = "pss.study"  # Optuna study name (searches)
TAG_PROOF = "pss.proof"  # model name of a small-scale proof run
TAG_ENGINE = "pss.engine"  # the engine that trained the run: one of ENGINES
# MLflow's experiment tag for the kind of work: model training, not GenAI (pss.tracking.ui)
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND_TRAINING = "custom_model_development"
NO_STAGE = "none"
# MLflow run statuses: opened by a sweep, training, done, crashed, interrupted.
STATUSES = ("SCHEDULED", "RUNNING", "FINISHED", "FAILED", "KILLED")
SCHEDULED, RUNNING, FINISHED, FAILED, KILLED = STATUSES
TRACEBACK_FILE = "traceback.txt"  # artifact of a failed run: why it failed
CONFIG_ARTIFACT = "config.yaml"  # artifact of every run: its resolved config

# --------------------------------------------------------------------------- metrics

# Inference modes: end-to-end (PSS score, top-k, no NMS), one-to-many with NMS,
# and raw (base scores, top-k, no NMS: the duplicates PSS removes).
MODES = ("e2e", "nms", "raw")
# COCO accuracy metrics, in percent, logged as f"{name}_{mode}" with step = epoch.
MAP, MAR, AP50 = "mAP", "mAR", "AP50"  # AP @ IoU 0.5:0.95, AR @ 100 detections, AP @ 0.5
ACCURACY = (MAP, MAR, AP50, "AP75", "APs", "APm", "APl")
# Mask accuracy of instance segmentation models (COCOeval iouType "segm"): the same
# family, logged as f"{name}_segm_{mode}" (mAP_segm_e2e, AP50_segm_nms, ...).
SEGM = "segm"
LOSS = "loss"  # the total training loss, logged with step = global iteration
FORWARD_MS = "forward_ms"  # mean forward time per image (ms)
POSTPROCESS_MS = "postprocess_ms"  # logged as f"postprocess_ms_{mode}" (ms per image)
# A run's cost, logged after each epoch with step = epoch (pss.tracking.logger.Tracker.log_cost):
SEC_PER_ITER = "sec_per_iter"  # training wall seconds per optimizer step (global batch)
IMAGES_PER_SEC = "images_per_sec"  # training images per wall second, all processes together
# so far, training and evaluation: GPUs x wall hours; on a CPU, the processes' CPU hours
# (pss.tracking.logger.cost_clock)
GPU_HOURS = "gpu_hours"
MODE_PLACEHOLDER = "{mode}"  # in a spec's metric: the cell's primary mode
PSS_SUFFIX = "_pss"  # model names with a PSS head: fcos_pss, atss_pss


def metric_name(name: str, mode: str) -> str:
    """'mAP', 'e2e' -> 'mAP_e2e' (also for POSTPROCESS_MS)."""
    return f"{name}_{mode}"


def segm_name(name: str) -> str:
    """'mAP' -> 'mAP_segm': an accuracy metric of the masks (then per mode: mAP_segm_e2e)."""
    return f"{name}_{SEGM}"


# Every per-mode result: box accuracy, mask accuracy, post-processing time.
PER_MODE = (*ACCURACY, *(segm_name(m) for m in ACCURACY), POSTPROCESS_MS)


COST = (SEC_PER_ITER, IMAGES_PER_SEC, GPU_HOURS)  # what a run cost (a table may show them)


def known_metrics() -> list[str]:
    """Every per-run result metric a job logs, sorted (losses and lr aside)."""
    per_mode = [metric_name(m, mode) for m in PER_MODE for mode in MODES]
    return sorted([*per_mode, FORWARD_MS, *COST])


def is_known_metric(name: str) -> bool:
    """A result metric, or one with MODE_PLACEHOLDER for its mode ('mAP_{mode}')."""
    return name in known_metrics() or any(
        name == metric_name(m, MODE_PLACEHOLDER) for m in PER_MODE
    )


def has_pss(model_name: str) -> bool:
    return model_name.endswith(PSS_SUFFIX)


def primary_mode(model_name: str) -> str:
    """The mode a model is judged by: e2e for the PSS models, nms for the baselines."""
    return "e2e" if has_pss(model_name) else "nms"


# --------------------------------------------------------------------------- sweep jobs

OUTPUT_ROOT = Path("outputs") / "sweeps"  # relative to the driver's working directory
CHECKPOINT = "last.pth"  # in a run's folder: the latest epoch's checkpoint
# In a PSS run's folder and artifacts: raw / nms / e2e detections side by side
MODES_FIGURE = "modes.png"
SMOKE_SUFFIX = "-smoke"
# What trains a job: this project's own loop (pss.engine) or mmengine's Runner on an
# mmdet config (pss.mmdet); the default, torch, is the one an experiment name leaves out.
ENGINES = ("torch", "mmdet")
TORCH, MMDET = ENGINES


def experiment_name(spec_name: str, smoke: bool, engine: str = TORCH) -> str:
    """MLflow experiment of a spec: 'table5', 'table5-smoke' for the CPU variant, with
    '-<engine>' on any engine but torch: 'table5-mmdet', 'table5-smoke-mmdet'."""
    name = spec_name + SMOKE_SUFFIX if smoke else spec_name
    return name if engine == TORCH else f"{name}-{engine}"


def run_name(cell: str, stage: str | None) -> str:
    """MLflow run name of a job: the cell id, with '@stage' for staged cells."""
    return f"{cell}@{stage}" if stage else cell


def job_key(cell: str, stage: str | None, seed: int) -> str:
    """Unique within a sweep: 'cell[@stage]/s<seed>'."""
    return f"{run_name(cell, stage)}/s{seed}"


def sweep_dir(experiment: str, root: Path = OUTPUT_ROOT) -> Path:
    """Where a sweep keeps its ledger, submitit logs and run folders."""
    return root / experiment


def run_dir(
    experiment: str,
    cell: str,
    stage: str | None,
    seed: int,
    fingerprint: str,
    root: Path = OUTPUT_ROOT,
) -> Path:
    """A job's checkpoints and evaluations: <root>/<experiment>/<cell>[@stage]/s<seed>-<fp>."""
    return sweep_dir(experiment, root) / run_name(cell, stage) / f"s{seed}-{fingerprint}"


def stage_tag(stage: str | None) -> str:
    return stage or NO_STAGE


def job_tags(
    sweep: str, cell: str, stage: str | None, seed: int, fingerprint: str, engine: str = TORCH
) -> dict:
    """The tags that tie an MLflow run to its sweep job (and say which engine trained it)."""
    return {
        TAG_SWEEP: sweep,
        TAG_CELL: cell,
        TAG_SEED: str(seed),
        TAG_STAGE: stage_tag(stage),
        TAG_FINGERPRINT: fingerprint,
        TAG_ENGINE: engine,
    }
