"""CondInst (Tian et al., "Conditional Convolutions for Instance Segmentation", ECCV 2020):
its head, its mask loss and its masks, on the FCOS detector.

CondInst is FCOS (its towers, boxes, center-ness, one-to-many assignment and losses)
plus two parts:

* a **controller**: a 3x3 conv on the reg tower predicting, at every location, the
  ``NUM_PARAMS`` = 169 weights and biases of that location's own mask head
  (``HeadOutputs.params`` [B, N, 169]);
* a **mask branch** on P3: ``BRANCH_CONVS`` x [conv3x3 (``BRANCH_CHANNELS``), GN, ReLU]
  -> conv1x1 to ``MASK_CHANNELS`` = 8 (``HeadOutputs.mask_feats`` [B, 8, H3, W3]).

An instance's mask (:func:`mask_logits`) is its location's *dynamic* mask head run on
the mask branch's map with two more channels, the relative coordinates of every pixel
of the map from the location, in units of ``SIZE_OF_INTEREST`` strides of the
location's level: three 1x1 convs 10 -> 8 -> 8 -> 1, ReLU between them
(10 x 8 + 8 + 8 x 8 + 8 + 8 + 1 = 169 parameters). Its logits at P3 (stride 8) are
upsampled x2 (:func:`aligned_upsample`): masks are predicted at 1/4 of the input
(``MASK_OUT_STRIDE``).

Loss (:func:`mask_loss`): the dice loss of each one-to-many positive's mask against its
object's mask (one input pixel per 4 x 4 block, :func:`mask_targets`), on at most
``MAX_MASKS`` positives of each image (a random subset beyond, :func:`trained_masks`),
/ the number of masks.
The one-to-many positives are FCOS's, with the centre region around each object's mask
centroid rather than its box centre (:func:`mask_centroids`).

Three conventions are the authors' CondInst's (AdelaiDet, which mmdet 3.3's CondInst
follows), not the obvious ones, so that the two implementations train alike: the
centroid above; the upsampling, where map pixel i lands on output pixel
``factor i + factor // 2`` (AdelaiDet's ``aligned_bilinear``), in training (x2) and
when pasting (x4); and the targets, the object's pixel at (4 i + 2, 4 j + 2) rather
than each block's mean.

Inference (:func:`instance_masks`): the decoder (:func:`pss.models.decode.detect`) picks
the detections of a mode and their locations; only those locations' masks are computed
(e2e: the top 100 by PSS score; nms: after box NMS, CondInst's own inference; raw: the
top 100 by base score). :func:`paste_masks` takes them to an image's pixels and
:func:`segm_rows` writes them as COCO results (RLE).

The constants are CondInst's (mmdet 3.3's ``condinst_r50_fpn_ms-poly-90k_coco_instance``:
169 parameters, 8 channels, size of interest 8, mask out stride 4, at most 300 masks,
dice eps 5e-6; the mask branch on P3 as the paper has it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pss.config import ModelConfig
from pss.data.masks import encode_masks
from pss.dist import reduce_mean
from pss.models.boxes import Priors
from pss.models.heads import DenseHead, HeadOutputs, group_norm

MASK_STRIDE = 8  # the mask branch's map: P3
MASK_OUT_STRIDE = 4  # masks are predicted (and trained) at 1/4 of the input
BRANCH_CHANNELS = 128
BRANCH_CONVS = 4
MASK_CHANNELS = 8  # the mask branch's output and the dynamic convs' width
SIZE_OF_INTEREST = 8  # relative coordinates in units of 8 strides of the location's level
MAX_MASKS = 300  # positives whose masks are trained, per image (mmdet's max_masks_to_train)
DICE_EPS = 5e-6
MASK_THRESH = 0.5  # a pasted mask's pixels: probability > this

# The dynamic mask head: (in, out) channels of its three 1x1 convs.
DYNAMIC_LAYERS = (
    (MASK_CHANNELS + 2, MASK_CHANNELS),
    (MASK_CHANNELS, MASK_CHANNELS),
    (MASK_CHANNELS, 1),
)
NUM_PARAMS = sum(i * o + o for i, o in DYNAMIC_LAYERS)  # 169


# ------------------------------------------------------------------------------ head


class MaskBranch(nn.Module):
    """P3 [B, C, H3, W3] -> [B, MASK_CHANNELS, H3, W3]: ``BRANCH_CONVS`` x [conv3x3, GN,
    ReLU] of ``BRANCH_CHANNELS``, then a 1x1 conv."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(BRANCH_CONVS):
            layers += [
                nn.Conv2d(channels, BRANCH_CHANNELS, 3, padding=1, bias=False),
                group_norm(BRANCH_CHANNELS),
                nn.ReLU(inplace=True),
            ]
            channels = BRANCH_CHANNELS
        self.convs = nn.Sequential(*layers)
        self.out = nn.Conv2d(channels, MASK_CHANNELS, 1)

    def forward(self, p3: Tensor) -> Tensor:
        return self.out(self.convs(p3))


