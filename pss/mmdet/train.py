"""One training on mmengine's Runner, tracked in MLflow under this project's contract.

    metrics = train(
        ["experiments/mmdet/fcos_pss_r50_3x.py", "experiments/mmdet/smoke/overlay.py"],
        {"train_cfg.max_epochs": 2},
        work_dir="outputs/mmdet/fcos_pss",
        run=RunInfo(experiment="table5", run_name="fcos_pss-2convs", tags={...}),
    )

What a sweep job calls to train a cell on mmdet's engine (through pss.mmdet.cell).
Like ``pss.engine.train.train``:

* one MLflow run, opened and ended by :func:`pss.engine.lifecycle.open_run` as our
  engine's, with the tags of the contract (``pss.fingerprint`` of the merged config,
  ``pss.seed``, ``pss.git_commit``, ``pss.slurm_job_id`` on SLURM, the caller's), plus
  ``pss.engine = mmdet``; params: the flattened merged config (or the caller's
  ``config``'s, with its ``config.yaml``), and the merged config as the artifact
  ``mmdet_config.py``; one process logs (rank 0 of a distributed job);
* every evaluation logs ``{mAP,mAR,AP50,AP75,APs,APm,APl}_{mode}`` in percent with
  step = epoch, for every mode the head has (PSS heads: e2e, nms, raw; the
  baselines: nms; ``val_cfg.modes`` may name fewer), each from mmdet's CocoMetric on
  that mode's detections;
* training losses (mean over ``log_interval`` iterations, our names: loss_box for
  mmdet's loss_bbox, loss_ctr for loss_centerness) and lr with step = iteration;
* ``resume="auto"`` (None: start afresh) continues from the newest checkpoint in
  ``work_dir`` and re-attaches to the run of that work dir, or to ``run.run_id``
  (refusing a work dir of another config's fingerprint); an epoch whose checkpoint was
  written but whose evaluation was not logged (mmengine saves before it evaluates)
  is evaluated first.

* ``forward_ms`` and ``postprocess_ms_{mode}`` (ms per image) with each evaluation;
* the epoch's cost after it (and its evaluation), step = epoch, as our engine's
  (:meth:`pss.tracking.logger.Tracker.log_cost`): ``sec_per_iter``, ``images_per_sec``
  and ``gpu_hours``, added up across a resume into the same run;
* at the end of a PSS model's training, ``modes.png`` (raw / nms / e2e on validation
  images, as our engine draws it).

Not logged (yet): the ``eval/`` artifacts (detections per mode).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from mmdet.datasets import CocoDataset
from mmdet.registry import DATA_SAMPLERS, DATASETS, HOOKS, LOOPS
from mmengine.config import Config
from mmengine.dataset import DefaultSampler
from mmengine.hooks import Hook
from mmengine.runner import Runner, ValLoop
from mmengine.runner.checkpoint import find_latest_checkpoint

from pss import contract, dist
from pss.config import ExperimentConfig, SyntheticConfig, fingerprint, flatten
from pss.data import ensure_shapes
from pss.data.check import fill_area
from pss.engine.evaluate import untimed_batches
from pss.engine.lifecycle import (
    Opening,
    OpenRun,
    RunInfo,
    config_artifact,
    evaluation_due,
    open_run,
)
from pss.errors import EXIT_INVALID, UserError
from pss.mmdet.config import load_config, with_data_root
from pss.mmdet.heads import inference_mode, modes_of
from pss.mmdet.translate import EPOCH_SAMPLER
from pss.tracking.logger import client, cost_clock, retry

log = logging.getLogger("pss.mmdet.train")

RUN_ID_FILE = "mlflow_run_id"  # in the work dir: the run its checkpoints belong to
MMDET_CONFIG = "mmdet_config.py"  # artifact: the merged config the run trained
# mmdet's CocoMetric items, in the order of contract.ACCURACY (mAP, mAR = AR@100, AP50,
# AP75, APs, APm, APl; each over 100 detections per image) -> our metric names.
COCO_ITEMS = dict(
    zip(("mAP", "AR@100", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l"), contract.ACCURACY)
)
# mmdet's loss names -> ours.
LOSS_NAMES = {"loss_bbox": "loss_box", "loss_centerness": "loss_ctr"}


def flat_config(cfg: Config) -> dict[str, Any]:
    """The merged config as {dotted key: JSON value} (its params; its fingerprint is
    :func:`pss.config.fingerprint` of this)."""
    return flatten(json.loads(json.dumps(cfg.to_dict(), default=str)))


@DATA_SAMPLERS.register_module(name=EPOCH_SAMPLER)
class EpochSampler(DefaultSampler):
    """mmengine's DefaultSampler cut to whole batches, at most ``iters_per_epoch`` of
    them: each epoch the first ``iters x global_batch`` images of a new shuffle, shared
    by the processes, as our own loop takes them (``train.iters_per_epoch``)."""

    def __init__(self, dataset, global_batch: int, iters_per_epoch: int | None = None, **kw):
        super().__init__(dataset, **kw)
        iters = max(len(dataset) // global_batch, 1)
        if iters_per_epoch:
            iters = min(iters, iters_per_epoch)
        self.per_epoch = min(iters * global_batch // self.world_size, self.num_samples)

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.per_epoch)

    def __len__(self) -> int:
        return self.per_epoch


@DATASETS.register_module()
class CocoDatasetAreaOptional(CocoDataset):
    """mmdet's CocoDataset reading annotations without COCO's ``area`` as ours does (the
    box's, :func:`pss.data.check.fill_area`); mmdet's fails on them with KeyError."""

    def parse_data_info(self, raw_data_info: dict) -> dict | list[dict]:
        fill_area(raw_data_info["raw_ann_info"])
        return super().parse_data_info(raw_data_info)


class _Stopwatch:
    """Seconds spent in one method of an object, but in its first ``untimed`` calls.

    Installed as an instance attribute over the method (synchronising CUDA before and
    after each call), removed by :meth:`close`.
    """

    def __init__(self, owner: Any, name: str, untimed: int) -> None:
        self.owner, self.name, self.calls, self.seconds = owner, name, 0, 0.0
        method = getattr(owner, name)
        cuda = torch.cuda.is_available()

        def timed(*args, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            out = method(*args, **kwargs)
            if cuda:
                torch.cuda.synchronize()
            if self.calls >= untimed:
                self.seconds += time.perf_counter() - start
            self.calls += 1
            return out

        setattr(owner, name, timed)

    def close(self) -> None:
        delattr(self.owner, self.name)  # the class's method shows through again


@LOOPS.register_module()
class ModesValLoop(ValLoop):
    """mmengine's ValLoop, once per inference mode; metrics in percent, named f"{m}_{mode}".

    ``modes``: the modes to evaluate, of those the head answers in (None: all of them).
    Timings as our engine's, in ms per image over all batches but the first few
    (:func:`pss.engine.evaluate.untimed_batches`): ``postprocess_ms_{mode}`` is the head's
    ``predict_by_feat``, ``forward_ms`` the rest of ``val_step`` (data preprocessor and
    network) in the first mode's pass.
    """

    def __init__(self, runner, dataloader, evaluator, fp16: bool = False, modes=None) -> None:
        super().__init__(runner, dataloader, evaluator, fp16)
        self.modes = None if modes is None else tuple(modes)
        for metric in self.evaluator.metrics:  # CocoMetric reads the file itself, 'area' too
            if getattr(metric, "_coco_api", None) is not None:
                fill_area(metric._coco_api.anns.values())

    def run(self) -> dict[str, float]:
        self.runner.call_hook("before_val")
        self.runner.call_hook("before_val_epoch")
        self.runner.model.eval()
        model = getattr(self.runner.model, "module", self.runner.model)
        head = model.bbox_head
        # COCOeval's box metrics, and for an instance segmentation model (CondInst) its
        # mask metrics as our engine names them (mAP_segm_e2e, ...).
        kinds = {"bbox": str}
        if getattr(model, "mask_head", None) is not None:
            kinds[contract.SEGM] = contract.segm_name
        metrics: dict[str, float] = {}
        for mode in modes_of(self.runner.model, self.modes):
            untimed = untimed_batches(self.dataloader)
            whole = _Stopwatch(self.runner.model, "val_step", untimed)
            post = _Stopwatch(head, "predict_by_feat", untimed)
            timed_images = 0
            try:
                with inference_mode(self.runner.model, mode):
                    for idx, data_batch in enumerate(self.dataloader):
                        self.run_iter(idx, data_batch)
                        if idx >= untimed:
                            timed_images += len(data_batch["inputs"])
            finally:
                whole.close()
                post.close()
            per_image = 1000 / max(timed_images, 1)
            if contract.FORWARD_MS not in metrics:
                metrics[contract.FORWARD_MS] = (whole.seconds - post.seconds) * per_image
            metrics[contract.metric_name(contract.POSTPROCESS_MS, mode)] = post.seconds * per_image
            found = self.evaluator.evaluate(len(self.dataloader.dataset))
            if not found:  # CocoMetric returns nothing for no detections at all: 0 AP, 0 AR
                log.warning("no detections in mode %s: every metric is 0", mode)
            for item, name in COCO_ITEMS.items():
                for kind, named in kinds.items():
                    value = found[f"coco/{kind}_{item}"] if found else 0.0
                    # CocoMetric rounds to 3 decimals, i.e. 0.1 points; -1: no such objects.
                    metrics[contract.metric_name(named(name), mode)] = round(
                        max(value, 0.0) * 100, 1
                    )
        self.runner.call_hook("after_val_epoch", metrics=metrics)
        self.runner.call_hook("after_val")
        return metrics


@HOOKS.register_module()
class MLflowContractHook(Hook):
    """Logs losses (step = iteration) and evaluations (step = epoch) to the run
    :func:`pss.engine.lifecycle.open_run` holds; evaluates an epoch saved but not
    evaluated when it resumes; stops after ``stop_after_epoch``."""

    priority = "LOW"

    def __init__(
        self, opened: OpenRun, log_interval: int = 20, stop_after_epoch: int | None = None
    ):
        self.opened = opened
        self.tracker = opened.tracker
        self.log_interval = log_interval
        self.stop_after_epoch = stop_after_epoch
        self.window: dict[str, float] = {}
        self.count = 0
        self.last_metrics: dict[str, float] = {}
        # The epoch's cost, as our engine logs it (Tracker.log_cost): the epoch trained
        # and not yet logged, when it began, and its training wall seconds.
        self.clock = cost_clock("cuda" if torch.cuda.is_available() else "cpu")
        self.pending: int | None = None
        self.began = self.spent_from = self.trained = 0.0

    def before_train(self, runner) -> None:
        epoch = runner.epoch
        if epoch > 0:
            self.opened.resumed_from(epoch)
            loop = runner.train_loop
            due = evaluation_due(epoch, loop.val_interval, loop.max_epochs)
            if runner.val_loop is not None and due and not self._evaluated(runner, epoch):
                log.info("epoch %d was saved but not evaluated: evaluating it now", epoch)
                runner.val_loop.run()

    def _evaluated(self, runner, epoch: int) -> bool:
        """Whether the run holds epoch's evaluation (asked on every rank: all evaluate)."""
        modes = modes_of(runner.model, runner.val_loop.modes)
        if not modes:
            return True
        name = contract.metric_name(contract.MAP, modes[0])
        found = [0]
        if dist.is_main():
            history = retry(client().get_metric_history, self.tracker.run_id, name)
            found = [int(any(m.step == epoch for m in history))]
        if dist.is_distributed():
            torch.distributed.broadcast_object_list(found, src=0)
        return bool(found[0])

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        for key, value in (outputs or {}).items():
            name = LOSS_NAMES.get(key, key)
            value = value.detach() if isinstance(value, torch.Tensor) else value
            self.window[name] = self.window.get(name, 0.0) + float(value)
        self.count += 1
        end_of_epoch = batch_idx + 1 == len(runner.train_dataloader)
        if (runner.iter + 1) % self.log_interval == 0 or end_of_epoch:
            means = {k: v / self.count for k, v in self.window.items()}
            means["lr"] = runner.optim_wrapper.get_lr()["lr"][0]
            self.tracker.log_metrics(means, step=runner.iter + 1)
            self.window, self.count = {}, 0

    def before_train_epoch(self, runner) -> None:
        self._log_cost(runner)  # the last epoch's, if it was not evaluated
        self.began, self.spent_from = time.perf_counter(), self.clock()

    def after_train_epoch(self, runner) -> None:
        # runner.epoch is the epoch just trained, counted from 0.
        self.trained, self.pending = time.perf_counter() - self.began, runner.epoch + 1
        if self.stop_after_epoch is not None and runner.epoch + 1 >= self.stop_after_epoch:
            runner.train_loop.stop_training = True

    def after_val_epoch(self, runner, metrics: dict[str, float] | None = None) -> None:
        self.last_metrics = dict(metrics or {})
        self.tracker.log_metrics(self.last_metrics, step=runner.epoch)
        self._log_cost(runner)

    def after_train(self, runner) -> None:
        self._log_cost(runner)

    def _log_cost(self, runner) -> None:
        """sec_per_iter, images_per_sec and gpu_hours of the epoch trained (and evaluated,
        when it was) since :meth:`before_train_epoch`, step = that epoch."""
        if self.pending is None:
            return
        iters = len(runner.train_dataloader)
        images = iters * runner.cfg.train_dataloader.batch_size * dist.world_size()
        spent = self.clock() - self.spent_from
        self.tracker.log_cost(self.pending, iters, images, self.trained, spent, dist.world_size())
        self.pending = None


def train(
    config_files: Sequence[str | Path],
    options: dict[str, Any] | None = None,
    *,
    work_dir: str | Path,
    run: RunInfo | None = None,
    data_root: str | Path | None = None,
    resume: str | None = "auto",
    log_interval: int = 20,
    stop_after_epoch: int | None = None,
    config: ExperimentConfig | None = None,
) -> dict[str, float]:
    """Train the merged config to its last epoch (or ``stop_after_epoch``); the last
    evaluation's metrics. Bad input fails before an MLflow run is created.

    The run's fingerprint is the caller's (``run.tags``, a sweep job's) or that of the
    merged config. ``config``: our config this one was translated from (a sweep cell's):
    the run's params and ``config.yaml`` are its.
    """
    cfg = load_config(config_files, options)
    fp = fingerprint(flat_config(cfg))  # of what the files and options say
    work = Path(work_dir)
    _settle(cfg, work, data_root, log_interval)
    latest = find_latest_checkpoint(str(work)) if resume == "auto" and work.is_dir() else None
    cfg.resume = latest is not None
    runner = Runner.from_cfg(cfg)  # builds the model and hooks: a bad config stops here
    opening = Opening(
        name=Path(config_files[0]).stem,
        fingerprint=fp,
        seed=cfg.randomness.seed,
        engine=contract.MMDET,
        params=flat_config(cfg) if config is None else config.flat(),
        texts={MMDET_CONFIG: cfg.pretty_text, **(config_artifact(config) if config else {})},
        resumes=latest,
        checkpoint_run=_run_of(work) if latest else None,
    )
    with open_run(run or RunInfo(), opening) as opened:
        if dist.is_main():
            work.mkdir(parents=True, exist_ok=True)
            (work / RUN_ID_FILE).write_text(opened.tracker.run_id)
        hook = MLflowContractHook(opened, log_interval, stop_after_epoch)
        runner.register_hook(hook)
        with mmengine_checkpoint_globals():
            runner.train()
        if runner.epoch < runner.max_epochs:  # stopped after stop_after_epoch
            opened.status = contract.KILLED
        elif dist.is_main() and "e2e" in modes_of(runner.model):
            # Imported here: mmdet's visualisation pipeline only where a picture is drawn.
            from pss.mmdet.draw import draw_validation_modes

            opened.tracker.log_artifact(draw_validation_modes(runner, work))
    return hook.last_metrics


def _settle(cfg: Config, work: Path, data_root: str | Path | None, log_interval: int) -> None:
    """What this project sets in a merged config (evaluation loop and metrics, work dir,
    log interval, a seed), its data generated or checked: bad data stops here."""
    if data_root is not None:
        with_data_root(cfg, str(data_root))
    cfg.work_dir = str(work)
    cfg.val_cfg = {"type": "ModesValLoop", "modes": (cfg.get("val_cfg") or {}).get("modes")}
    cfg.val_evaluator.metric_items = list(COCO_ITEMS)
    for split in ("train", "val", "test"):
        dataset = (cfg.get(f"{split}_dataloader") or {}).get("dataset") or {}
        if dataset.get("type") == "CocoDataset":
            dataset.type = CocoDatasetAreaOptional.__name__
    cfg.default_hooks.logger.interval = log_interval
    synthetic = cfg.get("pss_synthetic")
    if synthetic:
        ensure_shapes(Path(cfg.data_root), SyntheticConfig(**synthetic))
    _check_annotations(cfg)
    seed = (cfg.get("randomness") or {}).get("seed")
    cfg.randomness = {**(cfg.get("randomness") or {}), "seed": 0 if seed is None else seed}


def _run_of(work: Path) -> str | None:
    """The MLflow run of the checkpoints in ``work`` (written when it opened)."""
    saved = work / RUN_ID_FILE
    return saved.read_text().strip() if saved.is_file() else None


def mmengine_checkpoint_globals():
    """A context in which torch.load's weights-only unpickler reads mmengine's checkpoints.

    mmengine 0.10.7 resumes with a plain ``torch.load``, which since torch 2.6 loads
    weights only and refuses what mmengine saves beside them (its message hub: numpy
    arrays and dtypes, ``HistoryBuffer``, whose statistics methods pickle through
    ``getattr``). These are allowlisted; weights_only stays on.
    """
    import builtins

    import numpy as np
    import torch
    from mmengine.logging.history_buffer import HistoryBuffer

    dtypes = [getattr(np.dtypes, name) for name in np.dtypes.__all__]
    return torch.serialization.safe_globals(
        [
            np.ndarray,
            np.dtype,
            *dtypes,
            np._core.multiarray._reconstruct,
            np._core.multiarray.scalar,
            HistoryBuffer,
            builtins.getattr,
        ]
    )


def _check_annotations(cfg: Config) -> None:
    """Every dataloader's annotation file exists (before anything is created)."""
    for split in ("train_dataloader", "val_dataloader"):
        dataset = cfg.get(split, {}).get("dataset", {})
        if "ann_file" in dataset:
            path = Path(dataset.get("data_root") or "") / dataset["ann_file"]
            if not path.is_file():
                raise UserError(f"{split}: annotation file not found", str(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pss.mmdet.train", description="Train an mmdet config, tracked in MLflow"
    )
    parser.add_argument("configs", nargs="+", help="config files, merged left to right")
    parser.add_argument("--work-dir", required=True)
    parser.add_argument("--experiment", default="pss-mmdet", help="MLflow experiment")
    parser.add_argument("--run-name", default=None)
    parser.add_argument("--data-root", default=None)
    parser.add_argument(
        "--cfg-options", nargs="*", default=[], metavar="KEY=VALUE", help="train_cfg.max_epochs=2"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    try:
        options = dict(_option(text) for text in args.cfg_options)
        metrics = train(
            args.configs,
            options,
            work_dir=args.work_dir,
            run=RunInfo(experiment=args.experiment, run_name=args.run_name),
            data_root=args.data_root,
        )
    except UserError as exc:
        print(exc, file=sys.stderr)
        return EXIT_INVALID
    print(json.dumps(metrics, indent=1))
    return 0


def _option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise UserError(f"--cfg-options: expected KEY=VALUE, got '{text}'")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


if __name__ == "__main__":
    sys.exit(main())
