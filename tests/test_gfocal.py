"""GFocalV2 and GFocalV2_PSS (pss.models.gfocal): the losses, the integral box coder and
the DGQP against values computed by hand or by torch's own losses, the model in every
mode and exported to ONNX, and two-step training from a GFocalV2 checkpoint."""

from __future__ import annotations

import math

import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from pss.config import ModelConfig, load_config
from pss.deploy.inference import load_model
from pss.engine.checkpoint import load_checkpoint
from pss.engine.train import RunInfo, train
from pss.errors import UserError
from pss.export import main as export_main
from pss.models import Detector
from pss.models.assign import Positives
from pss.models.boxes import make_priors
from pss.models.decode import decode_boxes
from pss.models.gfocal import (
    DGQP,
    REG_MAX,
    dgqp_statistics,
    distribution_focal_loss,
    gfocal_losses,
    integral,
    quality_focal_loss,
)
from pss.models.heads import HeadOutputs
from pss.testing.configs import tiny_train_overrides
from pss.testing.deploy import assert_same_detections, write_checkpoint

BINS = REG_MAX + 1
LOG0 = -1e4  # a logit whose probability is 0 to float precision


def side_logits(*probs: list[float]) -> torch.Tensor:
    """The logits [1, 4 BINS] of four sides' distributions (each padded with zeros)."""
    rows = [torch.tensor(p + [0.0] * (BINS - len(p))) for p in probs]
    return torch.cat([torch.where(r > 0, r.log(), torch.tensor(LOG0)) for r in rows])[None]


# ----------------------------------------------------------------------- box coder


def test_integral_is_each_sides_mean_distance():
    reg = side_logits([0, 0, 0, 1.0], [0, 0, 0.5, 0.5], [0.25, 0, 0, 0, 0.75], [])
    reg[0, 3 * BINS :] = 0.0  # the fourth side uniform over 0..16: mean 8
    assert integral(reg)[0].tolist() == pytest.approx([3.0, 2.5, 3.0, 8.0], abs=1e-5)


def test_decoded_box_is_the_point_minus_left_top_plus_right_bottom_in_strides():
    cfg = ModelConfig(name="gfocalv2")
    reg = side_logits([0, 1.0], [0, 0, 1.0], [0, 0, 0, 1.0], [1.0])  # 1, 2, 3, 0 strides
    box = decode_boxes(cfg, reg, torch.tensor([[100.0, 60.0]]), torch.tensor([16.0]))
    assert box[0].tolist() == pytest.approx([84.0, 28.0, 148.0, 60.0], abs=1e-3)


# ---------------------------------------------------------------------------- DGQP


def test_dgqp_statistics_are_top4_and_their_mean_side_by_side():
    reg = side_logits(
        [0.05, 0.5, 0.1, 0.2, 0.1, 0.05], [1.0], [0.25, 0.25, 0.25, 0.25], [0.4, 0.6]
    )[..., None, None]  # [1, 68, 1, 1]
    stats = dgqp_statistics(reg).flatten().tolist()
    expected = [
        0.5, 0.2, 0.1, 0.1, 0.225,
        1.0, 0.0, 0.0, 0.0, 0.25,
        0.25, 0.25, 0.25, 0.25, 0.25,
        0.6, 0.4, 0.0, 0.0, 0.25,
    ]  # fmt: skip
    assert stats == pytest.approx(expected, abs=1e-5)


def test_dgqp_is_a_two_layer_mlp_on_the_statistics():
    dgqp = DGQP()
    with torch.no_grad():
        dgqp.hidden.weight.zero_()
        dgqp.hidden.bias.zero_()
        dgqp.hidden.weight[0, 4] = 1.0  # side 0's mean
        dgqp.hidden.weight[1, 0] = -1.0  # minus side 0's top probability: ReLU -> 0
        dgqp.out.weight.zero_()
        dgqp.out.weight[0, :2, 0, 0] = torch.tensor([2.0, 5.0])
        dgqp.out.bias.fill_(-0.1)
    reg = side_logits([0.5, 0.2, 0.1, 0.1, 0.05, 0.05], [1.0], [1.0], [1.0])[..., None, None]
    assert dgqp(reg).item() == pytest.approx(2 * 0.225 - 0.1, abs=1e-5)


