"""Twin detectors: our Detector and the mmdet model of the shipped config, same weights.

The mmdet side is built from the model's config in ``experiments/mmdet/``
(:func:`pss.mmdet.translate.config_file`: ``<model>_r50_3x.py``, GFocalV2's
``<model>_r50_2x.py``; CondInst's with masks, :data:`MASK_TARGETS`), made the size of
our small test model (ResNet-18, 64-channel FPN and head, 2 convs per tower, 3
classes), with the differences that exist by design set to our side's convention
(:data:`BY_DESIGN`, each named there).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from mmdet.structures import DetDataSample
from mmdet.structures.mask import BitmapMasks
from mmengine.structures import InstanceData
from torch import Tensor, nn

from pss.config import load_config as load_ours
from pss.mmdet.config import build_model, load_config
from pss.mmdet.convert import copy_weights, mmdet_key
from pss.mmdet.translate import config_file
from pss.models import Detector

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "experiments" / "mmdet"
NAMES = ("fcos", "atss", "fcos_pss", "atss_pss")  # the paper's detectors (R50 3x configs)
GFOCAL_NAMES = ("gfocalv2", "gfocalv2_pss")  # the authors' README's (R50 2x configs)
CONDINST_NAMES = ("condinst", "condinst_pss")  # section 4.4's (R50 3x configs)

OUR_SMALL = [
    "model.backbone.name=resnet18",
    "model.num_classes=3",
    "model.head.channels=64",  # 64 channels: GroupNorm(32) on both sides
    "model.head.num_convs=2",
    "model.pss.num_convs=2",
]
MMDET_SMALL = {
    "model.backbone.depth": 18,
    "model.backbone.init_cfg": None,
    "model.neck.in_channels": [64, 128, 256, 512],
    "model.neck.out_channels": 64,
    "model.bbox_head.num_classes": 3,
    "model.bbox_head.in_channels": 64,
    "model.bbox_head.feat_channels": 64,
    "model.bbox_head.stacked_convs": 2,
}
# Differences that exist by design, set on the mmdet side for the comparison:
BY_DESIGN = {
    "fcos": {},
    "atss": {
        # mmdet's AnchorGenerator centres a level's anchors on the corners of its cells
        # (center_offset 0: x = col * stride); ours, like FCOS's points, on their
        # centres ((col + 0.5) * stride).
        "model.bbox_head.anchor_generator.center_offset": 0.5,
        # mmdet's ATSS config computes P7 = conv(P6), ours (like FCOS) conv(ReLU(P6)).
        "model.neck.relu_before_extra_convs": True,
    },
}
# GFocalV2 is mmdet's GFL, whose anchors and FPN are its ATSS's: the same two differences.
BY_DESIGN["gfocalv2"] = BY_DESIGN["atss"]
# CondInst: ours follows the authors' conventions (AdelaiDet), as mmdet's does; what
# differs is set in experiments/mmdet/condinst_r50_3x.py itself (docs/mmdet.md, "CondInst").
BY_DESIGN["condinst"] = {}
# The size of our small model for mmdet's CondInst mask branch (it reads P3).
MMDET_SMALL_MASKS = {"model.mask_head.mask_feature_head.in_channels": 64}
# Not set here, also by design: both sides take the same normalised image tensors
# (mmdet's DetDataPreprocessor, which would normalise 0-255 BGR->RGB images, is not run).

# With these, mmdet's NMS post-processing and ours pick the same candidates (see
# test_detections_in_nms_mode): no score threshold, every pair kept before NMS, and
# mmdet keeps zero-size boxes as ours does.
MMDET_NMS_NEUTRAL = {
    "model.test_cfg.score_thr": 0.0,
    "model.test_cfg.nms_pre": 1_000_000,
    "model.test_cfg.min_bbox_size": -1,
}
OUR_NMS_NEUTRAL = ["model.inference.score_thresh=0.0", "model.inference.pre_nms_topk=1000000"]

# Two images of different sizes, padded to one batch, with objects over several levels.
BATCH_SHAPE = (160, 224)
IMAGE_SIZES = [(160, 224), (128, 192)]
TARGETS = [
    {
        "boxes": torch.tensor(
            [[10.0, 20, 100, 120], [50, 60, 200, 150], [5, 5, 30, 40], [120, 10, 220, 70]]
        ),
        "labels": torch.tensor([0, 2, 1, 0]),
    },
    {
        "boxes": torch.tensor([[30.0, 30, 180, 120], [100, 50, 130, 90]]),
        "labels": torch.tensor([1, 2]),
    },
]

# CondInst's targets: TARGETS' boxes filled by an ellipse, a lower-left triangle or the
# whole box in turn, so that most masks' centroids are off their box centres (center
# sampling is around the centroid) and their edges cut 4 x 4 blocks (mask targets are one
# pixel per block).
MASK_TARGETS = [{k: v.clone() for k, v in t.items()} for t in TARGETS]


def shapes(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Masks [M, h, w] (0 / 1) of an image of ``size``: in boxes [M, 4], object k an
    ellipse (k % 3 == 0), the lower-left triangle (1) or the whole box (2)."""
    ys, xs = torch.meshgrid(
        torch.arange(size[0]) + 0.5, torch.arange(size[1]) + 0.5, indexing="ij"
    )
    masks = []
    for k, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        u, v = (xs - x1) / (x2 - x1), (ys - y1) / (y2 - y1)  # 0..1 across the box
        inside = (u >= 0) & (u < 1) & (v >= 0) & (v < 1)
        masks.append(inside & [(u - 0.5) ** 2 + (v - 0.5) ** 2 < 0.25, v >= u, inside][k % 3])
    return torch.stack(masks).float()


