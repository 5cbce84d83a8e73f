"""One checkpoint, both engines' evaluation: the same COCO metrics in every mode.

tests/mmdet/test_equivalence.py compares the two models tensor for tensor on one batch.
This test covers the rest of the evaluation path that a sweep's numbers pass through:
reading the validation images (Pillow on both), resizing them to the test
scale, batching, prediction, boxes scaled back to the files' pixels and COCO evaluation
(our pycocotools call, mmdet's CocoMetric). Our smoke recipe is trained briefly on our
engine; its weights are then evaluated by our ``evaluate`` (the run's last metrics) and by
mmdet's validation loop (``pss.mmdet.train.ModesValLoop``) on the translated config.
"""

from __future__ import annotations

import pytest
from mmengine.runner import Runner
from twins import REPO

from pss import contract
from pss.config import load_config
from pss.engine.checkpoint import load_checkpoint
from pss.engine.train import RunInfo, train
from pss.mmdet.cell import class_names
from pss.mmdet.config import load_config as load_mmdet_config
from pss.mmdet.convert import copy_weights
from pss.mmdet.train import COCO_ITEMS
from pss.mmdet.translate import mmdet_config
from pss.models import Detector

EXPERIMENTS = REPO / "experiments"
# The smoke recipe cut to 500 steps (about a minute): a model whose detections evaluate to
# about 9 mAP (nms) on 40 validation images. Shorter, or on 300 training images, it reached
# 0.4-2.7 mAP: too few boxes on the objects for the comparison to mean much.
SHORT = [
    "data.synthetic={train: 1000, val: 40, size: 96, seed: 0, sides: [9, 75]}",
    "train.epochs=5",
    "train.warmup_iters=50",
    "train.lr_steps=[5]",
    "eval.interval=5",
]
# CocoMetric rounds to 0.1 points (ours does not: ours is rounded the same for the
# comparison); both engines decode and resize with Pillow (the translation's backend, as
# ours). One rounding step apart at most. Was 0.3 while mmdet resized with OpenCV.
POINTS = 0.1


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fcos_pss", "atss_pss"])
def test_the_same_weights_get_the_same_metrics_on_both_engines(name, tracking, tmp_path):
    cfg = load_config(
        [EXPERIMENTS / f"{name}_r50_3x.yaml", EXPERIMENTS / "smoke" / "overlay.yaml"],
        [f"data.root={tmp_path / 'shapes'}", f"output_dir={tmp_path / 'ours'}", *SHORT],
    )
    # Its own experiment: other tests check the default one ('pss') stays empty.
    ours = train(cfg, run=RunInfo(experiment="evaluation-on-both-engines"))
    detector = Detector(cfg.model)
    detector.load_state_dict(load_checkpoint(cfg.run_dir / contract.CHECKPOINT)["model"])

    files, options = mmdet_config(cfg, classes=class_names(cfg))
    mmdet_cfg = load_mmdet_config(files, options)
    mmdet_cfg.work_dir = str(tmp_path / "mmdet")
    mmdet_cfg.val_cfg = {"type": "ModesValLoop", "modes": list(contract.MODES)}
    mmdet_cfg.val_evaluator.metric_items = list(COCO_ITEMS)
    runner = Runner.from_cfg(mmdet_cfg)
    assert copy_weights(detector, runner.model) == []  # every weight has its counterpart
    theirs = runner.val()

    compared = [contract.metric_name(m, mode) for m in contract.ACCURACY for mode in contract.MODES]
    assert ours[contract.metric_name(contract.MAP, "nms")] >= 5, ours  # a model that detects
    apart = {
        k: (ours[k], theirs[k])
        for k in compared
        if round(abs(round(ours[k], 1) - theirs[k]), 6) > POINTS
    }
    assert not apart, f"ours vs mmdet's evaluation of one checkpoint: {apart}"