class CondInstHead(DenseHead):
    """CondInst's head (+ the PSS head for ``condinst_pss``): FCOS's dense head, the
    controller (a 3x3 conv on the reg tower, ``NUM_PARAMS`` outputs) and the mask
    branch on P3 (the first FPN level)."""

    def __init__(self, cfg: ModelConfig, num_levels: int = 5) -> None:
        super().__init__(cfg, num_levels)
        self.controller = nn.Conv2d(cfg.head.channels, NUM_PARAMS, 3, padding=1)
        nn.init.normal_(self.controller.weight, std=0.01)
        nn.init.zeros_(self.controller.bias)
        self.mask_branch = MaskBranch(cfg.head.channels)

    def location_params(self, reg_feat: Tensor) -> Tensor:
        return self.controller(reg_feat)

    def forward(self, feats: list[Tensor]) -> HeadOutputs:
        return replace(super().forward(feats), mask_feats=self.mask_branch(feats[0]))


# --------------------------------------------------------------------- dynamic head


def map_points(height: int, width: int, device: torch.device) -> Tensor:
    """Centres (x, y) [H W, 2] in input pixels of the mask branch's H x W map (row-major)."""
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) * MASK_STRIDE
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) * MASK_STRIDE
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((xx.reshape(-1), yy.reshape(-1)), dim=1)


def split_params(params: Tensor) -> list[tuple[Tensor, Tensor]]:
    """params [P, NUM_PARAMS] -> per dynamic layer (weight [P, out, in], bias [P, out]):
    all the weights first (layer by layer), then all the biases, as CondInst lays them."""
    sizes = [i * o for i, o in DYNAMIC_LAYERS] + [o for _, o in DYNAMIC_LAYERS]
    parts = params.split(sizes, dim=1)
    n = len(DYNAMIC_LAYERS)
    return [
        (parts[k].reshape(-1, o, i), parts[n + k])
        for k, (i, o) in enumerate(DYNAMIC_LAYERS)
    ]