for target, size in zip(MASK_TARGETS, IMAGE_SIZES):
    target["masks"] = shapes(target["boxes"], size)


def targets_of(name: str) -> list[dict[str, Tensor]]:
    """The test batch's targets of a model: with masks for CondInst."""
    return MASK_TARGETS if base_of(name) == "condinst" else TARGETS


def base_of(name: str) -> str:
    return name.removesuffix("_pss")


def our_detector(name: str, *overrides: str) -> Detector:
    return Detector(load_ours([], [f"model.name={name}", *OUR_SMALL, *overrides]).model)


def mmdet_detector(name: str, options: dict | None = None) -> nn.Module:
    small = {**MMDET_SMALL, **(MMDET_SMALL_MASKS if base_of(name) == "condinst" else {})}
    cfg = load_config(
        [config_file(name)],
        {**small, **BY_DESIGN[base_of(name)], **(options or {})},
    )
    return build_model(cfg)


def images(seed: int = 0, targets: list[dict[str, Tensor]] = TARGETS) -> Tensor:
    """[2, 3, 160, 224] normalised images (noise with some structure), zero padded."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, *BATCH_SHAPE, generator=g)
    x = torch.nn.functional.avg_pool2d(x, 5, stride=1, padding=2) * 3
    for b, t in enumerate(targets):  # brighter objects, so that training finds them
        for box, label in zip(t["boxes"].long().tolist(), t["labels"].tolist()):
            x1, y1, x2, y2 = box
            x[b, label, y1:y2, x1:x2] += 2.0
    h, w = IMAGE_SIZES[1]
    x[1, :, h:, :] = 0
    x[1, :, :, w:] = 0
    return x


def data_samples(targets: list[dict[str, Tensor]] = TARGETS) -> list[DetDataSample]:
    """mmdet's samples of the test batch (masks: padded to the batch, as mmdet's
    data preprocessor pads them)."""
    samples = []
    for (h, w), t in zip(IMAGE_SIZES, targets):
        sample = DetDataSample(
            metainfo={
                "img_shape": (h, w),
                "ori_shape": (h, w),
                "pad_shape": BATCH_SHAPE,
                "batch_input_shape": BATCH_SHAPE,
                "scale_factor": (1.0, 1.0),
            }
        )
        sample.gt_instances = InstanceData(bboxes=t["boxes"].clone(), labels=t["labels"].clone())
        if "masks" in t:
            padded = torch.zeros(len(t["masks"]), *BATCH_SHAPE, dtype=torch.uint8)
            padded[:, :h, :w] = t["masks"]
            sample.gt_instances.masks = BitmapMasks(padded.numpy(), *BATCH_SHAPE)
        samples.append(sample)
    return samples


@torch.no_grad()
def perturb_(model: nn.Module, seed: int = 0) -> None:
    """Move every norm statistic, affine, scale and bias off its initial value, so that a
    weight copied to the wrong place cannot go unnoticed."""
    g = torch.Generator().manual_seed(seed)
    for name, tensor in model.state_dict().items():
        noise = torch.randn(tensor.shape, generator=g)
        if name.endswith("running_var"):
            tensor.copy_(torch.rand(tensor.shape, generator=g) + 0.5)
        elif name.endswith(("running_mean", ".bias")):
            tensor.add_(0.1 * noise)
        elif name.endswith(".scale") or (name.endswith(".weight") and tensor.dim() == 1):
            tensor.mul_(1 + 0.1 * noise)


def train_briefly(
    model: Detector, steps: int = 25, targets: list[dict[str, Tensor]] = TARGETS
) -> None:
    """A few SGD steps on the test batch: scores and boxes that mean something."""
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    x = images(targets=targets)
    for _ in range(steps):
        loss = model.losses(model(x), targets)["loss"]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 35.0)
        opt.step()


@dataclass
class Twins:
    name: str
    ours: Detector
    theirs: nn.Module
    zeroed: list[str]  # mmdet weights ours lacks (set to zero)


def make_twins(name: str, our_overrides=(), mmdet_options: dict | None = None) -> Twins:
    torch.manual_seed(0)
    ours = our_detector(name, *our_overrides)
    perturb_(ours)
    train_briefly(ours, targets=targets_of(name))
    theirs = mmdet_detector(name, mmdet_options)
    zeroed = copy_weights(ours, theirs)
    return Twins(name, ours, theirs, zeroed)


def assert_same_gradients(
    ours: nn.Module, theirs: nn.Module, prefix: str, rtol: float
) -> list[str]:
    """Each trainable parameter's gradient on both sides (mmdet's by :func:`mmdet_key`)
    within ``rtol`` of its norm; returns the names compared."""
    params = dict(theirs.named_parameters())
    compared = []
    for name, p in ours.named_parameters():
        other = params[mmdet_key(name, prefix)]
        assert p.requires_grad == other.requires_grad, name
        if p.requires_grad:
            assert p.grad is not None and other.grad is not None, name
            gap = (p.grad - other.grad).norm() / other.grad.norm().clamp(min=1e-30)
            assert gap <= rtol, (name, float(gap))
            compared.append(name)
    return compared