# -------------------------------------------------------------------------- losses


def test_quality_focal_loss_by_hand():
    p = torch.tensor([0.6, 0.1, 0.3])
    y = torch.tensor([0.8, 0.0, 0.3])  # a positive of IoU 0.8, a negative, a perfect one
    loss = quality_focal_loss(p.log(), y, beta=2.0)
    pos = -(0.8 * math.log(0.6) + 0.2 * math.log(0.4)) * 0.2**2
    neg = -math.log(0.9) * 0.1**2
    assert loss.item() == pytest.approx(pos + neg, rel=1e-5)


def test_quality_focal_loss_is_bce_times_distance_to_the_target():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 3, generator=gen) * 3
    log_q = torch.randn(50, generator=gen)
    y = torch.rand(50, 3, generator=gen) * (torch.rand(50, 3, generator=gen) < 0.2)
    p = logits.sigmoid() * log_q.sigmoid()[:, None]
    reference = (F.binary_cross_entropy(p, y, reduction="none") * (p - y).abs() ** 2).sum()
    log_p = F.logsigmoid(logits) + F.logsigmoid(log_q)[:, None]
    assert quality_focal_loss(log_p, y, 2.0).item() == pytest.approx(reference.item(), rel=1e-4)


def test_distribution_focal_loss_by_hand():
    reg = torch.zeros(2, 4 * BINS)
    reg[0, 2] = math.log(2.0)  # side 0: bin 2 twice as likely as each other bin (sum 18)
    target = torch.tensor([[2.25, 0.0, 7.5, 16.0], [15.0, 3.0, 3.999, 40.0]])
    dfl = distribution_focal_loss(reg, target)
    uniform = math.log(BINS)  # -log S of every bin of a uniform side
    side0 = -(0.75 * math.log(2 / 18) + 0.25 * math.log(1 / 18))
    # Every other side is uniform: the loss is log 17 whatever the target (16 and 40 are
    # clamped to 15.9, between bins 15 and 16).
    expected = [side0, uniform, uniform, uniform] + [uniform] * 4
    assert dfl.flatten().tolist() == pytest.approx(expected, rel=1e-5)


def test_distribution_focal_loss_is_cross_entropy_of_the_two_nearest_bins():
    gen = torch.Generator().manual_seed(1)
    reg = torch.randn(6, 4 * BINS, generator=gen)
    target = torch.rand(6, 4, generator=gen) * 15.9
    left = target.floor().long()
    logits = reg.reshape(-1, BINS)
    ce_l = F.cross_entropy(logits, left.flatten(), reduction="none").reshape(6, 4)
    ce_r = F.cross_entropy(logits, left.flatten() + 1, reduction="none").reshape(6, 4)
    reference = ce_l * (left + 1 - target) + ce_r * (target - left)
    assert torch.allclose(distribution_focal_loss(reg, target), reference, atol=1e-5)


