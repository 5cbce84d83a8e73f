"""pss.models.decode, the one decoder, on tensors alone (Detector.predict, the deployed graph
and the ONNX export are checked against each other in test_model, test_predict, test_export)."""

from __future__ import annotations

import pytest
import torch

from pss.config import InferenceConfig
from pss.errors import UserError
from pss.models.backbone import Backbone
from pss.models.boxes import make_priors
from pss.models.decode import (
    EMPTY_LABEL,
    ModeError,
    check_mode,
    coco_rows,
    modes_for,
    nms_pairs,
    pair_scores,
    score_factor,
    top_pairs,
    unpad,
)
from pss.testing.score_maps import realistic_outputs


def test_e2e_needs_a_pss_head_and_a_bad_mode_is_a_user_error():
    assert modes_for(True) == ("e2e", "nms", "raw")
    assert modes_for(False) == ("nms", "raw")
    assert modes_for(False, ("raw", "nms", "e2e")) == ("raw", "nms")  # order kept
    check_mode("e2e", True, "fcos_pss")
    with pytest.raises(ModeError, match="mode 'e2e' needs a PSS head; 'fcos' has none") as err:
        check_mode("e2e", False, "fcos", "run/last.pth")
    assert isinstance(err.value, UserError) and isinstance(err.value, ValueError)
    assert str(err.value).startswith("run/last.pth: ")
    with pytest.raises(ModeError, match="unknown inference mode 'e2f'"):
        check_mode("e2f", True, "fcos_pss")


def test_score_factor_is_centerness_times_pss_in_e2e_only():
    cls, ctr, pss = torch.randn(2, 5, 3), torch.randn(2, 5), torch.randn(2, 5)
    assert torch.equal(score_factor("e2e", cls, ctr, pss), ctr.sigmoid() * pss.sigmoid())
    for mode in ("nms", "raw"):
        assert torch.equal(score_factor(mode, cls, ctr, pss), ctr.sigmoid())
    assert torch.equal(score_factor("raw", cls, None, None), torch.ones(2, 5))
    scores = pair_scores(cls, score_factor("e2e", cls, ctr, pss))
    assert torch.allclose(scores, cls.sigmoid() * (ctr.sigmoid() * pss.sigmoid())[..., None])


def test_top_pairs_pads_to_k_slots_and_unpad_drops_them():
    gen = torch.Generator().manual_seed(0)
    cls = torch.randn(2, 3, 2, generator=gen) * 3  # 6 pairs per image, k = 10
    factor = torch.rand(2, 3, generator=gen)
    boxes = torch.rand(2, 3, 4, generator=gen) * 50

    def boxes_at(locs):
        return boxes.gather(1, locs[..., None].expand(-1, -1, 4))

    thresh = 0.2
    padded = top_pairs(cls, factor, boxes_at, 10, thresh)
    assert [tuple(t.shape) for t in padded] == [(2, 10, 4), (2, 10), (2, 10)]
    scores = pair_scores(cls, factor)
    for b, det in enumerate(unpad(*padded)):
        top, idx = scores[b].reshape(-1).sort(descending=True)
        n = int((top > thresh).sum())
        assert 0 < n < 6
        assert torch.equal(det["scores"], top[:n]) and torch.equal(det["labels"], idx[:n] % 2)
        assert torch.equal(det["boxes"], boxes[b, idx[:n] // 2])
        assert (padded[2][b, n:] == EMPTY_LABEL).all() and (padded[1][b, n:] == 0).all()
        assert (padded[0][b, n:] == 0).all()


@pytest.mark.parametrize("pre_nms_topk", [1000, 40])  # 40: fewer than pass the threshold
def test_eager_and_exportable_nms_keep_the_same_detections(pre_nms_topk):
    hw = (256, 320)
    sizes = [(-(-hw[0] // s), -(-hw[1] // s)) for s in Backbone.strides]
    out, stats = realistic_outputs(sizes, hw, 2, 80, 0, objects=40, clutter=120)
    assert stats["nms_candidates_per_level"][0] > pre_nms_topk or pre_nms_topk == 1000
    priors = make_priors(sizes, Backbone.strides, "cpu")
    boxes = torch.rand(2, len(priors.points), 2) * 100
    boxes = torch.cat((boxes, boxes + torch.rand(2, len(priors.points), 2) * 60), dim=2)
    factor = score_factor("nms", out.cls, out.ctr, out.pss)
    ic = InferenceConfig(pre_nms_topk=pre_nms_topk)
    eager = nms_pairs(out.cls, factor, boxes, priors.counts, ic)
    exported = nms_pairs(out.cls, factor, boxes, priors.counts, ic, exportable=True)
    for a, b in zip(eager, exported):
        assert torch.equal(a, b)
    kept = eager[2] != EMPTY_LABEL
    assert kept.sum(1).min() > 20 and (eager[1][kept] > ic.score_thresh).all()


def test_coco_rows_are_xywh_in_file_pixels_with_category_ids():
    det = {
        "boxes": torch.tensor([[10.0, 20.0, 30.5, 60.25], [0.0, 0.0, 4.0, 4.0]]),
        "scores": torch.tensor([0.912345678, 0.25]),
        "labels": torch.tensor([1, 0]),
    }
    rows = coco_rows(det, 7, [3, 42], scale=0.5)
    assert rows == [
        {"image_id": 7, "category_id": 42, "bbox": [20.0, 40.0, 41.0, 80.5], "score": 0.91235},
        {"image_id": 7, "category_id": 3, "bbox": [0.0, 0.0, 8.0, 8.0], "score": 0.25},
    ]
    assert coco_rows(det, 7, [3, 42], score_thresh=0.25) == [
        {"image_id": 7, "category_id": 42, "bbox": [10.0, 20.0, 20.5, 40.25], "score": 0.91235}
    ]
