"""A sweep cell on mmdet's engine: our resolved config, translated, on mmengine's Runner.

    metrics = train_cell(cfg, run)   # cfg: the job's ExperimentConfig; run: its RunInfo

What :class:`pss.sweep.worker.CellJob` runs for a cell whose engine is ``mmdet``.
Like ``pss.engine.train.train`` it joins the job's process group (a multi-task
SLURM job, torchrun), generates the synthetic data a smoke config asks for, lets
``model.num_classes`` follow the annotations unless the config sets it, and
resumes from the newest checkpoint in the job's folder (``cfg.run_dir``, mmengine's
``epoch_N.pth``) into the same MLflow run. The config is translated by
:func:`pss.mmdet.translate.mmdet_config`; the run's params are our flattened config (the
same keys as a torch run's) and ``config.yaml`` is our resolved config.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from pss import dist
from pss.config import ExperimentConfig
from pss.data import ensure_shapes, read_annotations
from pss.data.check import check_data
from pss.engine.lifecycle import RunInfo
from pss.errors import UserError
from pss.mmdet.train import train
from pss.mmdet.translate import mmdet_config

log = logging.getLogger(__name__)


def class_names(cfg: ExperimentConfig) -> list[str]:
    """The category names of the training annotations, in their file's order (mmdet's
    label order); ``cfg.model.num_classes`` set to their number unless the config set it."""
    if cfg.data.synthetic is not None:
        ensure_shapes(Path(cfg.data.root), cfg.data.synthetic)
    path = Path(cfg.data.root) / cfg.data.train_annotations
    names = [str(c.get("name", c["id"])) for c in read_annotations(path)["categories"]]
    if "num_classes" not in cfg.model.model_fields_set:  # not set: follow the annotations
        cfg.model.num_classes = len(names)
    if len(names) != cfg.model.num_classes:
        raise UserError(
            f"model.num_classes={cfg.model.num_classes} but the dataset has "
            f"{len(names)} categories",
            str(path),
        )
    return names


def train_cell(cfg: ExperimentConfig, run: RunInfo) -> dict[str, float]:
    """Train ``cfg`` on mmdet's engine to the end (resuming), logging to ``run``."""
    log.info("%s", check_data(cfg.data))  # both splits, before anything trains (cached)
    dist.init_from_environment()  # before the Runner, which then finds the group joined
    names = class_names(cfg)
    files, options = mmdet_config(
        cfg, world_size=dist.world_size(), cuda=torch.cuda.is_available(), classes=names
    )
    return train(
        files,
        options,
        work_dir=cfg.run_dir,
        run=run,
        resume="auto",
        log_interval=cfg.train.log_interval,
        config=cfg,
    )