def test_gfocal_losses_weights_and_normalisers():
    """One image, one positive: loss_cls = QFL / 1, loss_box = 2 GIoU (its weight cancels
    against the normaliser, clamped to 1: w / max(w, 1) = w), loss_dfl = 0.25 mean DFL x w."""
    priors = make_priors([(2, 2)], (16,), "cpu")  # 4 locations, points (8|24, 8|24)
    cls = torch.full((1, 4, 2), -3.0)
    cls[0, 1, 1] = 1.0
    ctr = torch.zeros(1, 4)
    reg = torch.zeros(1, 4, 4 * BINS)  # uniform: 8 strides each side
    out = HeadOutputs(cls=cls, reg=reg, ctr=ctr, pss=None, sizes=[(2, 2)])
    pred = torch.tensor([[[-120.0, -120.0, 136.0, 136.0]] * 4])  # what uniform decodes to
    target = torch.tensor([[0.0, 0.0, 40.0, 32.0]])
    positives = Positives(torch.tensor([0]), torch.tensor([1]), target, torch.tensor([1]))
    result = gfocal_losses(out, pred, priors, positives, ModelConfig().loss)
    score = cls.sigmoid() * 0.5
    iou = (40 * 32) / (256 * 256)
    y = torch.zeros(1, 4, 2)
    y[0, 1, 1] = iou
    qfl = (F.binary_cross_entropy(score, y, reduction="none") * (score - y).abs() ** 2).sum()
    assert result["loss_cls"].item() == pytest.approx(qfl.item(), rel=1e-4)
    w = torch.sigmoid(torch.tensor(1.0)).item() * 0.5
    giou = 1 - iou  # the target lies inside the prediction: GIoU = IoU
    assert result["loss_box"].item() == pytest.approx(2.0 * giou * w, rel=1e-4)
    # location 1 is (24, 8): distances 24, 8, 16, 24 = 1.5, 0.5, 1, 1.5 strides
    dfl = distribution_focal_loss(reg[0, 1:2], torch.tensor([[1.5, 0.5, 1.0, 1.5]]))
    assert result["loss_dfl"].item() == pytest.approx(0.25 * dfl.mean().item() * w, rel=1e-4)
    assert dfl.mean().item() == pytest.approx(math.log(BINS), rel=1e-5)


# --------------------------------------------------------------------------- model


