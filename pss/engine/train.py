"""Training loop: the paper's recipe, evaluation every ``eval.interval`` epochs, MLflow, resume.

    metrics = train(cfg, resume="auto", run=RunInfo(experiment="table5", tags={...}))

One call trains one config to the end (or to ``stop_after_epoch``), resuming
from ``<run_dir>/last.pth`` when asked. Everything that can be wrong with the
input (config, data files, checkpoints, weights) is checked before the MLflow
run is created (:func:`build_loop`), so bad input leaves no run behind. The run's
life (open or re-attach, tags, status on exit) is :mod:`pss.engine.lifecycle`'s.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from pss import contract, dist
from pss.config import ExperimentConfig
from pss.data import CocoDetection, build_dataset, build_loader
from pss.data.check import check_data
from pss.deploy.draw import draw_modes, showcase_images
from pss.engine.checkpoint import (
    load_checkpoint,
    load_model_weights,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from pss.engine.evaluate import evaluate
from pss.engine.lifecycle import (
    Opening,
    RunInfo,
    StopTraining,
    check_fingerprint,
    config_artifact,
    evaluation_due,
    open_run,
)
from pss.engine.step import (
    autocast_dtype,
    build_optimizer,
    forward_losses,
    optimizer_step,
    to_memory_format,
)
from pss.errors import RunFailed, UserError
from pss.models import Detector
from pss.models.decode import modes_for
from pss.tracking.logger import KILLED, Tracker, cost_clock

log = logging.getLogger(__name__)


class TrainingDiverged(RunFailed):
    """The loss, the gradients or the weights became NaN or infinite."""


# --------------------------------------------------------------------------- set-up


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
    return to_memory_format(model.to(device), t.channels_last)


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


# --------------------------------------------------------------------------- state


@dataclass
class Loop:
    """One training's parts and where it stands (built by :func:`build_loop`)."""

    cfg: ExperimentConfig
    device: torch.device
    amp: torch.dtype | None  # autocast dtype (None: float32)
    detector: Detector
    model: nn.Module  # the detector, or DDP around it
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler | None  # float16 only
    iters: int  # optimizer steps an epoch
    train_set: CocoDetection
    val_set: CocoDetection
    val_loader: DataLoader
    epoch: int = 0  # the last finished epoch
    iteration: int = 0  # optimizer steps so far
    checkpoint_run: str | None = None  # the MLflow run of the checkpoint restored

    def train_loader(self, epoch: int) -> DataLoader:
        """This process's batches of epoch ``epoch`` (an order of its own, augmentations too)."""
        cfg = self.cfg
        self.train_set.set_epoch(epoch)
        return build_loader(
            self.train_set,
            cfg.train.batch_size // dist.world_size(),
            cfg.data.num_workers,
            True,
            cfg.train.seed,
            dist.is_distributed(),
            cfg.data.size_divisibility,
            epoch=epoch,
        )

    def checkpoint(self, run_id: str | None) -> dict[str, Any]:
        """``last.pth`` after ``self.epoch`` (the fields: pss.engine.checkpoint)."""
        names = zip(self.train_set.cat_ids, self.train_set.class_names)
        return {
            "model": self.detector.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rng_state(),
            "epoch": self.epoch,
            "iteration": self.iteration,
            "fingerprint": self.cfg.fingerprint(),
            "config": self.cfg.model_dump(mode="json"),
            "categories": [{"id": i, "name": n} for i, n in names],
            "run_id": run_id,
        }

    def restore(self, state: dict[str, Any], source: str) -> None:
        """Continue from a checkpoint: weights, optimizer, schedule, scaler, RNG, counters."""
        load_model_weights(self.detector, state["model"], source)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.epoch, self.iteration = state["epoch"], state["iteration"]
        self.checkpoint_run = state.get("run_id")


