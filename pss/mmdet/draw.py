"""raw / nms / e2e of a trained mmdet model on validation images: ``modes.png``, as our
engine draws it at the end of a PSS training (:func:`pss.deploy.draw.draw_runners`).

    path = draw_validation_modes(runner, work_dir)   # after runner.train()
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from mmcv.transforms import Compose
from mmdet.utils import get_test_pipeline_cfg
from PIL import Image
from torch import nn

from pss import contract
from pss.data import read_annotations
from pss.deploy.draw import draw_runners, showcase_images
from pss.deploy.inference import Category
from pss.mmdet.heads import inference_mode
from pss.models.decode import Detections

MODES = ("raw", "nms", "e2e")  # the picture's columns, left to right


def mmdet_runner(model: nn.Module, cfg, mode: str) -> Callable[[Image.Image], Detections]:
    """``runner(image) -> Detections`` (image pixels) of an mmdet detector in ``mode``,
    through the config's test pipeline (without its annotations)."""
    steps = [dict(s) for s in get_test_pipeline_cfg(cfg) if s["type"] != "LoadAnnotations"]
    steps[0] = {"type": "mmdet.LoadImageFromNDArray"}
    pipeline = Compose(steps)

    @torch.no_grad()
    def run(image: Image.Image) -> Detections:
        bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
        data = pipeline({"img": bgr, "img_id": 0})
        with inference_mode(model, mode):
            sample = model.test_step(
                {"inputs": [data["inputs"]], "data_samples": [data["data_samples"]]}
            )[0]
        found = sample.pred_instances
        return {
            "boxes": found.bboxes.cpu(),
            "scores": found.scores.cpu(),
            "labels": found.labels.cpu(),
        }

    return run


def draw_validation_modes(runner, work_dir: Path, count: int = 3) -> Path:
    """``<work_dir>/modes.png`` of the runner's model (with a PSS head) on ``count``
    validation images (:func:`pss.deploy.draw.showcase_images`)."""
    model = getattr(runner.model, "module", runner.model)
    dataset = runner.cfg.val_dataloader.dataset
    root = Path(dataset.get("data_root") or "")
    coco = read_annotations(root / dataset.ann_file)
    classes = (dataset.get("metainfo") or {}).get("classes")
    names = list(classes) if classes else [c["name"] for c in coco["categories"]]
    categories = [Category(id=i, name=str(n)) for i, n in enumerate(names)]
    folder = root / (dataset.get("data_prefix") or {}).get("img", "")
    images = [folder / name for name in showcase_images(coco, count)]
    was_training = model.training
    model.eval()
    try:
        runners = {mode: mmdet_runner(model, runner.cfg, mode) for mode in MODES}
        out = Path(work_dir) / contract.MODES_FIGURE
        draw_runners(runners, categories, images, out)
    finally:
        model.train(was_training)
    return out
