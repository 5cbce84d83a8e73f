"""Training loop: the paper's recipe, evaluation every ``eval.interval`` epochs, MLflow, resume.

    metrics = train(cfg, resume="auto", run=RunInfo(experiment="table5", tags={...}))

One call trains one config to the end (or to ``stop_after_epoch``), resuming
from ``<run_dir>/last.pth`` when asked. Everything that can be wrong with the
input (config, data files, checkpoints, weights) is checked before the MLflow
run is created, so bad input leaves no run behind.
"""

from __future__ import annotations

import logging
import math
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from torch import nn
from tqdm import tqdm

from pss import contract, dist
from pss.config import ExperimentConfig
from pss.data import build_dataset, build_loader
from pss.deploy.draw import draw_modes, showcase_images
from pss.engine.checkpoint import (
    load_checkpoint,
    load_model_weights,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from pss.engine.evaluate import evaluate
from pss.errors import UserError
from pss.models import Detector
from pss.tracking.logger import FINISHED, KILLED, NullTracker, Tracker, slurm_tags

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class StopTraining(Exception):  # noqa: N818 - a signal, not an error
    """Raised by an ``on_epoch`` callback to end a run early (e.g. a pruned trial)."""


@dataclass
class RunInfo:
    """Where and how a training run is tracked."""

    experiment: str = "pss"
    run_name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    run_id: str | None = None  # continue this MLflow run instead of creating one
    on_open: Callable[[str], None] | None = None  # told the run's id once it is open


# --------------------------------------------------------------------------- set-up


def autocast_dtype(amp: bool | str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype ``train.amp`` asks for on ``device`` (None: float32).

    true: float16 on CUDA, float32 on a CPU; "fp16": float16 (CUDA only);
    "bf16": bfloat16 (a CPU, or a GPU that supports it); false: float32.
    """
    cuda = device.type == "cuda"
    if amp is False or (amp is True and not cuda):
        return None
    if amp == "bf16":
        if cuda and not torch.cuda.is_bf16_supported():
            raise UserError(
                f"train.amp=bf16 but {torch.cuda.get_device_name(device)} has no bfloat16; "
                "use train.amp=fp16"
            )
        return torch.bfloat16
    if not cuda:
        raise UserError(
            "train.amp=fp16 needs a CUDA device (float16 with a gradient scaler); "
            "on a CPU use train.amp=bf16 or false"
        )
    return torch.float16


def lr_lambda(cfg: ExperimentConfig, iters_per_epoch: int) -> Callable[[int], float]:
    """Multiplier of the base lr at iteration ``it``: linear warm-up, then step decay."""
    t = cfg.train
    steps = [s * iters_per_epoch for s in t.lr_steps]

    def factor(it: int) -> float:
        warm = 1.0
        if it < t.warmup_iters:
            warm = t.warmup_factor + (1 - t.warmup_factor) * it / t.warmup_iters
        return warm * t.lr_gamma ** sum(it >= s for s in steps)

    return factor


def build_model(cfg: ExperimentConfig, device: torch.device) -> Detector:
    model = Detector(cfg.model)
    t = cfg.train
    if t.init_from:
        stage1 = load_checkpoint(t.init_from)
        load_model_weights(model, stage1["model"], t.init_from, allow_missing="head.pss.")
    if t.trainable == "pss":
        model.requires_grad_(False)
        model.head.pss.requires_grad_(True)
    if cfg.model.backbone.norm == "bn" and dist.is_distributed():
        model = _synchronise_batchnorm(model, cfg, device)
    return model.to(device)


def _synchronise_batchnorm(
    model: Detector, cfg: ExperimentConfig, device: torch.device
) -> Detector:
    """Trainable BatchNorm under DDP: SyncBatchNorm (batch statistics over all ranks).

    Without it every rank would normalise with its own share of the batch and the
    ranks would not train one process's model. torch's SyncBatchNorm runs on CUDA
    only, so several CPU processes with trainable BatchNorm are refused (one CPU
    process in a group keeps plain BatchNorm: there is nothing to synchronise).
    """
    if cfg.train.trainable == "pss":  # everything but the PSS head frozen, in eval mode
        return model
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if dist.world_size() > 1:
        raise UserError(
            f"model.backbone.norm=bn trains BatchNorm, which {dist.world_size()} CPU "
            "processes cannot synchronise (torch's SyncBatchNorm needs CUDA); use "
            "model.backbone.norm=gn or frozen_bn, or one process"
        )
    return model


def build_optimizer(cfg: ExperimentConfig, detector: Detector) -> torch.optim.Optimizer:
    """``train.optimizer`` on the trainable parameters, lr scaled linearly with the batch."""
    t = cfg.train
    params = [p for p in detector.parameters() if p.requires_grad]
    if t.optimizer == "adamw":
        # Fused: one kernel for all parameters (3.7 vs 13.8 ms a step for the demo's model
        # on one CPU thread, benchmarks/bench_smoke.py), the same update.
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay, fused=True)
    return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)


# --------------------------------------------------------------------------- loop


def _check_finite(losses: dict[str, float], epoch: int, it: int) -> None:
    if not math.isfinite(losses["loss"]):
        parts = ", ".join(f"{k}={v:.4g}" for k, v in losses.items())
        raise TrainingDiverged(
            f"non-finite loss at epoch {epoch}, iteration {it} ({parts}); "
            "lower train.base_lr or check the data"
        )


def forward_losses(
    model: nn.Module,
    detector: Detector,
    images: torch.Tensor,
    targets: list[dict[str, torch.Tensor]],
    amp: torch.dtype | None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """This rank's loss on its share of the global batch, and every loss averaged over ranks.

    images [b, 3, H, W] (b = global batch / world), targets on the same device. The
    network runs under autocast when ``amp`` is a dtype; the losses in float32. The
    first value is what this rank back-propagates; DDP's gradient average makes it
    one process's gradient. The dict is the global batch's losses, the same on every
    rank, for logging and the divergence check (so all ranks stop together).
    """
    images = dist.pad_to_common_size(images)
    with torch.autocast(images.device.type, dtype=amp, enabled=amp is not None):
        out = model(images)
    losses = detector.losses(out, targets)
    means = dist.reduce_mean(torch.stack([v.detach() for v in losses.values()]))
    return losses["loss"], dict(zip(losses, means.tolist()))


def optimizer_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    grad_clip: float | None,
) -> None:
    """Backward (scaled for float16), gradient clipping on the true gradients, step."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    if grad_clip:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        nn.utils.clip_grad_norm_(params, grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


def train_one_epoch(
    model: nn.Module,
    detector: Detector,
    loader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None,
    amp: torch.dtype | None,
    cfg: ExperimentConfig,
    epoch: int,
    iteration: int,
    iters: int,
    tracker: Tracker,
    device: torch.device,
) -> int:
    """One epoch of ``iters`` optimizer steps; returns the iteration count after it."""
    t = cfg.train
    model.train()
    if t.trainable == "pss":  # frozen parts keep their BatchNorm statistics too
        detector.eval()
        detector.head.pss.train()
    interactive = sys.stderr.isatty() and dist.is_main()
    bar = tqdm(total=iters, desc=f"epoch {epoch}/{t.epochs}", disable=not interactive, leave=False)
    window: dict[str, float] = {}
    start = time.perf_counter()
    for step, (images, targets) in enumerate(loader):
        if step >= iters:
            break
        images = images.to(device, non_blocking=True)
        targets = [
            {"boxes": tg["boxes"].to(device), "labels": tg["labels"].to(device)} for tg in targets
        ]
        loss, losses = forward_losses(model, detector, images, targets, amp)
        _check_finite(losses, epoch, iteration)
        optimizer_step(loss, optimizer, scaler, t.grad_clip)
        scheduler.step()
        iteration += 1
        for k, v in losses.items():
            window[k] = window.get(k, 0.0) + v
        window["_n"] = window.get("_n", 0.0) + 1
        bar.update(1)
        if interactive:
            bar.set_postfix(loss=f"{losses['loss']:.3f}", lr=f"{scheduler.get_last_lr()[0]:.2g}")
        if iteration % t.log_interval == 0 or step == iters - 1:
            n = window.pop("_n")
            means = {k: v / n for k, v in window.items()}
            means["lr"] = scheduler.get_last_lr()[0]
            tracker.log_metrics(means, step=iteration)
            if not interactive and dist.is_main():
                rate = (time.perf_counter() - start) / (step + 1)
                eta = rate * (iters - step - 1)
                log.info(
                    "epoch %d/%d iter %d/%d loss %.4f lr %.3g eta %s",
                    epoch,
                    t.epochs,
                    step + 1,
                    iters,
                    means["loss"],
                    means["lr"],
                    time.strftime("%H:%M:%S", time.gmtime(eta)),
                )
            window = {}
    bar.close()
    return iteration


def train(
    cfg: ExperimentConfig,
    resume: str | Path | None = None,
    run: RunInfo | None = None,
    stop_after_epoch: int | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, float]:
    """Train ``cfg`` and return the last evaluation's metrics (rank 0; {} elsewhere).

    resume: a checkpoint path, or "auto" for ``<run_dir>/last.pth`` if it exists.
    stop_after_epoch: return after this epoch as if interrupted (tests, two-part runs).
    on_epoch: called on rank 0 as ``on_epoch(epoch, metrics)`` after each evaluation;
    it may raise :class:`StopTraining`.
    """
    run = run or RunInfo()
    device = dist.init_from_environment()
    t = cfg.train
    amp = autocast_dtype(t.amp, device)
    if t.batch_size % dist.world_size():
        raise UserError(
            f"train.batch_size={t.batch_size} is not divisible by {dist.world_size()} processes"
        )
    ckpt_path = cfg.run_dir / contract.CHECKPOINT
    if resume == "auto":
        resume = ckpt_path if ckpt_path.is_file() else None
    state = load_checkpoint(resume) if resume else None

    train_set = build_dataset(cfg.data, "train", seed=t.seed)
    val_set = build_dataset(cfg.data, "val", seed=t.seed)
    if "num_classes" not in cfg.model.model_fields_set:  # not set: follow the annotations
        cfg.model.num_classes = train_set.num_classes
    if train_set.num_classes != cfg.model.num_classes:
        raise UserError(
            f"model.num_classes={cfg.model.num_classes} but the dataset has "
            f"{train_set.num_classes} categories",
            str(Path(cfg.data.root) / cfg.data.train_annotations),
        )
    if state is not None and state["fingerprint"] != cfg.fingerprint():
        raise UserError(
            f"checkpoint was written for another config (fingerprint {state['fingerprint']}, "
            f"this config {cfg.fingerprint()})",
            str(resume),
        )
    torch.manual_seed(t.seed)
    model = build_model(cfg, device)
    detector = model
    if dist.is_distributed():
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    per_process = t.batch_size // dist.world_size()
    loader_len = max(len(train_set) // t.batch_size, 1)
    iters = min(loader_len, t.iters_per_epoch) if t.iters_per_epoch else loader_len
    optimizer = build_optimizer(cfg, detector)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, iters))
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
    epoch0, iteration = 0, 0
    if state is not None:
        load_model_weights(detector, state["model"], str(resume))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        epoch0, iteration = state["epoch"], state["iteration"]

    tracker = _open_tracker(cfg, run, state)
    if state is not None:
        log.info("resumed from %s (epoch %d, iteration %d)", resume, epoch0, iteration)
        tracker.set_tags({contract.TAG_RESUMED_FROM_EPOCH: str(epoch0)})
    val_loader = build_loader(
        val_set,
        cfg.eval.batch_size,
        cfg.data.num_workers,
        False,
        t.seed,
        dist.is_distributed(),
        cfg.data.size_divisibility,
    )
    metrics: dict[str, float] = {}
    try:
        if epoch0 >= t.epochs:  # finished training, but the run did not end cleanly
            metrics = _evaluate(detector, val_loader, val_set, cfg, device, t.epochs)
            tracker.log_metrics(metrics, step=t.epochs)
        for epoch in range(epoch0 + 1, t.epochs + 1):
            train_set.set_epoch(epoch)
            loader = build_loader(
                train_set,
                per_process,
                cfg.data.num_workers,
                True,
                t.seed,
                dist.is_distributed(),
                cfg.data.size_divisibility,
                epoch=epoch,
            )
            iteration = train_one_epoch(
                model,
                detector,
                loader,
                optimizer,
                scheduler,
                scaler,
                amp,
                cfg,
                epoch,
                iteration,
                iters,
                tracker,
                device,
            )
            # Evaluate before the checkpoint: a job stopped in between resumes from the
            # previous epoch and evaluates this one again, so no evaluation goes missing.
            if epoch % cfg.eval.interval == 0 or epoch == t.epochs:
                metrics = _evaluate(detector, val_loader, val_set, cfg, device, epoch)
                tracker.log_metrics(metrics, step=epoch)
                if on_epoch is not None:
                    _call_on_every_rank(on_epoch, epoch, metrics)
            if dist.is_main():
                save_checkpoint(
                    ckpt_path,
                    {
                        "model": detector.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict() if scaler is not None else None,
                        "rng": rng_state(),
                        "epoch": epoch,
                        "iteration": iteration,
                        "fingerprint": cfg.fingerprint(),
                        "config": cfg.model_dump(mode="json"),
                        "categories": [
                            {"id": i, "name": n}
                            for i, n in zip(train_set.cat_ids, train_set.class_names)
                        ],
                        "run_id": tracker.run_id,
                    },
                )
            dist.barrier()
            if stop_after_epoch is not None and epoch >= stop_after_epoch and epoch < t.epochs:
                tracker.finish(KILLED)
                return metrics
        if dist.is_main():
            _log_final_artifacts(tracker, cfg, epoch=t.epochs)
            if cfg.model.has_pss:
                tracker.log_artifact(draw_validation_modes(cfg, val_set))
        tracker.finish(FINISHED)
        return metrics
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt | SystemExit | StopTraining):
            tracker.finish(KILLED)
        else:
            tracker.fail(traceback.format_exc())
        raise