def mask_logits(
    mask_feats: Tensor, params: Tensor, img: Tensor, points: Tensor, strides: Tensor
) -> Tensor:
    """Mask logits [P, 2 H3, 2 W3] (stride ``MASK_OUT_STRIDE``) of P instances.

    mask_feats [B, MASK_CHANNELS, H3, W3]; instance p: dynamic parameters params[p]
    [NUM_PARAMS], image img[p], location points[p] (x, y) in input pixels of stride
    strides[p]. The relative coordinates (location - pixel) / (stride x
    SIZE_OF_INTEREST) go in first, then the mask branch's channels.
    """
    num, (h, w) = params.shape[0], mask_feats.shape[-2:]
    grid = map_points(h, w, mask_feats.device)  # [HW, 2]
    rel = (points[:, None, :] - grid[None]) / (strides[:, None, None] * SIZE_OF_INTEREST)
    x = torch.cat((rel.transpose(1, 2), mask_feats[img].flatten(2)), dim=1)  # [P, 10, HW]
    layers = split_params(params)
    for k, (weight, bias) in enumerate(layers):
        x = torch.baddbmm(bias[..., None], weight, x)
        if k < len(layers) - 1:
            x = F.relu(x)
    return aligned_upsample(x.reshape(num, h, w), MASK_STRIDE // MASK_OUT_STRIDE)


def resample(x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """x [..., H, W] at fractional positions -> [..., len(rows), len(cols)], bilinearly:
    rows [R] and cols [S] are positions in x's pixel indices, within [0, H - 1] and
    [0, W - 1]."""
    for dim, pos in ((-2, rows), (-1, cols)):
        size = x.shape[dim]
        lo = pos.floor().clamp(max=size - 1)
        frac = (pos - lo).reshape((-1, 1) if dim == -2 else (-1,))
        lo = lo.long()
        hi = (lo + 1).clamp(max=size - 1)
        x = x.index_select(dim, lo) * (1 - frac) + x.index_select(dim, hi) * frac
    return x


def map_positions(pixels: Tensor, factor: int, size: int) -> Tensor:
    """Where output pixels [K] of a map of ``size`` pixels upsampled by ``factor`` sit in
    the map: (j - factor // 2) / factor, held at the map's edges ([K])."""
    return ((pixels - factor // 2) / factor).clamp(0, size - 1)


def aligned_upsample(x: Tensor, factor: int) -> Tensor:
    """x [..., H, W] -> [..., factor H, factor W], bilinearly with map pixel i on output
    pixel factor i + factor // 2 (AdelaiDet's ``aligned_bilinear``) and the edge values
    beyond the outermost ones."""
    rows, cols = (
        map_positions(torch.arange(factor * n, device=x.device, dtype=torch.float32), factor, n)
        for n in x.shape[-2:]
    )
    return resample(x, rows, cols)


# ----------------------------------------------------------------------------- loss


def dice_loss(logits: Tensor, targets: Tensor, eps: float = DICE_EPS) -> Tensor:
    """Dice loss of each mask [P]: 1 - 2 sum(p t) / (sum(p^2) + sum(t^2) + 2 eps),
    p = sigmoid(logits). logits, targets (in [0, 1]): [P, H, W]."""
    p = logits.float().sigmoid().flatten(1)
    t = targets.float().flatten(1)
    inter = (p * t).sum(1)
    return 1 - 2 * inter / ((p * p).sum(1) + eps + (t * t).sum(1) + eps)


def mask_targets(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """One image's object masks [M, h, w] (0 / 1, input pixels) -> [M, H4, W4] float 0 / 1:
    each object's pixel at (4 i + 2, 4 j + 2) on the padded batch (zero beyond the image),
    ``size`` = (H4, W4) the predicted masks' size."""
    h4, w4 = size
    start = MASK_OUT_STRIDE // 2
    m = masks[:, start::MASK_OUT_STRIDE, start::MASK_OUT_STRIDE][:, :h4, :w4] > 0
    return F.pad(m.float(), (0, w4 - m.shape[2], 0, h4 - m.shape[1]))


def mask_centroids(masks: Tensor) -> Tensor:
    """Object masks [M, h, w] (0 / 1) -> their centroids [M, 2] (x, y) in pixel indices
    (pixel (0, 0) at 0, as the authors' CondInst places them); an empty mask's is (0, 0)."""
    area = masks.sum((1, 2), dtype=torch.float32).clamp(min=1e-6)
    ys = torch.arange(masks.shape[1], device=masks.device, dtype=torch.float32)
    xs = torch.arange(masks.shape[2], device=masks.device, dtype=torch.float32)
    cx = (masks.sum(1, dtype=torch.float32) * xs).sum(1) / area
    cy = (masks.sum(2, dtype=torch.float32) * ys).sum(1) / area
    return torch.stack((cx, cy), dim=1)


def trained_masks(img: Tensor) -> Tensor:
    """Which positives have their masks trained, bool [P] for the positives' images img [P]:
    all of an image's when it has at most ``MAX_MASKS``, else a random ``MAX_MASKS`` of
    them (``torch.randperm`` on the global RNG, only for such an image), as mmdet's
    ``max_masks_to_train`` (a per-image cap; AdelaiDet's counts a GPU's 2 images)."""
    keep = torch.ones_like(img, dtype=torch.bool)
    counts = torch.bincount(img)
    for b in torch.nonzero(counts > MAX_MASKS).flatten().tolist():
        mine = torch.nonzero(img == b).flatten()
        keep[mine[torch.randperm(mine.numel(), device=img.device)[MAX_MASKS:]]] = False
    return keep


def mask_loss(
    out: HeadOutputs,
    priors: Priors,
    img: Tensor,
    loc: Tensor,
    obj: Tensor,
    targets: list[dict[str, Tensor]],
) -> dict[str, Tensor]:
    """loss_mask: the dice loss of the one-to-many positives' masks, mean over masks.

    out: float32 head outputs (``params``, ``mask_feats``); the P positives: location
    loc[p] of image img[p] for object obj[p] (an index into the batch's objects, in
    ``targets`` order); targets: per image ``masks`` [M, h, w]. The masks of
    :func:`trained_masks` are trained. The normaliser counts the whole global batch under
    DDP.
    """
    keep = trained_masks(img)
    img, loc, obj = img[keep], loc[keep], obj[keep]
    h3, w3 = out.mask_feats.shape[-2:]
    size = (h3 * MASK_STRIDE // MASK_OUT_STRIDE, w3 * MASK_STRIDE // MASK_OUT_STRIDE)
    gt = torch.cat([mask_targets(t["masks"], size) for t in targets])  # [sum M, H4, W4]
    logits = mask_logits(
        out.mask_feats, out.params[img, loc], img, priors.points[loc], priors.strides[loc]
    )
    num = reduce_mean(img.new_tensor(img.numel(), dtype=torch.float32)).clamp(min=1.0)
    # Without positives the sum is 0 and still reaches both parts (DDP sees every grad).
    untouched = 0 * (out.params.sum() + out.mask_feats.sum())
    return {"loss_mask": dice_loss(logits, gt[obj]).sum() / num + untouched}


# ------------------------------------------------------------------------ inference


def instance_masks(out: HeadOutputs, priors: Priors, locs: Tensor) -> Tensor:
    """Mask probabilities [B, K, H4, W4] (stride ``MASK_OUT_STRIDE``, padded batch) of the
    detections at locations locs [B, K] (:func:`pss.models.decode.detect`'s)."""
    b, k = locs.shape
    img = torch.arange(b, device=locs.device).repeat_interleave(k)
    flat = locs.reshape(-1)
    logits = mask_logits(
        out.mask_feats.float(),
        out.params.float()[img, flat],
        img,
        priors.points[flat],
        priors.strides[flat],
    )
    return logits.sigmoid().reshape(b, k, *logits.shape[-2:])


def paste_masks(
    probs: Tensor, size: tuple[int, int], orig_size: tuple[int, int] | None = None
) -> Tensor:
    """Masks [K, H4, W4] (probabilities, stride ``MASK_OUT_STRIDE``) -> bool [K, h, w] of an
    image of ``size`` (h, w) in the network's input, or [K, oh, ow] at ``orig_size`` (the
    file's pixels: the input was that image resized).

    The authors' CondInst upsamples x4 (:func:`aligned_upsample`), crops the image and
    resizes it to the file (bilinear, half-pixel centres). Here both steps are one
    bilinear sample at the composed position, straight to the wanted pixels: the same
    without ``orig_size``, within a pixel's rounding at the mask's edge with it. The
    sample is ``grid_sample``'s (one pass; :func:`resample`'s gathers, exact for the
    small maps of training, make full-size temporaries: 6x slower at 800 x 1333).
    """
    out_h, out_w = orig_size or size
    if len(probs) == 0:
        return torch.zeros((0, out_h, out_w), dtype=torch.bool, device=probs.device)
    grid = []
    for n, out, full in zip(size, (out_h, out_w), probs.shape[-2:], strict=True):
        pixels = torch.arange(out, device=probs.device, dtype=torch.float32)
        if orig_size is not None:  # the file's pixels in the input's, half-pixel centres
            pixels = ((pixels + 0.5) * (n / out) - 0.5).clamp(0, n - 1)
        # in grid_sample's units: -1 and 1 on the first and last map pixels
        grid.append(map_positions(pixels, MASK_OUT_STRIDE, full) * (2 / max(full - 1, 1)) - 1)
    ys, xs = grid
    xy = torch.stack(torch.broadcast_tensors(xs[None, :], ys[:, None]), dim=-1)
    probs = probs.float()[None]  # [1, K, H4, W4]: the masks as channels
    up = F.grid_sample(probs, xy[None], padding_mode="border", align_corners=True)[0]
    return up > MASK_THRESH


def segm_rows(
    masks: Tensor, scores: Tensor, labels: Tensor, image_id: int, category_ids: Sequence[int]
) -> list[dict[str, Any]]:
    """COCO segmentation results of one image: masks [K, h, w] bool (the file's pixels),
    scores [K], labels [K] -> K entries with ``segmentation`` (compressed RLE)."""
    rles = encode_masks(masks.cpu().numpy())
    return [
        {
            "image_id": image_id,
            "category_id": category_ids[label],
            "segmentation": rle,
            "score": round(score, 5),
        }
        for rle, score, label in zip(rles, scores.tolist(), labels.tolist())
    ]