def build_loop(cfg: ExperimentConfig, resume: Path | None) -> Loop:
    """Check the input and build the training, restored from ``resume`` (a checkpoint)."""
    device = dist.init_from_environment()
    t = cfg.train
    amp = autocast_dtype(t.amp, device)
    if t.batch_size % dist.world_size():
        raise UserError(
            f"train.batch_size={t.batch_size} is not divisible by {dist.world_size()} processes"
        )
    _check_run_dir(cfg)
    state = load_checkpoint(resume) if resume else None
    log.info("%s", check_data(cfg.data))  # both splits, before anything trains (cached)
    train_set, val_set = _datasets(cfg)
    if state is not None:
        check_fingerprint(state["fingerprint"], cfg.fingerprint(), str(resume))
    torch.manual_seed(t.seed)
    detector = build_model(cfg, device)
    optimizer = build_optimizer(cfg, detector)
    iters = _iters_per_epoch(cfg, train_set)
    loop = Loop(
        cfg=cfg,
        device=device,
        amp=amp,
        detector=detector,
        model=_parallel(detector, device),
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, iters)),
        scaler=torch.amp.GradScaler("cuda") if amp == torch.float16 else None,
        iters=iters,
        train_set=train_set,
        val_set=val_set,
        val_loader=build_loader(
            val_set,
            cfg.eval.batch_size,
            cfg.data.num_workers,
            False,
            t.seed,
            dist.is_distributed(),
            cfg.data.size_divisibility,
        ),
    )
    if state is not None:
        loop.restore(state, str(resume))
        log.info("resumed from %s (epoch %d, iteration %d)", resume, loop.epoch, loop.iteration)
    return loop


def _check_run_dir(cfg: ExperimentConfig) -> None:
    """The run's folder can be made: no file where it, or a folder above it, goes."""
    for folder in (cfg.run_dir, *cfg.run_dir.parents):
        if folder.exists():
            if not folder.is_dir():
                raise UserError(
                    f"a file where the run's folder {cfg.run_dir} goes; output_dir names a "
                    "folder (made if missing)",
                    str(folder),
                )
            return


def _parallel(detector: Detector, device: torch.device) -> nn.Module:
    """The module a training step runs: DDP around the detector in a process group."""
    if not dist.is_distributed():
        return detector
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(detector, device_ids=ids)


