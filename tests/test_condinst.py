"""CondInst and CondInst_PSS (pss.models.condinst): the dice loss against values computed
by hand, the dynamic mask head's parameter layout and relative coordinates, mask targets
and pasting, the model's shapes in every mode, mask AP from COCOeval on known masks, and
training on the shapes set through pss.engine.train.train."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pss.config import load_config
from pss.contract import MODES, known_metrics, metric_name, segm_name
from pss.data.masks import decode_segmentation, encode_masks
from pss.engine.evaluate import coco_metrics
from pss.engine.train import RunInfo, train
from pss.models import Detector
from pss.models.assign import fcos_assign
from pss.models.condinst import (
    MASK_CHANNELS,
    MASK_OUT_STRIDE,
    MAX_MASKS,
    NUM_PARAMS,
    SIZE_OF_INTEREST,
    aligned_upsample,
    dice_loss,
    mask_centroids,
    mask_logits,
    mask_targets,
    paste_masks,
    segm_rows,
    split_params,
    trained_masks,
)
from pss.models.decode import ModeError, decode_boxes, detect
from pss.testing.configs import small_config, tiny_train_overrides

# ------------------------------------------------------------------------------ loss


def test_dice_loss_by_hand():
    # p = sigmoid(logit): 0.5 (logit 0), ~1 (logit 20), ~0 (logit -20)
    logits = torch.tensor([[[0.0, 20.0], [-20.0, 0.0]]])
    target = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    # sum(p t) = 0.5 + 1 = 1.5; sum(p^2) = 0.25 + 1 + 0 + 0.25 = 1.5; sum(t^2) = 2
    expected = 1 - 2 * 1.5 / (1.5 + 2 + 2 * 5e-6)
    assert dice_loss(logits, target).tolist() == pytest.approx([expected], abs=1e-6)


def test_dice_loss_is_zero_for_a_perfect_mask_and_one_for_a_disjoint_one():
    target = torch.zeros(2, 4, 4)
    target[:, 1:3, 1:3] = 1
    perfect = torch.where(target > 0, 30.0, -30.0)
    disjoint = torch.where(target > 0, -30.0, 30.0)
    loss = dice_loss(torch.stack((perfect[0], disjoint[1])), target)
    assert loss.tolist() == pytest.approx([0.0, 1.0], abs=1e-5)


def test_dice_loss_gradient_matches_autograd_of_the_formula():
    torch.manual_seed(1)
    logits = torch.randn(3, 5, 5, requires_grad=True)
    target = (torch.rand(3, 5, 5) > 0.5).float()
    dice_loss(logits, target).sum().backward()
    ours = logits.grad.clone()
    x = logits.detach().double().requires_grad_()
    p = 1 / (1 + torch.exp(-x))
    t = target.double()
    ref = 1 - 2 * (p * t).sum((1, 2)) / ((p * p).sum((1, 2)) + (t * t).sum((1, 2)) + 1e-5)
    ref.sum().backward()
    assert torch.allclose(ours.double(), x.grad, atol=1e-6)


# ------------------------------------------------------------------- dynamic head


def test_the_dynamic_head_has_169_parameters_in_condinsts_layout():
    assert NUM_PARAMS == 169
    params = torch.arange(NUM_PARAMS, dtype=torch.float32)[None]
    (w1, b1), (w2, b2), (w3, b3) = split_params(params)
    assert [w1.shape, w2.shape, w3.shape] == [(1, 8, 10), (1, 8, 8), (1, 1, 8)]
    assert [b1.shape, b2.shape, b3.shape] == [(1, 8), (1, 8), (1, 1)]
    assert w1[0, 0, 0] == 0 and w2[0, 0, 0] == 80 and w3[0, 0, 0] == 144  # weights first
    assert b1[0, 0] == 152 and b2[0, 0] == 160 and b3[0, 0] == 168  # then the biases


def _params(first_layer: dict[int, float], bias3: float = 0.0) -> torch.Tensor:
    """Dynamic parameters passing input channel c (weight w) through: layer 1's channel 0
    = sum w_c x_c, layers 2 and 3 copy channel 0 (ReLU between)."""
    params = torch.zeros(1, NUM_PARAMS)
    for channel, weight in first_layer.items():
        params[0, channel] = weight  # w1[0, channel]
    params[0, 80] = 1.0  # w2[0, 0]
    params[0, 144] = 1.0  # w3[0, 0]
    params[0, 168] = bias3
    return params


def test_relative_coordinates_are_in_units_of_the_levels_size_of_interest():
    feats = torch.zeros(1, MASK_CHANNELS, 4, 6)  # a 32 x 48 input at stride 8
    point, stride = torch.tensor([[44.0, 4.0]]), torch.tensor([16.0])  # a P4 location
    # layer 1 output = x-coordinate channel (0): (point_x - pixel_x) / (16 * 8)
    logits = mask_logits(feats, _params({0: 1.0}), torch.tensor([0]), point, stride)
    assert logits.shape == (1, 8, 12)  # stride 4
    # at stride 8 pixel (row 0, col 0), centre x = 4: (44 - 4) / 128 > 0; relu keeps it.
    coarse = mask_logits(feats, _params({0: 1.0}), torch.tensor([0]), point, stride)
    # The stride-4 map's pixel j is the stride-8 map at (j - 1) / 2, i.e. at input x = 4 j
    # (stride-8 pixel i is centred at 8 i + 4): bilinear between those is linear, so
    # inside the map the value is (44 - 4 j) / 128 exactly, and held beyond its edges.
    xs = torch.arange(12) * MASK_OUT_STRIDE + 0.0
    expected = ((44 - xs.clamp(4, 44)) / (16 * SIZE_OF_INTEREST)).clamp(min=0)
    assert torch.allclose(coarse[0, 1], expected, atol=1e-6)


def test_aligned_upsampling_puts_map_pixel_i_on_output_pixel_factor_i_plus_half_factor():
    x = torch.tensor([[0.0, 4.0, 8.0]])  # [1, 3]
    up = aligned_upsample(x, 4)  # pixel i on 4 i + 2: 0 at 2, 4 at 6, 8 at 10
    assert up.shape == (4, 12)
    assert torch.allclose(up[0], torch.tensor([0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 8.0]))
    # AdelaiDet's formulation (pad, interpolate corner-aligned to 4 n + 1, shift by 2).
    ref = F.pad(x[None, None], (0, 1, 0, 1), mode="replicate")
    ref = F.interpolate(ref, size=(5, 13), mode="bilinear", align_corners=True)
    ref = F.pad(ref, (2, 0, 2, 0), mode="replicate")[0, 0, :4, :12]
    assert torch.allclose(up, ref)


def test_mask_features_reach_the_mask_through_the_dynamic_convs():
    feats = torch.zeros(2, MASK_CHANNELS, 2, 2)
    feats[1, 3] = 2.0  # image 1, mask channel 3 (input channel 2 + 3 = 5)
    params = _params({5: 1.5}, bias3=-1.0).expand(2, -1)
    logits = mask_logits(
        feats, params, torch.tensor([0, 1]), torch.zeros(2, 2), torch.full((2,), 8.0)
    )
    assert torch.allclose(logits[0], torch.full((4, 4), -1.0))  # image 0: channel empty
    assert torch.allclose(logits[1], torch.full((4, 4), 2.0))  # 1.5 x 2 - 1


def test_mask_targets_take_each_blocks_pixel_at_two_two():
    masks = torch.zeros(1, 10, 14, dtype=torch.uint8)
    masks[0, 0:4, 0:4] = 1  # one whole block: its pixel (2, 2) is in
    masks[0, 4:6, 4:8] = 1  # half of block (1, 1), without its pixel (6, 6)
    masks[0, 9, 13] = 1  # not a sampled pixel
    masks[0, 6, 10] = 1  # block (1, 2)'s sampled pixel alone
    t = mask_targets(masks, (4, 4))  # padded to 16 x 16
    assert t.shape == (1, 4, 4)
    assert t[0, 0, 0] == 1.0 and t[0, 1, 2] == 1.0 and t.sum() == 2.0


def test_at_most_max_masks_of_each_image_are_trained_and_all_of_a_quiet_one():
    img = torch.cat([torch.zeros(MAX_MASKS + 50), torch.ones(40), torch.full((MAX_MASKS,), 2)])
    keep = trained_masks(img.long())
    per_image = torch.bincount(img.long()[keep], minlength=4)
    assert per_image.tolist() == [MAX_MASKS, 40, MAX_MASKS, 0]  # a batch cap would drop some
    torch.manual_seed(0)
    again = trained_masks(img.long())
    torch.manual_seed(1)
    assert not torch.equal(again, trained_masks(img.long()))  # a random subset


def test_mask_centroids_are_in_pixel_indices():
    masks = torch.zeros(2, 6, 8, dtype=torch.uint8)
    masks[0, 1:3, 2:6] = 1  # columns 2..5, rows 1..2
    masks[0, 5, 7] = 1  # one more pixel pulls it right and down
    assert torch.allclose(
        mask_centroids(masks), torch.tensor([[(3.5 * 8 + 7) / 9, (1.5 * 8 + 5) / 9], [0, 0]])
    )


def test_condinst_centres_fcos_regions_on_the_masks_centroid_not_the_boxs_centre():
    model = Detector(small_config("condinst").model)
    priors = model.priors(model(torch.zeros(1, 3, 128, 128)))
    masks = torch.zeros(1, 128, 128, dtype=torch.uint8)
    masks[0, 8:120, 8:24] = 1  # an L: a bar down the left side of its box
    masks[0, 104:120, 8:120] = 1  # and a foot along its bottom
    target = {"boxes": torch.tensor([[8.0, 8, 120, 120]]), "labels": torch.tensor([0])}
    gt_index = model.one_to_many(priors, {**target, "masks": masks})
    args = (priors.points, priors.strides, model.regress_ranges[priors.levels], target["boxes"])
    radius = model.cfg.assign.center_sampling_radius
    assert torch.equal(gt_index, fcos_assign(*args, radius, mask_centroids(masks)))
    assert not torch.equal(gt_index, fcos_assign(*args, radius))
    assert (gt_index >= 0).sum() > 0


def test_paste_masks_goes_back_to_the_images_pixels():
    probs = torch.zeros(1, 4, 6)
    # map pixels on input rows 6, 10 and columns 10, 14 (0.9: no pixel half-way between
    # two map pixels lands on 0.5 exactly, a tie that float rounding decides)
    probs[0, 1:3, 2:4] = 0.9
    pasted = paste_masks(probs, (14, 22))
    assert pasted.shape == (1, 14, 22)
    ys, xs = torch.nonzero(pasted[0], as_tuple=True)
    # above 0.5 from 5/9 of the way up to 4/9 of the way down: rows 5..11, columns 9..15
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (5, 11, 9, 15)
    # The authors' way in two steps: x4 upsampling, crop, bilinear resize to the file.
    up = aligned_upsample(probs, MASK_OUT_STRIDE)[None, :, :14, :22]
    assert torch.equal(pasted, up[0] > 0.5)
    at_file = paste_masks(probs, (14, 22), (28, 44))  # the file is twice the input
    two_steps = F.interpolate(up, size=(28, 44), mode="bilinear")[0] > 0.5
    assert at_file.shape == two_steps.shape == (1, 28, 44)
    assert (at_file ^ two_steps).sum() <= 2 and two_steps.sum() > 100
    ys, xs = torch.nonzero(at_file[0], as_tuple=True)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (9, 24, 17, 32)


# ------------------------------------------------------------------------- model


@pytest.mark.parametrize("name", ["condinst", "condinst_pss"])
def test_model_shapes_losses_and_every_mode(name):
    model = Detector(small_config(name).model)
    images = torch.randn(2, 3, 64, 96)
    out = model(images)
    n = 8 * 12 + 4 * 6 + 2 * 3 + 1 * 2 + 1 * 1
    assert out.params.shape == (2, n, NUM_PARAMS)
    assert out.mask_feats.shape == (2, MASK_CHANNELS, 8, 12)
    masks = torch.zeros(1, 60, 90, dtype=torch.uint8)
    masks[0, 10:40, 20:70] = 1
    targets = [
        {"boxes": torch.tensor([[20.0, 10, 70, 40]]), "labels": torch.tensor([1]), "masks": masks},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long),
         "masks": torch.zeros(0, 64, 96, dtype=torch.uint8)},
    ]
    losses = model.losses(out, targets)
    assert "loss_mask" in losses and 0 < losses["loss_mask"] <= 1
    assert ("loss_pss" in losses) == name.endswith("_pss")
    losses["loss"].backward()
    assert model.head.controller.weight.grad.abs().sum() > 0
    assert model.head.mask_branch.out.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        out = model(images)
        for mode in MODES:
            if mode == "e2e" and name == "condinst":
                with pytest.raises(ModeError):
                    model.predict(out, [(60, 90), (64, 96)], mode)
                continue
            for det in model.predict(out, [(60, 90), (64, 96)], mode):
                k = len(det["scores"])
                assert det["masks"].shape == (k, 16, 24)  # a quarter of the padded input
                assert ((det["masks"] >= 0) & (det["masks"] <= 1)).all()


@pytest.mark.parametrize("mode", ["e2e", "nms", "raw"])
def test_the_decoder_gives_each_detections_location(mode):
    cfg = small_config("condinst_pss", "model.inference.score_thresh=0.0")
    model = Detector(cfg.model).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    priors = model.priors(out)
    boxes, scores, labels, locs = detect(
        model.cfg, out, priors, mode, [(64, 64)], locations=True
    )
    assert locs.shape == scores.shape and locs.dtype == torch.long
    decoded = decode_boxes(model.cfg, out.reg[0, locs[0]], priors.points[locs[0]],
                           priors.strides[locs[0]]).clamp(0, 64)
    valid = labels[0] >= 0
    assert valid.any() and torch.allclose(decoded[valid], boxes[0][valid], atol=1e-4)
    plain = detect(model.cfg, out, priors, mode, [(64, 64)])
    assert all(torch.equal(a, b) for a, b in zip(plain, (boxes, scores, labels)))


# -------------------------------------------------------------------- evaluation


def _coco_with_masks(tmp_path):
    from pss.data import load_coco

    masks = np.zeros((3, 40, 50), dtype=bool)
    masks[0, 5:20, 5:30] = True
    masks[1, 22:38, 10:25] = True
    yy, xx = np.mgrid[0:40, 0:50]
    masks[2] = (yy - 20) ** 2 + (xx - 38) ** 2 < 64  # a disc
    anns = []
    for k, (m, rle) in enumerate(zip(masks, encode_masks(masks))):
        ys, xs = np.nonzero(m)
        x, y = int(xs.min()), int(ys.min())
        box = [x, y, int(xs.max()) + 1 - x, int(ys.max()) + 1 - y]
        anns.append({"id": k + 1, "image_id": 1, "category_id": 1 + k % 2, "bbox": box,
                     "area": float(m.sum()), "iscrowd": 0, "segmentation": rle})
    data = {"images": [{"id": 1, "file_name": "a.png", "width": 50, "height": 40}],
            "annotations": anns,
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(data))
    return load_coco(path), masks, [a["category_id"] - 1 for a in anns]


def test_perfect_masks_give_mask_ap_100_and_wrong_ones_less(tmp_path):
    coco, masks, labels = _coco_with_masks(tmp_path)
    scores = torch.tensor([0.9, 0.8, 0.7])
    rows = segm_rows(torch.from_numpy(masks), scores, torch.tensor(labels), 1, [1, 2])
    assert coco_metrics(coco, rows, [1], "segm")["mAP"] == pytest.approx(100.0)
    shifted = np.roll(masks, 6, axis=2)  # the same boxes' sizes, masks moved 6 px
    rows = segm_rows(torch.from_numpy(shifted), scores, torch.tensor(labels), 1, [1, 2])
    assert coco_metrics(coco, rows, [1], "segm")["mAP"] < 60.0


def test_segmentations_decode_from_polygons_and_rle():
    square = decode_segmentation([[2, 2, 6, 2, 6, 6, 2, 6]], 10, 10)
    assert square.shape == (10, 10) and square[3:6, 3:6].all() and square.sum() <= 25
    mask = np.zeros((1, 7, 9), dtype=bool)
    mask[0, 1:4, 2:8] = True
    rle = encode_masks(mask)[0]
    assert (decode_segmentation(rle, 7, 9) == mask[0]).all()
    # Uncompressed (crowd regions): column-major runs, zeros first. Columns 0-1 and row 0
    # of column 2 are 15 zeros; then 3 ones, 4 zeros (rows 4-6, row 0) for columns 2-7.
    runs = [15] + [3, 4] * 5 + [3, 10]
    uncompressed = {"size": [7, 9], "counts": runs}
    assert (decode_segmentation(uncompressed, 7, 9) == mask[0]).all()
    with pytest.raises(ValueError, match="size"):
        decode_segmentation(rle, 8, 9)


def test_the_contract_knows_the_mask_metrics():
    names = known_metrics()
    for mode in MODES:
        for m in ("mAP", "AP50", "AP75", "APs", "APm", "APl"):
            assert metric_name(segm_name(m), mode) in names
    assert "mAP_segm_e2e" in names and "mAP_segm_nms" in names and "mAP_segm_raw" in names


# ---------------------------------------------------------------------- training


def test_condinst_pss_trains_on_shapes_and_reports_mask_ap_in_every_mode(
    shapes_root, tmp_path, tracking
):
    cfg = load_config([], [*tiny_train_overrides(shapes_root, tmp_path, "condinst_pss")])
    torch.manual_seed(cfg.train.seed)
    init = Detector(cfg.model).state_dict()
    metrics = train(cfg, run=RunInfo(experiment="condinst"))
    for mode in MODES:
        for name in ("mAP", "mAP_segm", "AP50_segm", "APl_segm"):
            assert 0.0 <= metrics[metric_name(name, mode)] <= 100.0
    last = sorted((cfg.run_dir / "eval").glob("epoch_*"))[-1]
    rows = json.loads((last / "segmentations_e2e.json").read_text())
    assert rows and {"segmentation", "score", "category_id", "image_id"} <= set(rows[0])
    from pss.engine.checkpoint import load_checkpoint

    after = load_checkpoint(cfg.run_dir / "last.pth")["model"]
    for part in ("head.controller.", "head.mask_branch.", "head.pss.", "backbone."):
        assert any(k.startswith(part) and not torch.equal(init[k], after[k]) for k in after), part


def test_box_models_log_no_mask_metrics(shapes_root, tmp_path, tracking):
    cfg = load_config(
        [], [*tiny_train_overrides(shapes_root, tmp_path, "fcos"), "train.epochs=1"]
    )
    metrics = train(cfg, run=RunInfo(experiment="condinst"))
    assert "mAP_nms" in metrics and not any("segm" in k for k in metrics)


# ---------------------------------------------------------------------- pictures


def test_a_condinst_checkpoint_predicts_masks_at_the_files_pixels_and_draws_them(tmp_path):
    from PIL import Image

    from pss.deploy.draw import MASK_OPACITY, PALETTE, draw_detections, draw_modes
    from pss.deploy.inference import TorchRunner, load_model
    from pss.testing.deploy import write_checkpoint

    ckpt = tmp_path / "condinst_pss.pth"
    write_checkpoint(ckpt, "condinst_pss")
    model = load_model(ckpt)
    pixels = np.random.default_rng(0).integers(0, 256, (100, 150, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    for mode in MODES:
        det = TorchRunner(model, mode)(image)
        assert det["masks"].dtype == torch.bool
        assert det["masks"].shape == (len(det["scores"]), 100, 150)
    figure = draw_modes(model, [image], tmp_path / "modes.png", score_thresh=0.0)
    assert (tmp_path / "modes.png").is_file() and figure.width > 3 * 150

    grey = Image.new("RGB", (400, 400), (100, 100, 100))  # no enlargement (min side 384)
    mask = torch.zeros(1, 400, 400, dtype=torch.bool)
    mask[0, 100:200, 150:300] = True
    det = {"boxes": torch.tensor([[150.0, 100, 300, 200]]), "scores": torch.tensor([0.9]),
           "labels": torch.tensor([1]), "masks": mask}
    drawn = np.asarray(draw_detections(grey, det, model.categories)).astype(float)
    colour = np.array(PALETTE[1], dtype=float)
    inside = (1 - MASK_OPACITY) * 100 + MASK_OPACITY * colour
    assert np.allclose(drawn[150, 220], inside, atol=1)  # filled, semi-transparent
    assert np.allclose(drawn[300, 50], 100)  # outside: untouched


def test_the_condinst_proof_judges_mask_ap_against_the_pss_models_own_nms():
    from pss.proof import CLAIMS, Trained, table, verdict

    claim = CLAIMS["condinst"]
    base = {"mAP_nms": 50.0, "mAP_raw": 30.0, "mAP_segm_nms": 40.0, "mAP_segm_raw": 25.0}
    pss = {"mAP_e2e": 48.0, "mAP_nms": 49.0, "mAP_segm_e2e": 36.5, "mAP_segm_nms": 38.0}
    holds, why = verdict(base, pss, claim=claim)
    assert holds, why  # 36.5 >= 38.0 - 2 (its own masks with NMS), 25 <= 40 - 3
    assert "condinst_pss e2e mask AP 36.5 vs condinst_pss + NMS 38.0" in why
    holds, why = verdict(base, {**pss, "mAP_segm_nms": 39.0}, claim=claim)
    assert not holds and "NOT within" in why  # 36.5 < 39.0 - 2
    holds, why = verdict({**base, "mAP_segm_raw": 38.0}, pss, claim=claim)
    assert not holds and "NOT clearly lower" in why
    ap50 = {"AP50_nms": 70.0, "AP50_raw": 40.0, "AP50_segm_nms": 60.0, "AP50_segm_raw": 35.0,
            "mAR_nms": 60.0, "mAR_raw": 65.0}
    results = {
        "condinst": Trained("condinst", {**base, **ap50}, 60.0),
        "condinst_pss": Trained("condinst_pss", {**pss, **ap50, "AP50_e2e": 1.0,
                                                 "AP50_segm_e2e": 2.0, "mAR_e2e": 3.0}, 60.0),
    }
    rows = table(results, claim).splitlines()
    assert "| mAP | AP50 | mAR | mask mAP | mask AP50 |" in rows[0]
    assert "| condinst_pss | e2e (no NMS) | 48.0 | 1.0 | 3.0 | 36.5 | 2.0 |" in rows[4]


# ----------------------------------------------------------------------- report


def test_the_condinst_report_shows_box_and_mask_ap_beside_the_authors_readme(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from pss.report import make_report
    from pss.testing import REPO
    from pss.testing.mlflow_runs import FakeRun, seed_runs

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    spec = REPO / "sweeps" / "condinst.yaml"
    runs = []
    for cell, model in [("r50-condinst-1x", "condinst"), ("r50-condinst-3x", "condinst"),
                        ("r50-condinst_pss-1x", "condinst_pss"),
                        ("r50-condinst_pss-3x", "condinst_pss"),
                        ("r101-condinst_pss-3x", "condinst_pss")]:
        modes = ("e2e", "nms") if model.endswith("_pss") else ("nms",)
        metrics = {f"mAP_{m}": 40.25 for m in modes} | {f"mAP_segm_{m}": 35.25 for m in modes}
        runs.append(FakeRun(cell=cell, params={"model.name": model}, metrics=metrics))
    seed_runs(MlflowClient(uri), "condinst", runs, artifact_root=tmp_path / "artifacts")
    make_report(spec, out_dir=tmp_path / "out", formats="md", with_paper=True)
    md = (tmp_path / "out" / "condinst.md").read_text()
    assert "mask AP (%)" in md and "box AP (%)" in md and "authors' README" in md
    # the legend names the reference's source, not the paper
    assert "authors' README: the value reported in the authors' README" in md
    assert "reported in the paper" not in md
    assert "35.2" in md or "35.3" in md  # our mask AP
    for value in ("34.1", "37.0", "34.4", "36.8", "38.2"):  # the README's mask AP
        assert value in md, value


def test_predict_writes_the_masks_as_coco_segmentation_results(tmp_path):
    from PIL import Image
    from pycocotools import mask as mask_utils

    from pss.predict import main as predict_main
    from pss.testing.deploy import write_checkpoint

    ckpt = tmp_path / "condinst_pss.pth"
    write_checkpoint(ckpt, "condinst_pss")
    pixels = np.random.default_rng(1).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    out = tmp_path / "out"
    args = [str(ckpt), str(tmp_path / "a.png"), "--out", str(out), "--score-thresh", "0.0"]
    assert predict_main(args) == 0
    boxes = json.loads((out / "detections.json").read_text())
    segms = json.loads((out / "segmentations.json").read_text())
    assert len(segms) == len(boxes) > 0
    for box, segm in zip(boxes, segms):
        assert (box["category_id"], box["score"]) == (segm["category_id"], segm["score"])
        assert segm["segmentation"]["size"] == [90, 120]
        assert mask_utils.decode(segm["segmentation"]).shape == (90, 120)
    box_ckpt = tmp_path / "fcos_pss.pth"
    write_checkpoint(box_ckpt, "fcos_pss")
    assert predict_main([str(box_ckpt), str(tmp_path / "a.png"), "--out", str(out)]) == 0
    assert not (out / "segmentations.json").exists()  # not an earlier call's masks
