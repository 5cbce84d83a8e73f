"""Loss for loss: our CondInst / CondInst_PSS and mmdet's CondInst (CondInst_PSS: the
plugin head, pss.mmdet.CondInstPSSHead, on it), same weights.

As test_equivalence.py does for the box detectors (ResNet-18, 64-channel heads, weights
after a few training steps, every norm statistic and bias moved off its initial value),
on the same two images and their targets with masks (twins.MASK_TARGETS):

* the one-to-many positives are the same locations for the same objects;
* the losses agree, loss_mask (the dice loss of the positives' masks) among them, and so
  do the gradients of their sum on every parameter (mask branch and controller too);
* the one-to-one selections are the same locations;
* the detections and their masks agree in every mode.

Ours follows the conventions of the authors' CondInst (AdelaiDet), as mmdet's does:
center sampling around each mask's centroid, the masks' ``aligned_bilinear`` upsampling
and mask targets one pixel per 4 x 4 block; mmdet's model is the shipped config's, as it
is (:func:`test_the_authors_conventions_are_mmdets`). The targets (twins.MASK_TARGETS)
are ellipses and triangles with centroids off their box centres and edges across the
blocks, so that each convention shows. Each image has fewer positives than the 300 masks
trained: no random subset is drawn on either side.
"""

from __future__ import annotations

import functools

import pytest
import torch
from mmdet.models.utils import aligned_bilinear
from mmdet.structures.mask import BitmapMasks
from mmengine.structures import InstanceData
from test_equivalence import DET_TOL, GRAD_NORM_RTOL, LOSS_NAMES, LOSS_TOL
from twins import (
    IMAGE_SIZES,
    MASK_TARGETS,
    MMDET_NMS_NEUTRAL,
    OUR_NMS_NEUTRAL,
    Twins,
    assert_same_gradients,
    data_samples,
    images,
    make_twins,
    mmdet_detector,
    our_detector,
)

from pss.errors import UserError
from pss.mmdet.convert import PREDICTOR_PREFIX, copy_weights, mmdet_key
from pss.mmdet.heads import inference_mode
from pss.models.assign import fcos_assign
from pss.models.condinst import MAX_MASKS, aligned_upsample, mask_targets, paste_masks
from pss.testing.deploy import MASK_IOU, mask_iou  # per instance, as the ONNX parity asks

LOSS_NAMES = {**LOSS_NAMES, "loss_mask": "loss_mask"}


@functools.cache
def _twins(name: str) -> Twins:
    return make_twins(name, OUR_NMS_NEUTRAL, MMDET_NMS_NEUTRAL)


@pytest.fixture(params=["condinst", "condinst_pss"])
def twins(request) -> Twins:
    return _twins(request.param)


def _x() -> torch.Tensor:
    return images(targets=MASK_TARGETS)


def _losses(twins: Twins) -> tuple[dict, dict]:
    twins.ours.train(), twins.theirs.train()
    twins.ours.zero_grad(), twins.theirs.zero_grad()
    ours = twins.ours.losses(twins.ours(_x()), MASK_TARGETS)
    theirs = twins.theirs.loss(_x(), data_samples(MASK_TARGETS))
    return ours, theirs


def test_weights_copy_over_whole(twins: Twins):
    assert twins.zeroed == []
    theirs = twins.theirs.state_dict()
    for key, value in twins.ours.state_dict().items():
        assert torch.equal(theirs[mmdet_key(key, PREDICTOR_PREFIX["condinst"])], value), key
    assert any("mask_feature_head.conv_branch" in k for k in theirs)


@pytest.mark.parametrize(("ours", "theirs"), [("fcos", "condinst"), ("condinst", "fcos")])
def test_fcos_and_condinst_weights_are_refused_by_each_other(ours: str, theirs: str):
    # Their predictors have the same names: the controller tells the models apart.
    with pytest.raises(UserError, match=f"{ours.upper()} weights do not fit"):
        copy_weights(our_detector(ours), mmdet_detector(theirs))


def test_same_one_to_many_positives(twins: Twins):
    twins.ours.train(), twins.theirs.train()
    out = twins.ours(_x())
    priors = twins.ours.priors(out)
    ours = torch.stack([twins.ours.one_to_many(priors, t) for t in MASK_TARGETS])
    assert (ours >= 0).sum() > 20
    assert ((ours >= 0).sum(1) <= MAX_MASKS).all()  # every positive's mask is trained, both sides
    head = twins.theirs.bbox_head
    outs = head(twins.theirs.extract_feat(_x()))
    gts = [s.gt_instances for s in data_samples(MASK_TARGETS)]
    sizes = [m.shape[-2:] for m in outs[0]]
    points = head.prior_generator.grid_priors(sizes, device=ours.device)
    # mmdet's CondInst targets (center sampling around each mask's centroid)
    _, _, pos_inds, pos_gt_inds = head.get_targets(points, gts)
    for b in range(len(gts)):
        mine = torch.nonzero(ours[b] >= 0).squeeze(1)
        assert torch.equal(mine, pos_inds[b])
        assert torch.equal(ours[b, mine], pos_gt_inds[b])
    if twins.name.endswith("_pss"):  # the plugin head's Omega
        metas = [s.metainfo for s in data_samples(MASK_TARGETS)]
        sizes = [tuple(s) for s in sizes]
        assert torch.equal(ours, head.one_to_many(sizes, gts, metas, None, ours.device))