def _iters_per_epoch(cfg: ExperimentConfig, train_set: CocoDetection) -> int:
    """Whole global batches of the training set, at most ``train.iters_per_epoch``."""
    whole = max(len(train_set) // cfg.train.batch_size, 1)
    return min(whole, cfg.train.iters_per_epoch) if cfg.train.iters_per_epoch else whole


def _datasets(cfg: ExperimentConfig) -> tuple[CocoDetection, CocoDetection]:
    """The train and val sets; ``model.num_classes`` follows the annotations unless set."""
    masks = cfg.model.has_masks
    train_set = build_dataset(cfg.data, "train", seed=cfg.train.seed, masks=masks)
    val_set = build_dataset(cfg.data, "val", seed=cfg.train.seed)
    if "num_classes" not in cfg.model.model_fields_set:  # not set: follow the annotations
        cfg.model.num_classes = train_set.num_classes
    if train_set.num_classes != cfg.model.num_classes:
        raise UserError(
            f"model.num_classes={cfg.model.num_classes} but the dataset has "
            f"{train_set.num_classes} categories",
            str(Path(cfg.data.root) / cfg.data.train_annotations),
        )
    return train_set, val_set


# --------------------------------------------------------------------------- loop


_WHAT_TO_TRY = (
    "try a lower train.base_lr, a longer train.warmup_iters or a smaller train.grad_clip, "
    "and check the data"
)


def _diverged(loop: Loop, epoch: int, what: str) -> TrainingDiverged:
    """One line: the iteration, what went non-finite, the learning rate, what to try."""
    lr = loop.scheduler.get_last_lr()[0]
    kept = (
        f"{loop.cfg.run_dir / contract.CHECKPOINT} (epoch {loop.epoch}) is from before it"
        if loop.epoch
        else "no checkpoint was written"
    )
    return TrainingDiverged(
        f"training diverged at iteration {loop.iteration} (epoch {epoch}, lr {lr:.3g}): "
        f"{what}; {_WHAT_TO_TRY}; {kept}"
    )


def _check_losses(loop: Loop, epoch: int, losses: dict[str, float]) -> None:
    """Every loss of the global batch finite (the same dict on every rank: all stop)."""
    bad = [k for k, v in losses.items() if not math.isfinite(v)]
    if bad:
        good = ", ".join(f"{k}={v:.4g}" for k, v in losses.items() if math.isfinite(v))
        raise _diverged(
            loop, epoch, f"non-finite {', '.join(bad)}" + (f" ({good})" if good else "")
        )


def _check_weights(loop: Loop, epoch: int) -> None:
    """Every weight finite, before this epoch is evaluated and its checkpoint written."""
    for name, param in loop.detector.named_parameters():
        if not bool(torch.isfinite(param).all()):
            raise _diverged(loop, epoch, f"non-finite weights after the epoch ({name})")


class _LossLog:
    """Training losses averaged over ``train.log_interval`` steps (and at the end of an
    epoch): to MLflow (step = iteration), to a progress bar on a terminal, else the log."""

    def __init__(self, loop: Loop, epoch: int, tracker: Tracker) -> None:
        self.loop, self.epoch, self.tracker = loop, epoch, tracker
        self.interactive = sys.stderr.isatty() and dist.is_main()
        desc = f"epoch {epoch}/{loop.cfg.train.epochs}"
        self.bar = tqdm(total=loop.iters, desc=desc, disable=not self.interactive, leave=False)
        self.window: dict[str, float] = {}
        self.start = time.perf_counter()

    def add(self, step: int, losses: dict[str, float]) -> None:
        """The losses of step ``step`` of this epoch (0-based), after its optimizer step."""
        for k, v in losses.items():
            self.window[k] = self.window.get(k, 0.0) + v
        self.window["_n"] = self.window.get("_n", 0.0) + 1
        lr = self.loop.scheduler.get_last_lr()[0]
        self.bar.update(1)
        if self.interactive:
            self.bar.set_postfix(loss=f"{losses['loss']:.3f}", lr=f"{lr:.2g}")
        iters = self.loop.iters
        if self.loop.iteration % self.loop.cfg.train.log_interval == 0 or step == iters - 1:
            n = self.window.pop("_n")
            means = {k: v / n for k, v in self.window.items()}
            means["lr"] = lr
            self.tracker.log_metrics(means, step=self.loop.iteration)
            if not self.interactive and dist.is_main():
                eta = (time.perf_counter() - self.start) / (step + 1) * (iters - step - 1)
                log.info(
                    "epoch %d/%d iter %d/%d loss %.4f lr %.3g eta %s",
                    *(self.epoch, self.loop.cfg.train.epochs, step + 1, iters),
                    *(means["loss"], lr, time.strftime("%H:%M:%S", time.gmtime(eta))),
                )
            self.window = {}

    def close(self) -> None:
        self.bar.close()


def train_one_epoch(loop: Loop, epoch: int, tracker: Tracker) -> None:
    """Epoch ``epoch``: ``loop.iters`` optimizer steps (``loop.iteration`` counts them)."""
    loop.model.train()
    if loop.cfg.train.trainable == "pss":  # frozen parts keep their BatchNorm statistics too
        loop.detector.eval()
        loop.detector.head.pss.train()
    losses_log = _LossLog(loop, epoch, tracker)
    for step, (images, targets) in enumerate(loop.train_loader(epoch)):
        if step >= loop.iters:
            break
        losses_log.add(step, train_step(loop, epoch, images, targets))
    losses_log.close()


def train_step(
    loop: Loop, epoch: int, images: torch.Tensor, targets: list[dict[str, Any]]
) -> dict[str, float]:
    """One optimizer step on one batch of this process (images [b, 3, H, W], the loader's
    targets), the schedule stepped after it; returns the global batch's losses."""
    images = images.to(loop.device, non_blocking=True)
    kept = ("boxes", "labels", "masks")  # masks: instance segmentation models' sets only
    targets = [{k: tg[k].to(loop.device) for k in kept if k in tg} for tg in targets]
    loss, losses = forward_losses(loop.model, loop.detector, images, targets, loop.amp)
    _check_losses(loop, epoch, losses)
    if not optimizer_step(loss, loop.optimizer, loop.scaler, loop.cfg.train.grad_clip):
        raise _diverged(loop, epoch, f"non-finite gradients (loss={losses['loss']:.4g})")
    loop.scheduler.step()
    loop.iteration += 1
    return losses


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
    if resume == "auto":
        resume = cfg.run_dir / contract.CHECKPOINT
        resume = resume if resume.is_file() else None
    loop = build_loop(cfg, Path(resume) if resume else None)
    with open_run(run or RunInfo(), _opening(loop, resume)) as opened:
        if resume:
            opened.resumed_from(loop.epoch)
        metrics = _epochs(loop, opened.tracker, stop_after_epoch, on_epoch)
        if loop.epoch < cfg.train.epochs:  # stopped after stop_after_epoch
            opened.status = KILLED
        elif dist.is_main():
            _log_final_artifacts(opened.tracker, cfg, epoch=cfg.train.epochs)
            if cfg.model.has_pss:
                opened.tracker.log_artifact(draw_validation_modes(cfg, loop.val_set))
    return metrics


def _epochs(
    loop: Loop,
    tracker: Tracker,
    stop_after_epoch: int | None,
    on_epoch: Callable[[int, dict[str, float]], None] | None,
) -> dict[str, float]:
    """Train the epochs after ``loop.epoch``: each evaluated when due, then saved."""
    cfg, epochs = loop.cfg, loop.cfg.train.epochs
    metrics: dict[str, float] = {}
    if loop.epoch >= epochs:  # finished training, but the run did not end cleanly
        metrics = _evaluate(loop, epochs)
        tracker.log_metrics(metrics, step=epochs)
    clock = cost_clock(loop.device.type)  # gpu_hours: wall on a GPU, CPU time on a CPU
    for epoch in range(loop.epoch + 1, epochs + 1):
        began, spent_from = time.perf_counter(), clock()
        train_one_epoch(loop, epoch, tracker)
        trained = time.perf_counter() - began
        _check_weights(loop, epoch)
        # Evaluate before the checkpoint: a job stopped in between resumes from the
        # previous epoch and evaluates this one again, so no evaluation goes missing.
        if evaluation_due(epoch, cfg.eval.interval, epochs):
            metrics = _evaluate(loop, epoch)
            tracker.log_metrics(metrics, step=epoch)
            if on_epoch is not None:
                _call_on_every_rank(on_epoch, epoch, metrics)
        spent = clock() - spent_from  # sec_per_iter, images_per_sec, gpu_hours:
        images = loop.iters * cfg.train.batch_size
        tracker.log_cost(epoch, loop.iters, images, trained, spent, dist.world_size())
        loop.epoch = epoch
        if dist.is_main():
            save_checkpoint(cfg.run_dir / contract.CHECKPOINT, loop.checkpoint(tracker.run_id))
        dist.barrier()
        if stop_after_epoch is not None and stop_after_epoch <= epoch < epochs:
            break
    return metrics


def _opening(loop: Loop, resume: str | Path | None) -> Opening:
    """The run of a torch training: our config's params, its ``config.yaml`` (also in the
    run's folder), the run of the checkpoint it resumes."""
    cfg = loop.cfg
    texts = config_artifact(cfg)
    if dist.is_main():
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        (cfg.run_dir / contract.CONFIG_ARTIFACT).write_text(texts[contract.CONFIG_ARTIFACT])
    return Opening(
        name=cfg.name,
        fingerprint=cfg.fingerprint(),
        seed=cfg.train.seed,
        engine=contract.TORCH,
        params=cfg.flat(),
        texts=texts,
        resumes=str(resume) if resume else None,
        checkpoint_run=loop.checkpoint_run,
    )


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


def _evaluate(loop: Loop, epoch: int) -> dict[str, float]:
    cfg = loop.cfg
    modes = list(modes_for(cfg.model.has_pss, cfg.eval.modes))
    out_dir = cfg.run_dir / "eval" / f"epoch_{epoch:03d}" if dist.is_main() else None
    metrics = evaluate(
        loop.detector,
        loop.val_loader,
        loop.val_set,
        modes,
        loop.device,
        out_dir,
        progress=sys.stderr.isatty(),
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
