"""mmdet configs from several files merged left to right, and models built from them.

    cfg = load_config(["experiments/mmdet/fcos_pss_r50_3x.py",
                       "experiments/mmdet/smoke/overlay.py"], {"train_cfg.max_epochs": 2})
    model = build_model(cfg)

Later files merge into earlier ones as overlays do in our own configs (nested dicts
merge, lists and other values replace; mmengine's ``_delete_`` replaces a dict whole),
then the dotted ``options`` (mmdet's ``--cfg-options``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmengine.config import Config
from torch import nn

from pss.errors import UserError


def load_config(paths: Sequence[str | Path], options: dict[str, Any] | None = None) -> Config:
    if not paths:
        raise UserError("no mmdet config file given")
    cfgs = []
    for path in paths:
        if not Path(path).is_file():
            raise UserError("mmdet config file not found", str(path))
        try:
            cfgs.append(Config.fromfile(str(path)))
        except Exception as exc:  # noqa: BLE001 - any unreadable config is the user's file
            raise UserError(f"cannot read mmdet config: {exc}", str(path)) from None
    cfg = cfgs[0]
    for overlay in cfgs[1:]:
        cfg.merge_from_dict(overlay.to_dict())
    if options:
        cfg.merge_from_dict(options)
    return cfg


def with_data_root(cfg: Config, root: str) -> Config:
    """``cfg`` reading its data from ``root``: the dataloaders' ``data_root`` and the
    evaluators' annotation files (same relative paths), and ``data_root`` itself."""
    root = root.rstrip("/") + "/"
    cfg.data_root = root
    for split in ("train", "val", "test"):
        loader = cfg.get(f"{split}_dataloader")
        if loader is not None:
            loader.dataset.data_root = root
    for split in ("val", "test"):
        evaluator, loader = cfg.get(f"{split}_evaluator"), cfg.get(f"{split}_dataloader")
        if evaluator is not None and loader is not None and "ann_file" in evaluator:
            evaluator.ann_file = root + loader.dataset.ann_file
    return cfg


def build_model(cfg: Config) -> nn.Module:
    """The detector of ``cfg.model``, in mmdet's default scope (weights not initialised)."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules()
    return MODELS.build(cfg.model)