def test_same_losses_and_gradients(twins: Twins):
    ours, theirs = _losses(twins)
    expected = {"loss_cls", "loss_box", "loss_ctr", "loss_mask"}
    if twins.name.endswith("_pss"):
        expected |= {"loss_pss", "loss_rank"}
    assert set(ours) - {"loss"} == expected
    assert set(theirs) == {LOSS_NAMES[k] for k in expected}
    for name in sorted(expected):
        assert ours[name] > 0, name
        torch.testing.assert_close(ours[name], theirs[LOSS_NAMES[name]], **LOSS_TOL, msg=name)
    ours["loss"].backward()
    sum(theirs.values()).backward()
    prefix = PREDICTOR_PREFIX["condinst"]
    compared = assert_same_gradients(twins.ours, twins.theirs, prefix, GRAD_NORM_RTOL)
    assert len(compared) > 50
    assert any("mask_branch" in n for n in compared) and any("controller" in n for n in compared)


def test_the_authors_conventions_are_mmdets():
    """Our upsampling, mask targets and centre regions are mmdet's CondInst's own."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 7, 9, generator=gen)
    for factor in (2, 4):
        torch.testing.assert_close(aligned_upsample(x, factor), aligned_bilinear(x, factor))
    masks = MASK_TARGETS[0]["masks"]
    h, w = masks.shape[-2:]
    gt = InstanceData(bboxes=MASK_TARGETS[0]["boxes"], masks=BitmapMasks(masks.numpy(), h, w))
    order = torch.tensor([2, 0, 3, 1, 0])
    positives = InstanceData(pos_assigned_gt_inds=order)
    head = _twins("condinst").theirs.mask_head
    _, theirs, _ = head._get_targets_single(torch.zeros(5, h // 4, w // 4), gt, positives)
    ours = mask_targets(masks, (h // 4, w // 4))[order]
    assert torch.equal(ours, theirs) and 0 < ours.mean() < 1
    # Centre regions around the masks' centroids: here they pick other positives than
    # around the boxes' centres (test_same_one_to_many_positives compares with mmdet's).
    model = _twins("condinst").ours
    priors = model.priors(model(_x()))
    args = (priors.points, priors.strides, model.regress_ranges[priors.levels])
    radius = model.cfg.assign.center_sampling_radius
    by_box = [fcos_assign(*args, t["boxes"], radius) for t in MASK_TARGETS]
    assert any(
        not torch.equal(model.one_to_many(priors, t), b) for t, b in zip(MASK_TARGETS, by_box)
    )


def test_same_one_to_one_selections():
    twins = _twins("condinst_pss")
    twins.ours.train(), twins.theirs.train()
    model = twins.ours
    with torch.no_grad():
        out = model(_x())
        priors = model.priors(out)
        gt_index = torch.stack([model.one_to_many(priors, t) for t in MASK_TARGETS])
        pos_b, pos_i = torch.nonzero(gt_index >= 0, as_tuple=True)
        omega = (pos_b, pos_i, gt_index[pos_b, pos_i])
        ours = model.select_one_to_one(model.log_prob(out), model.decode(out), MASK_TARGETS, *omega)
        samples = data_samples(MASK_TARGETS)
        head = twins.theirs.bbox_head
        outs = head(twins.theirs.extract_feat(_x()))
        gts, metas = [s.gt_instances for s in samples], [s.metainfo for s in samples]
        cls, box, ctr, _, pss = outs
        log_p, theirs, _ = head.pss_targets(cls, box, ctr, pss, gts, metas)
    torch.testing.assert_close(log_p, model.log_prob(out), **LOSS_TOL)
    for mine, other in zip(ours, theirs):
        assert (mine >= 0).all()
        assert torch.equal(mine, other)


@pytest.mark.parametrize(
    ("name", "mode"),
    [
        ("condinst_pss", "e2e"),
        ("condinst_pss", "raw"),
        ("condinst_pss", "nms"),
        ("condinst", "nms"),
    ],
)
def test_same_detections_and_masks(name: str, mode: str):
    twins = _twins(name)
    twins.ours.eval(), twins.theirs.eval()
    with torch.no_grad(), inference_mode(twins.theirs, mode):
        ours = twins.ours.predict(twins.ours(_x()), IMAGE_SIZES, mode)
        theirs = twins.theirs.predict(_x(), data_samples(MASK_TARGETS), False)
    for mine, sample, size in zip(ours, theirs, IMAGE_SIZES):
        other = sample.pred_instances
        assert len(mine["scores"]) > 10
        assert torch.equal(mine["labels"], other.labels)
        torch.testing.assert_close(mine["scores"], other.scores, **DET_TOL)
        torch.testing.assert_close(mine["boxes"], other.bboxes, **DET_TOL)
        masks = paste_masks(mine["masks"], size)
        assert masks.shape == other.masks.shape
        assert masks.any()
        assert (mask_iou(masks, other.masks) >= MASK_IOU).all()