def _call_on_every_rank(
    on_epoch: Callable[[int, dict[str, float]], None], epoch: int, metrics: dict[str, float]
) -> None:
    """``on_epoch`` runs on rank 0; when it stops the run, every rank stops."""
    stop = None
    if dist.is_main():
        try:
            on_epoch(epoch, metrics)
        except StopTraining as exc:
            stop = exc
    if dist.broadcast_object(stop is not None):
        raise stop or StopTraining(f"stopped by rank 0 after epoch {epoch}")


def _open_tracker(cfg: ExperimentConfig, run: RunInfo, state: dict | None) -> Tracker:
    if not dist.is_main():
        return NullTracker()
    run_id = run.run_id or (state or {}).get("run_id")
    tags = {
        contract.TAG_FINGERPRINT: cfg.fingerprint(),
        contract.TAG_SEED: str(cfg.train.seed),
        contract.TAG_ENGINE: contract.TORCH,
        **slurm_tags(),
        **run.tags,
    }
    if run_id:
        tracker = Tracker.attach(run_id)
        tracker.set_tags(tags)
    else:  # created now: the run's start time is when training started
        tracker = Tracker.create(run.experiment, run.run_name or cfg.name, tags)
    if run.on_open is not None:
        run.on_open(tracker.run_id)
    tracker.log_params(cfg.flat())
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    saved = cfg.run_dir / contract.CONFIG_ARTIFACT
    saved.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    tracker.log_artifact(saved)
    return tracker