@pytest.mark.parametrize("name", ["gfocalv2", "gfocalv2_pss"])
def test_model_forward_losses_and_every_mode(name):
    cfg = ModelConfig(
        name=name,
        num_classes=3,
        backbone={"name": "resnet18_half", "norm": "bn", "frozen_stages": -1},
        head={"channels": 16, "num_convs": 1},
    )
    model = Detector(cfg)
    out = model(torch.randn(2, 3, 96, 128))
    n = sum(h * w for h, w in out.sizes)
    assert out.reg.shape == (2, n, 4 * BINS) and out.ctr.shape == (2, n)
    assert (out.pss is not None) == cfg.has_pss
    # the ctr logits are the DGQP's on the box distributions
    feats = model.backbone(torch.zeros(1, 3, 64, 64))
    level0 = model.head.scales[0](model.head.bbox_pred(model.head.reg_tower(feats[0])))
    q = model.head.quality(level0).flatten()
    assert torch.allclose(model.head(feats).ctr[0, : q.numel()], q, atol=1e-6)

    targets = [
        {"boxes": torch.tensor([[10.0, 20.0, 60.0, 90.0]]), "labels": torch.tensor([2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    losses = model.losses(out, targets)
    expected = {"loss_cls", "loss_box", "loss_dfl", "loss"}
    expected |= {"loss_pss", "loss_rank"} if cfg.has_pss else set()
    assert set(losses) == expected
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    assert model.head.quality.hidden.weight.grad.abs().sum() > 0  # QFL trains the DGQP

    modes = ["nms", "raw"] + (["e2e"] if cfg.has_pss else [])
    for mode in modes:
        dets = model.predict(out, [(96, 128), (80, 100)], mode)
        assert len(dets) == 2 and dets[1]["boxes"].shape[1] == 4
        assert (dets[1]["boxes"][:, 2] <= 100).all()
    # raw scores are the joint score sigma(s) sigma(q); e2e multiplies sigma(pss) in
    raw = model.predict(out, [(96, 128)] * 2, "raw")[0]["scores"][0]
    joint = (out.cls.sigmoid() * out.ctr.sigmoid()[..., None])[0].max()
    assert raw.item() == pytest.approx(joint.item(), rel=1e-5)
    if cfg.has_pss:
        e2e = model.predict(out, [(96, 128)] * 2, "e2e")[0]["scores"][0]
        p = (out.cls.sigmoid() * (out.ctr.sigmoid() * out.pss.sigmoid())[..., None])[0].max()
        assert e2e.item() == pytest.approx(p.item(), rel=1e-5)


def test_centerness_off_is_refused_for_gfocal():
    with pytest.raises(UserError, match="model.head.centerness.*DGQP"):
        load_config([], ["model.name=gfocalv2_pss", "model.head.centerness=false"])


def test_two_step_from_a_gfocalv2_checkpoint_trains_only_the_pss_head(
    shapes_root, tmp_path, tracking
):
    base = tiny_train_overrides(shapes_root, tmp_path / "s1", "gfocalv2")
    stage1 = load_config([], [*base, "train.epochs=1"])
    metrics1 = train(stage1, run=RunInfo(experiment="gfocal-two-step"))
    assert {"mAP_nms", "mAP_raw"} <= set(metrics1) and "mAP_e2e" not in metrics1
    ckpt = stage1.run_dir / "last.pth"
    two = tiny_train_overrides(shapes_root, tmp_path / "s2", "gfocalv2_pss")
    stage2 = load_config(
        [], [*two, "train.epochs=1", f"train.init_from={ckpt}", "train.trainable=pss"]
    )
    metrics2 = train(stage2, run=RunInfo(experiment="gfocal-two-step"))
    assert {"mAP_e2e", "mAP_nms", "mAP_raw"} <= set(metrics2)
    # frozen: the GFocalV2 model's NMS result does not move
    assert metrics2["mAP_nms"] == pytest.approx(metrics1["mAP_nms"], abs=1e-6)
    before = load_checkpoint(ckpt)["model"]
    after = load_checkpoint(stage2.run_dir / "last.pth")["model"]
    assert not {k for k in before if not torch.equal(before[k], after[k])}
    new = {k for k in after if k not in before}
    assert new and all(k.startswith("head.pss.") for k in new)
    pss_params = [n for n, _ in Detector(stage2.model).named_parameters() if n in new]
    state = load_checkpoint(stage2.run_dir / "last.pth")["optimizer"]["state"]
    assert pss_params and len(state) == len(pss_params)
    assert all(s["momentum_buffer"].abs().sum() > 0 for s in state.values())


def test_end_to_end_gfocalv2_pss_trains_everything(shapes_root, tmp_path, tracking):
    cfg = load_config(
        [], [*tiny_train_overrides(shapes_root, tmp_path / "e2e", "gfocalv2_pss"), "train.epochs=1"]
    )
    torch.manual_seed(cfg.train.seed)
    init = Detector(cfg.model).state_dict()
    metrics = train(cfg, run=RunInfo(experiment="gfocal-e2e"))
    assert {"mAP_e2e", "mAP_nms", "mAP_raw"} <= set(metrics)
    after = load_checkpoint(cfg.run_dir / "last.pth")["model"]
    for part in ("backbone.", "head.cls_logits.", "head.quality.", "head.bbox_pred.", "head.pss."):
        assert any(
            k.startswith(part) and not torch.equal(init[k], after[k]) for k in after
        ), part


@pytest.mark.parametrize("mode", ["e2e", "nms"])
def test_onnx_export_gives_pytorchs_detections(tmp_path, mode):
    ckpt = write_checkpoint(tmp_path / "gfl.pth", "gfocalv2_pss")
    out = tmp_path / f"gfl-{mode}.onnx"
    assert export_main([str(ckpt), "--out", str(out), "--mode", mode, "--size", "128x160"]) == 0
    detector = load_model(ckpt).detector
    images = torch.randn(1, 3, 128, 160, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = detector.predict(detector(images), [(128, 160)], mode)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = assert_same_detections(reference, *session.run(None, {"images": images.numpy()}))
    assert got["detections"] > 0
