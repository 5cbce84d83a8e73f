"""Detectors: construction, stop-grad, parameter counts against torchvision, inference modes."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection import fcos_resnet50_fpn
from torchvision.ops import generalized_box_iou

from pss.config import BackboneConfig, load_config
from pss.errors import UserError
from pss.models import Detector
from pss.models.backbone import ModulatedDeformConv, build_body
from pss.testing.configs import small_config
from pss.testing.score_maps import toy_targets

IMAGES = (2, 3, 256, 256)


def positive_levels(model: Detector, out, targets) -> set[int]:
    """FPN levels holding at least one one-to-many positive of ``targets``."""
    priors = model.priors(out)
    gt_index = torch.stack([model.one_to_many(priors, t) for t in targets])
    return set(priors.levels[(gt_index >= 0).any(0)].tolist())


@pytest.mark.parametrize("name", ["fcos", "atss", "fcos_pss", "atss_pss"])
def test_each_detector_trains_and_answers_in_its_modes(name: str):
    model = Detector(small_config(name).model)
    out = model(torch.randn(IMAGES))
    losses = model.losses(out, toy_targets())
    expected = {"loss", "loss_cls", "loss_box", "loss_ctr"}
    if name.endswith("_pss"):
        expected |= {"loss_pss", "loss_rank"}
    assert set(losses) == expected
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    # Every trainable parameter gets a gradient, except the box scale of a level that
    # holds no positive (the box loss is the only loss that reads it).
    levels = positive_levels(model, out, toy_targets())
    assert levels and levels != set(range(len(model.head.scales)))
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("backbone.") for n in trainable)
    without = {
        n
        for n, p in trainable.items()
        if p.grad is None or not p.grad.abs().sum() > 0
    }
    assert without == {f"head.scales.{i}.scale" for i in range(5) if i not in levels}
    # ... and one SGD step moves exactly those parameters.
    before = {n: p.detach().clone() for n, p in trainable.items()}
    torch.optim.SGD(trainable.values(), lr=0.01).step()
    moved = {n for n, p in trainable.items() if not torch.equal(p, before[n])}
    assert moved == set(trainable) - without
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(IMAGES))
    for mode in ("e2e", "nms", "raw") if name.endswith("_pss") else ("nms", "raw"):
        dets = model.predict(out, [(256, 256), (200, 240)], mode)
        assert len(dets) == 2
        for det in dets:
            assert det["boxes"].shape[1] == 4 and len(det["boxes"]) <= 100
            assert (det["scores"][:-1] >= det["scores"][1:]).all()
        assert (dets[1]["boxes"][:, 2] <= 240).all() and (dets[1]["boxes"][:, 3] <= 200).all()
    if not name.endswith("_pss"):
        with pytest.raises(ValueError, match="PSS head"):
            model.predict(out, [(256, 256)] * 2, "e2e")


@pytest.mark.parametrize("name", ["fcos_pss", "atss_pss"])
def test_e2e_and_raw_equal_the_top_k_over_every_pair(name: str):
    """predict() scores only the best locations; that must equal scoring all pairs."""

    def topk_detections(scores, boxes, k, thresh):  # every pair scored: the k best
        top, idx = scores.reshape(-1).topk(k)
        keep = top > thresh
        loc, labels = (idx // scores.shape[1])[keep], (idx % scores.shape[1])[keep]
        return {"boxes": boxes[loc], "scores": top[keep], "labels": labels}

    def clip_boxes(boxes, h, w):
        return torch.minimum(boxes.clamp(min=0), torch.tensor([w, h, w, h]))

    model = Detector(small_config(name).model).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 192, 224))
        out.cls.normal_(-4, 2)  # spread scores so that many pairs compete
        boxes = model.decode(out)
        base = out.cls.sigmoid() * out.ctr.sigmoid()[..., None]
        for mode in ("e2e", "raw"):
            dets = model.predict(out, [(192, 224), (150, 200)], mode)
            for b, (h, w) in enumerate([(192, 224), (150, 200)]):
                scores = base[b] * (out.pss[b].sigmoid()[:, None] if mode == "e2e" else 1)
                ref = topk_detections(scores, clip_boxes(boxes[b], h, w), 100, 0.0)
                assert torch.allclose(dets[b]["scores"], ref["scores"])
                assert torch.equal(dets[b]["labels"], ref["labels"])
                assert torch.allclose(dets[b]["boxes"], ref["boxes"], atol=1e-4)


def test_raw_mode_keeps_duplicates_that_nms_removes():
    # Every P3 location inside [64, 192]^2 predicts that same box with class 1.
    model = Detector(small_config("fcos").model).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 256, 256))
        pri = model.priors(out)
        box = torch.tensor([64.0, 64, 192, 192])
        ltrb = torch.cat((pri.points - box[:2], box[2:] - pri.points), 1) / pri.strides[:, None]
        inside = (pri.levels == 0) & (ltrb.min(1).values > 0)
        out.reg[0] = ltrb
        out.cls.fill_(-10)
        out.cls[0, inside, 1] = 5.0
        raw = model.predict(out, [(256, 256)], "raw")[0]
        nms = model.predict(out, [(256, 256)], "nms")[0]
    assert inside.sum() > 100 and len(raw["boxes"]) == 100
    assert torch.allclose(raw["boxes"], box.expand(100, 4), atol=1e-3)
    assert len(nms["boxes"]) == 1 and nms["labels"].tolist() == [1]


def pss_loss_grads(model: Detector, detach_pss: bool) -> dict[str, torch.Tensor]:
    """Gradients of L_pss for every trainable parameter (zeros where it does not reach)."""
    torch.manual_seed(1)
    out = model(torch.randn(IMAGES))
    if detach_pss:
        out.pss = out.pss.detach()
    loss = model.losses(out, toy_targets())["loss_pss"]
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    return {n: g if g is not None else torch.zeros_like(p) for (n, p), g in zip(named, grads)}


@pytest.mark.parametrize("base", ["fcos", "atss"])
def test_stop_grad_blocks_the_pss_branch_and_nothing_else(base: str):
    for stop_grad in (True, False):
        model = Detector(small_config(f"{base}_pss", f"model.pss.stop_grad={stop_grad}").model)
        real, detached = pss_loss_grads(model, False), pss_loss_grads(model, True)
        outside = [n for n in real if not n.startswith("head.pss.")]
        same = all(torch.allclose(real[n], detached[n], atol=1e-7) for n in outside)
        # The PSS loss still reaches the classifier through the product (footnote 4).
        assert real["head.cls_logits.weight"].abs().sum() > 0
        # Stop-grad cuts the PSS head's *input*: the head itself still learns from L_pss,
        # every one of its parameters.
        inside = {n: g for n, g in real.items() if n.startswith("head.pss.")}
        assert len(inside) == len(list(model.head.pss.parameters())) > 0
        assert all(g.abs().sum() > 0 for g in inside.values()), [
            n for n, g in inside.items() if not g.abs().sum() > 0
        ]
        if stop_grad:
            assert same, "with stop-grad the PSS logits must send no gradient outside the head"
        else:
            assert not same, "without stop-grad the towers must get the PSS gradient"
            assert not torch.allclose(
                real["head.reg_tower.0.weight"], detached["head.reg_tower.0.weight"]
            )


def test_pss_on_classification_branch_without_stop_grad_reaches_cls_tower():
    cfg = small_config("fcos_pss", "model.pss.branch=classification", "model.pss.stop_grad=false")
    model = Detector(cfg.model)
    real, detached = pss_loss_grads(model, False), pss_loss_grads(model, True)
    assert not torch.allclose(real["head.cls_tower.0.weight"], detached["head.cls_tower.0.weight"])
    assert torch.allclose(real["head.reg_tower.0.weight"], detached["head.reg_tower.0.weight"])


@pytest.mark.parametrize("name", ["fcos_pss", "atss_pss"])
def test_pss_target_is_one_location_per_object_inside_omega(name: str):
    model = Detector(small_config(name).model)
    out = model(torch.randn(IMAGES))
    targets = toy_targets()
    priors = model.priors(out)
    gt_index = torch.stack([model.one_to_many(priors, t) for t in targets])
    pos_b, pos_i = torch.nonzero(gt_index >= 0, as_tuple=True)
    pos_j = gt_index[pos_b, pos_i]
    chosen = model.select_one_to_one(
        model.log_prob(out), model.decode(out), targets, pos_b, pos_i, pos_j
    )
    for b, sel in enumerate(chosen):
        assert len(sel) == len(targets[b]["labels"])
        for j, loc in enumerate(sel.tolist()):
            omega = (gt_index[b] == j).any()
            assert (loc >= 0) == bool(omega)
            if loc >= 0:
                assert gt_index[b, loc] == j
        assert len(set(sel[sel >= 0].tolist())) == int((sel >= 0).sum())


def test_pss_loss_scales_with_lambda1():
    model = Detector(small_config("fcos_pss").model)
    out = model(torch.randn(IMAGES))
    base = model.losses(out, toy_targets())
    model.cfg.loss.pss_weight = 2.0
    model.cfg.loss.rank_weight = 0.5
    double = model.losses(out, toy_targets())
    assert double["loss_pss"].item() == pytest.approx(2 * base["loss_pss"].item(), rel=1e-5)
    assert double["loss_rank"].item() == pytest.approx(2 * base["loss_rank"].item(), rel=1e-5)


def centerness_weighted_giou(model: Detector, out, targets) -> tuple[float, float]:
    """L_box from first principles, and the same without the center-ness weights.

    Weight of a positive: sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)) of its
    location in its object (FCOS); L_box = giou_weight * sum(w (1 - GIoU)) / sum(w).
    """
    priors = model.priors(out)
    boxes = model.decode(out).detach()
    weighted, plain = [], []
    for b, t in enumerate(targets):
        gt_index = model.one_to_many(priors, t)
        locs = torch.nonzero(gt_index >= 0).squeeze(1)
        gt = t["boxes"][gt_index[locs]]
        x, y = priors.points[locs, 0], priors.points[locs, 1]
        left, right, top, bottom = x - gt[:, 0], gt[:, 2] - x, y - gt[:, 1], gt[:, 3] - y
        w = torch.sqrt(
            torch.minimum(left, right) / torch.maximum(left, right)
            * torch.minimum(top, bottom) / torch.maximum(top, bottom)
        )
        giou = torch.diag(generalized_box_iou(boxes[b, locs], gt))
        weighted.append((w, w * (1 - giou)))
        plain.append(1 - giou)
    w_sum = sum(w.sum() for w, _ in weighted)
    giou_weight = model.cfg.loss.giou_weight
    loss = giou_weight * sum(wl.sum() for _, wl in weighted) / w_sum
    unweighted = giou_weight * torch.cat(plain).mean()
    return float(loss), float(unweighted)


@pytest.mark.parametrize("name", ["fcos_pss", "atss_pss"])
def test_centerness_off_drops_branch_but_keeps_box_weighting(name: str):
    model = Detector(small_config(name, "model.head.centerness=false").model)
    assert model.head.centerness is None
    assert not any("centerness" in n for n, _ in model.named_parameters())
    out = model(torch.randn(IMAGES))
    assert out.ctr is None
    out.reg = torch.rand_like(out.reg) * 4  # boxes of varied quality, so weights matter
    losses = model.losses(out, toy_targets())
    assert "loss_ctr" not in losses and torch.isfinite(losses["loss"])
    # The GIoU loss is still weighted by the center-ness *target* (no branch needed for it).
    expected, unweighted = centerness_weighted_giou(model, out, toy_targets())
    # the weighting makes a difference here, 100 times the tolerance below
    assert abs(expected - unweighted) > 1e-3 * expected
    assert losses["loss_box"].item() == pytest.approx(expected, rel=1e-5)
    # The same as with the branch on, for the same box predictions.
    with_branch = Detector(small_config(name).model)
    out_on = with_branch(torch.randn(IMAGES))
    out_on.reg = out.reg
    on = with_branch.losses(out_on, toy_targets())["loss_box"]
    assert on.item() == pytest.approx(losses["loss_box"].item(), rel=1e-6)


def count(module: torch.nn.Module, prefix: str = "") -> int:
    return sum(p.numel() for n, p in module.named_parameters() if n.startswith(prefix))


def test_fcos_r50_parameter_count_matches_torchvision_up_to_named_differences():
    tv = fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=80)
    ours = Detector(load_config([], ["model.name=fcos", "model.backbone.name=resnet50"]).model)
    tv_params = dict(tv.named_parameters())
    # 1. torchvision builds trainable BatchNorm without pretrained weights; ours is frozen
    #    (FrozenBatchNorm2d holds buffers, not parameters).
    bn = sum(p.numel() for n, p in tv_params.items() if ".bn" in n or ".downsample.1." in n)
    # 2. torchvision's tower convs carry a bias before GroupNorm (4 convs x 2 towers x 256).
    conv_bias = sum(
        p.numel()
        for n, p in tv_params.items()
        if n.startswith("head.")
        and ".conv." in n
        and n.endswith(".bias")
        and p.dim() == 1
        and int(n.split(".conv.")[1].split(".")[0]) % 3 == 0
    )
    assert conv_bias == 8 * 256
    # 3. ours has a learnable scale per FPN level.
    scales = count(ours, "head.scales.")
    assert scales == 5
    assert count(ours) == count(tv) - bn - conv_bias + scales


@pytest.mark.parametrize("num_convs", [1, 2, 3])
def test_pss_head_adds_exactly_its_own_layers(num_convs: int):
    base = Detector(load_config([], ["model.name=fcos", "model.backbone.name=resnet50"]).model)
    pss = Detector(
        load_config(
            [],
            [
                "model.name=fcos_pss",
                "model.backbone.name=resnet50",
                f"model.pss.num_convs={num_convs}",
            ],
        ).model
    )
    c = 256
    per_conv = c * c * 9 + 2 * c  # conv without bias + GroupNorm affine
    assert count(pss) - count(base) == num_convs * per_conv + (c * 9 + 1)
    assert count(pss, "head.pss.") == count(pss) - count(base)


@pytest.mark.parametrize("name", ["resnext101_32x4d", "res2net101_26w_4s"])
def test_timm_backbones_with_dcn_build_offline(name: str):
    body, channels = build_body(BackboneConfig(name=name, dcn=True))
    assert channels == [512, 1024, 2048]
    dcn = [m for m in body.modules() if isinstance(m, ModulatedDeformConv)]
    assert dcn and not any(isinstance(m, ModulatedDeformConv) for m in body.layer1.modules())
    with torch.no_grad():
        c3, c4, c5 = body(torch.randn(1, 3, 64, 64))
    assert c3.shape == (1, 512, 8, 8) and c5.shape == (1, 2048, 2, 2)


def test_dcn_starts_as_the_plain_conv_at_half_mask():
    conv = torch.nn.Conv2d(8, 8, 3, padding=1, bias=False)
    dcn = ModulatedDeformConv(conv)
    x = torch.randn(1, 8, 10, 10)
    assert torch.allclose(dcn(x), conv(x) * 0.5, atol=1e-5)


def test_frozen_stem_and_stage1_and_frozen_bn():
    body, _ = build_body(BackboneConfig(name="resnet18"))
    assert not any(p.requires_grad for p in body.conv1.parameters())
    assert not any(p.requires_grad for p in body.layer1.parameters())
    assert all(p.requires_grad for p in body.layer2.parameters())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in body.modules())


def test_weights_from_a_local_file(tmp_path):
    import torchvision

    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(reference.state_dict(), path)
    body, _ = build_body(BackboneConfig(name="resnet18", weights=str(path), norm="bn"))
    assert torch.equal(body.layer3[0].conv1.weight, reference.layer3[0].conv1.weight)


def test_bad_weights_file_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="broken.pth"):
        build_body(BackboneConfig(name="resnet18", weights=str(path)))
    with pytest.raises(UserError, match="not found"):
        build_body(BackboneConfig(name="resnet18", weights=str(tmp_path / "missing.pth")))
    wrong = tmp_path / "r50.pth"
    import torchvision

    torch.save(torchvision.models.resnet50(weights=None).state_dict(), wrong)
    with pytest.raises(UserError, match="do not fit|size mismatch"):
        build_body(BackboneConfig(name="resnet18", weights=str(wrong)))