def _evaluate(
    detector: Detector, loader, dataset, cfg: ExperimentConfig, device: torch.device, epoch: int
) -> dict[str, float]:
    modes = [m for m in cfg.eval.modes if m != "e2e" or cfg.model.has_pss]
    out_dir = cfg.run_dir / "eval" / f"epoch_{epoch:03d}" if dist.is_main() else None
    metrics = evaluate(
        detector, loader, dataset, modes, device, out_dir, progress=sys.stderr.isatty()
    )
    if dist.is_main():
        summary = ", ".join(f"{k}={v:.1f}" for k, v in metrics.items() if k.startswith("mAP"))
        log.info("epoch %d: %s", epoch, summary)
    return metrics


def _log_final_artifacts(tracker: Tracker, cfg: ExperimentConfig, epoch: int) -> None:
    eval_dirs = sorted((cfg.run_dir / "eval").glob("epoch_*"))
    if eval_dirs:
        last = eval_dirs[-1]
        for path in sorted(last.iterdir()):
            tracker.log_artifact(path, "eval")


def draw_validation_modes(cfg: ExperimentConfig, dataset, count: int = 3) -> Path:
    """``<run_dir>/modes.png``: raw / nms / e2e of the final checkpoint, side by side,
    on ``count`` validation images (:func:`pss.deploy.draw.showcase_images`). Sweep reports
    embed this picture."""
    images = [dataset.image_dir / name for name in showcase_images(dataset.coco.dataset, count)]
    out = cfg.run_dir / contract.MODES_FIGURE
    draw_modes(cfg.run_dir / contract.CHECKPOINT, images, out)
    return out
