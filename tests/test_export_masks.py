"""ONNX export of CondInst and CondInst_PSS: the graph returns boxes, scores, labels and
masks (no NMS op in e2e), and ONNX Runtime gives PyTorch's detections: boxes within
0.5 px (held to BOX_ATOL), each instance's mask IoU >= 0.99 (at the input's pixels).

Fixed-size exports of a small lively model take seconds; the dynamic one is slow.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from pss import predict
from pss.deploy.graph import MASKS_OUTPUT, OUTPUT_NAMES
from pss.export import NMS_OPS, op_types
from pss.testing.deploy import (
    BOX_ATOL,
    MASK_IOU,
    SCORE_ATOL,
    assert_same_detections,
    assert_same_masks,
    exporter,
    mask_iou,
    run_both,
)

FIXED = (128, 160)
BOX_PX = 0.5  # the bound on the boxes (BOX_ATOL is far below it)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return exporter(tmp_path_factory.mktemp("export_masks"), FIXED)


def check_parity(ckpt, path, mode, inputs, capsys, label):
    """Every input's detections and masks, ORT against PyTorch; prints the figures."""
    worst = {"box": 0.0, "iou": 1.0, "prob": 0.0, "partial": 0, "masks": 0}
    for (b, h, w), (reference, (boxes, scores, labels, masks)) in zip(
        inputs, run_both(ckpt, path, mode, inputs), strict=True
    ):
        h4, w4 = 2 * -(-h // 8), 2 * -(-w // 8)  # stride 4: twice P3's sides
        assert masks.dtype == np.float32 and masks.shape == (b, 100, h4, w4)
        got = assert_same_detections(reference, boxes, scores, labels)
        masked = assert_same_masks(reference, masks, (h, w))
        worst["box"] = max(worst["box"], got["box"])
        worst["iou"] = min(worst["iou"], masked["iou"])
        worst["prob"] = max(worst["prob"], masked["prob"])
        worst["partial"] += masked["partial"]
        worst["masks"] += got["detections"]
    assert worst["box"] <= BOX_PX and worst["iou"] >= MASK_IOU
    # The IoU compares real shapes: many masks neither empty nor the whole image.
    assert worst["masks"] >= 20 * len(inputs) and worst["partial"] >= worst["masks"] / 3
    with capsys.disabled():
        print(
            f"\n  {label}: {worst['masks']} instances, max |box diff| {worst['box']:.2e} px, "
            f"min mask IoU {worst['iou']:.4f}, max |mask prob diff| {worst['prob']:.2e}"
        )


@pytest.mark.parametrize(("name", "mode"), [("condinst_pss", "e2e"), ("condinst", "nms")])
def test_the_graph_returns_masks_that_onnx_runtime_gives_as_pytorch(exported, name, mode, capsys):
    ckpt, path = exported(name, mode, "fixed")
    ops = set(op_types(path))
    if mode == "e2e":
        assert not NMS_OPS & ops and not any("nms" in op.lower() for op in ops), ops
        assert {"Conv", "TopK", "MatMul"} <= ops
    else:
        assert "NonMaxSuppression" in ops
    model = onnx.load(str(path))
    assert [o.name for o in model.graph.output] == [*OUTPUT_NAMES, MASKS_OUTPUT]
    check_parity(ckpt, path, mode, [(1, *FIXED)] * 3, capsys, f"{name} {mode} fixed")


@pytest.mark.slow
def test_the_dynamic_e2e_graph_gives_masks_for_any_batch_and_size(exported, capsys):
    ckpt, path = exported("condinst_pss", "e2e", "dynamic")
    assert not NMS_OPS & set(op_types(path))
    for shape in [(2, 128, 160), (1, 96, 224)]:
        check_parity(ckpt, path, "e2e", [shape], capsys, f"condinst_pss e2e dynamic {shape}")


def test_predict_with_the_onnx_export_writes_the_checkpoints_masks(exported, tmp_path):
    """Images whose input is exactly FIXED both ways (128x160, and 64x80 enlarged x2):
    the same COCO results, boxes and RLE masks in the file's pixels."""
    ckpt, path = exported("condinst_pss", "e2e", "fixed")
    rng = np.random.default_rng(0)
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, (h, w) in [("a", FIXED), ("b", (64, 80))]:
        small = torch.from_numpy(rng.random((3, h // 16, w // 16), dtype=np.float32))
        big = torch.nn.functional.interpolate(small[None], size=(h, w), mode="bilinear")[0]
        Image.fromarray((big.permute(1, 2, 0) * 255).byte().numpy()).save(folder / f"{name}.png")
    results = {}
    for backend, model in [("torch", [str(ckpt)]), ("onnx", ["--onnx", str(path)])]:
        out = tmp_path / backend
        assert predict.main([*model, str(folder), "--out", str(out), "--score-thresh", "0.1"]) == 0
        results[backend] = [
            json.loads((out / f"{kind}.json").read_text())
            for kind in ("detections", "segmentations")
        ]
    (boxes_t, segms_t), (boxes_o, segms_o) = results["torch"], results["onnx"]
    assert len(segms_t) == len(segms_o) == len(boxes_o) == len(boxes_t) > 20
    for a, b in zip(boxes_t, boxes_o, strict=True):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        assert a["score"] == pytest.approx(b["score"], abs=SCORE_ATOL + 1e-5)
        assert a["bbox"] == pytest.approx(b["bbox"], abs=BOX_ATOL * 4)  # in file pixels
    files = [(s["image_id"], tuple(s["segmentation"]["size"])) for s in segms_o]
    assert set(files) == {(1, FIXED), (2, (64, 80))}  # the file's pixels
    decode = [
        [torch.from_numpy(mask_utils.decode(s["segmentation"])).bool()[None] for s in segms]
        for segms in (segms_t, segms_o)
    ]
    iou = torch.cat([mask_iou(a, b) for a, b in zip(*decode, strict=True)])
    assert (iou >= MASK_IOU).all(), float(iou.min())
