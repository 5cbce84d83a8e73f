"""The one decoder: dense head outputs of a batch -> at most K detections per image.

    check_mode(mode, cfg.has_pss, cfg.name)                          # e2e needs a PSS head
    boxes, scores, labels = detect(cfg, out, priors, mode, sizes)   # [B, K, 4], [B, K], [B, K]
    dets = unpad(boxes, scores, labels)             # per image: dict(boxes, scores, labels)
    *padded, locs = detect(cfg, out, priors, mode, sizes, locations=True)  # + locs [B, K]
    rows = coco_rows(dets[0], image_id, category_ids, scale)        # COCO results entries

The score of the pair (location i, class c) is sigma(s_i(c)) * f_i, where the
per-location factor f_i (:func:`score_factor`) is sigma(ctr_i) in ``raw`` and ``nms``
and sigma(ctr_i) sigma(pss_i) in ``e2e`` (so that the score is P_i(c)); without a
center-ness branch sigma(ctr_i) is 1. (GFocalV2's ctr_i is its quality predictor's
logit: sigma(s_i(c)) sigma(ctr_i) is its joint classification-quality score.)

* ``e2e`` / ``raw`` (:func:`top_pairs`): the K best pairs, no NMS. Only the K
  locations whose best class scores highest can hold them, so only those locations'
  pairs are scored and only the chosen pairs' boxes decoded.
* ``nms`` (:func:`nms_pairs`): per image and level the ``pre_nms_topk`` best pairs
  above ``score_thresh``, class-aware NMS, the K best.

Everything is tensor code that ``torch.onnx.export`` traces:
:class:`pss.deploy.graph.DeployedDetector` exports it and
:meth:`pss.models.Detector.predict` evaluates with it (dropping the empty slots).
Outputs have exactly K slots per image, sorted by score; an empty slot holds score 0,
label :data:`EMPTY_LABEL` and a zero box. With ``locations=True`` each slot also says
which location it came from (0 in an empty slot): an instance segmentation model
(:mod:`pss.models.condinst`) computes the masks of those locations only. The nms path
runs one image at a time: exported (``exportable=True``), shapes must not depend on
the data, so it takes each level's top-k before the threshold and suppresses all
classes in one NMS call; in eager mode it thresholds first and calls torchvision's
``batched_nms``, which keep the same pairs and are faster (few pairs pass the
threshold).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import batched_nms, nms

from pss.config import InferenceConfig, ModelConfig
from pss.contract import MODES
from pss.errors import UserError
from pss.models.boxes import Priors, decode_deltas, distance_to_box
from pss.models.gfocal import integral
from pss.models.heads import HeadOutputs

Detections = dict[str, Tensor]  # one image: boxes [K, 4], scores [K], labels [K]
Padded = tuple[Tensor, Tensor, Tensor]  # boxes [B, K, 4], scores [B, K], labels [B, K]
Located = tuple[Tensor, Tensor, Tensor, Tensor]  # Padded + locations [B, K] (long)
EMPTY_LABEL = -1  # label of an unused slot (its score is 0)


# ------------------------------------------------------------------------------ modes


class ModeError(UserError, ValueError):
    """An inference mode that a model does not predict in (bad input, and a bad value)."""


def modes_for(has_pss: bool, wanted: Iterable[str] = MODES) -> tuple[str, ...]:
    """Of ``wanted``, the modes a model predicts in: e2e scores with the PSS head, so a
    model without one predicts in nms and raw only."""
    return tuple(m for m in wanted if m != "e2e" or has_pss)


def check_mode(mode: str, has_pss: bool, name: str, source: str | None = None) -> None:
    """:class:`ModeError` unless the model ``name`` predicts in ``mode``."""
    if mode not in MODES:
        raise ModeError(
            f"unknown inference mode '{mode}', expected one of {', '.join(MODES)}", source
        )
    if mode not in modes_for(has_pss):
        raise ModeError(
            f"mode '{mode}' needs a PSS head; '{name}' has none "
            f"(use {' or '.join(modes_for(has_pss))})",
            source,
        )


# ------------------------------------------------------------------------------ boxes


def decode_boxes(cfg: ModelConfig, reg: Tensor, points: Tensor, strides: Tensor) -> Tensor:
    """Boxes in input pixels [..., K, 4] from regression outputs [..., K, 4] at locations
    with centres [..., K, 2] and strides [..., K] (leading dims broadcast).

    FCOS: distances / stride (ReLU); ATSS: deltas from square anchors of side
    ``anchor_scale * stride``; GFocalV2: distributions of distances / stride (their
    means, :func:`pss.models.gfocal.integral`; reg [..., K, 4 (reg_max + 1)]).
    """
    if cfg.box_base == "fcos":
        return distance_to_box(points, F.relu(reg) * strides[..., None])
    if cfg.base == "gfocalv2":
        return distance_to_box(points, integral(reg) * strides[..., None])
    half = (cfg.assign.anchor_scale * strides / 2)[..., None]
    return decode_deltas(torch.cat((points - half, points + half), dim=-1), reg)


def clip_boxes(boxes: Tensor, sizes: Sequence[tuple[int, int]]) -> Tensor:
    """Boxes [B, M, 4] clipped to each image's (h, w) in ``sizes`` (one size, or the
    same size for every image: one clip for the batch)."""
    if len(sizes) == 1 or all(size == sizes[0] for size in sizes[1:]):
        return _clip(boxes, *sizes[0])
    return torch.stack([_clip(b, h, w) for b, (h, w) in zip(boxes, sizes, strict=True)])


def _clip(boxes: Tensor, h: int, w: int) -> Tensor:
    """Boxes [..., 4] clipped to an h x w image (x1, x2 to [0, w]; y1, y2 to [0, h])."""
    xs = boxes[..., 0::2].clamp(0, w)  # [..., 2]: x1, x2
    ys = boxes[..., 1::2].clamp(0, h)
    return torch.stack((xs, ys), dim=-1).flatten(-2)  # [..., 2, 2] (x, y) pairs -> [..., 4]


# ----------------------------------------------------------------------------- scores


def score_factor(mode: str, cls: Tensor, ctr: Tensor | None, pss: Tensor | None) -> Tensor:
    """The per-location factor f [B, N] (float32) of ``mode``'s scores: sigma(ctr)
    (1 without center-ness logits), times sigma(pss) in e2e. cls [B, N, C] gives the shape."""
    if ctr is not None:
        factor = ctr.float().sigmoid()
    else:
        factor = torch.ones_like(cls[..., 0], dtype=torch.float32)
    if mode == "e2e":
        factor = factor * pss.float().sigmoid()
    return factor


def pair_scores(logits: Tensor, factor: Tensor) -> Tensor:
    """Scores sigma(s_i(c)) * f_i [..., M, C] (float32) of class logits [..., M, C] at
    locations whose factors are ``factor`` [..., M]."""
    return logits.float().sigmoid() * factor[..., None]


# ----------------------------------------------------------------------------- decode


def detect(
    cfg: ModelConfig,
    out: HeadOutputs,
    priors: Priors,
    mode: str,
    sizes: Sequence[tuple[int, int]],
    exportable: bool = False,
    locations: bool = False,
) -> Padded | Located:
    """Detections of head outputs in ``mode`` (see the module), boxes clipped to each
    image's (h, w) in ``sizes`` (one size: every image's). ``priors``: of ``out.sizes``.
    ``locations``: each slot's location too (:data:`Located`)."""
    check_mode(mode, out.pss is not None, cfg.name)
    ic = cfg.inference
    factor = score_factor(mode, out.cls, out.ctr, out.pss)
    if mode == "nms":
        boxes = decode_boxes(cfg, out.reg.float(), priors.points, priors.strides)
        boxes = clip_boxes(boxes, sizes)
        return nms_pairs(out.cls, factor, boxes, priors.counts, ic, exportable, locations)

    def boxes_at(locs: Tensor) -> Tensor:
        reg = out.reg.float().gather(1, locs[..., None].expand(-1, -1, out.reg.shape[2]))
        boxes = decode_boxes(cfg, reg, priors.points[locs], priors.strides[locs])
        return clip_boxes(boxes, sizes)

    return top_pairs(
        out.cls, factor, boxes_at, ic.max_per_image, ic.e2e_score_thresh, locations
    )


def top_pairs(
    cls: Tensor,
    factor: Tensor,
    boxes_at: Callable[[Tensor], Tensor],
    k: int,
    thresh: float = 0.0,
    locations: bool = False,
) -> Padded | Located:
    """e2e / raw: the ``k`` best (location, class) pairs of each image scoring above
    ``thresh``, no NMS.

    cls [B, N, C] class logits, factor [B, N] (:func:`score_factor`); boxes_at(locs
    [B, K]) -> the boxes [B, K, 4] of those locations. Only the k locations whose best
    class scores highest can hold the k best pairs: only their pairs are scored.
    ``locations``: each pair's location [B, k] too.
    """
    num_classes = cls.shape[2]
    best = pair_scores(cls.amax(dim=2, keepdim=True), factor).squeeze(2)  # [B, N]
    locs = best.topk(torch.sym_min(k, best.shape[1]), dim=1).indices  # [B, k1]
    pair_logits = cls.gather(1, locs[..., None].expand(-1, -1, num_classes))
    scores = pair_scores(pair_logits, factor.gather(1, locs))  # [B, k1, C]
    top, idx = scores.flatten(1).topk(torch.sym_min(k, scores.shape[1] * num_classes), dim=1)
    pair_locs = locs.gather(1, idx // num_classes)  # [B, k2]
    boxes = boxes_at(pair_locs)  # [B, k2, 4]
    valid = top > thresh
    labels = torch.where(valid, idx % num_classes, EMPTY_LABEL)
    padded = pad(boxes * valid[..., None], top * valid, labels, k)
    return (*padded, pad_locations(pair_locs * valid, k)) if locations else padded


def nms_pairs(
    cls: Tensor,
    factor: Tensor,
    boxes: Tensor,
    counts: Sequence[int],
    ic: InferenceConfig,
    exportable: bool = False,
    locations: bool = False,
) -> Padded | Located:
    """nms: per image, the score of every pair; per level the ``ic.pre_nms_topk`` best
    above ``ic.score_thresh``, class-aware NMS at ``ic.nms_iou``, the ``ic.max_per_image``
    best.

    cls [B, N, C] class logits, factor [B, N] (:func:`score_factor`), boxes [B, N, 4],
    counts: locations per level (level-major order). ``exportable``: static shapes (see
    the module). ``locations``: each detection's location [B, K] too.
    """
    num_classes = cls.shape[2]
    results = []
    for b in range(cls.shape[0]):
        scores = pair_scores(cls[b], factor[b])  # [N, C]
        kept_scores, kept_idx = [], []
        start = 0
        for count in counts:
            level = scores[start : start + count].reshape(-1)
            top, idx = _best_above(level, ic.pre_nms_topk, ic.score_thresh, exportable)
            kept_scores.append(top)
            kept_idx.append(idx + start * num_classes)
            start = start + count
        top = torch.cat(kept_scores)
        idx = torch.cat(kept_idx)
        loc, labels = idx // num_classes, idx % num_classes
        cand = boxes[b][loc]
        keep = _class_nms(cand, top, labels, ic.nms_iou, exportable)[: ic.max_per_image]
        padded = pad(cand[keep], top[keep], labels[keep], ic.max_per_image)
        results.append((*padded, pad_locations(loc[keep], ic.max_per_image)))
    stacked = tuple(torch.stack(parts) for parts in zip(*results))
    return stacked if locations else stacked[:3]


def _best_above(scores: Tensor, k: int, thresh: float, exportable: bool) -> tuple[Tensor, Tensor]:
    """The (at most) ``k`` best of scores [M] above ``thresh``, and their indices."""
    if exportable:  # static shapes: the k best first, then the threshold
        top, idx = scores.topk(torch.sym_min(k, scores.shape[0]))
        above = top > thresh
        return top[above], idx[above]
    idx = torch.nonzero(scores > thresh).squeeze(1)
    if idx.numel() > k:
        idx = idx[scores[idx].topk(k).indices]
    return scores[idx], idx


def _class_nms(
    boxes: Tensor, scores: Tensor, labels: Tensor, iou: float, exportable: bool
) -> Tensor:
    """Indices of the boxes [M, 4] that class-aware NMS keeps, by decreasing score."""
    if not exportable:
        return batched_nms(boxes, scores, labels, iou)
    # All classes in one call: shifted by class, boxes of different classes never overlap.
    # (The zero keeps max() defined when no pair is left.)
    extent = torch.cat((boxes.reshape(-1), boxes.new_zeros(1))).max() + 1
    return nms(boxes + labels.to(boxes.dtype)[:, None] * extent, scores, iou)


# ------------------------------------------------------------------------------ slots


def pad(boxes: Tensor, scores: Tensor, labels: Tensor, k: int) -> Padded:
    """Pad the last detection axis to exactly k slots (score 0, label -1, zero box)."""
    n = scores.shape[-1]
    if isinstance(n, int) and n == k:  # full already (a size known before export, too)
        return boxes, scores, labels
    lead = scores.shape[:-1]
    boxes = torch.cat((boxes, boxes.new_zeros(*lead, k, 4)), dim=-2)[..., :k, :]
    scores = torch.cat((scores, scores.new_zeros(*lead, k)), dim=-1)[..., :k]
    labels = torch.cat((labels, labels.new_full((*lead, k), EMPTY_LABEL)), dim=-1)[..., :k]
    return boxes, scores, labels


def pad_locations(locs: Tensor, k: int) -> Tensor:
    """Locations [..., M] padded with 0 (an empty slot's) to exactly k on the last axis."""
    n = locs.shape[-1]
    if isinstance(n, int) and n == k:
        return locs
    return torch.cat((locs, locs.new_zeros(*locs.shape[:-1], k)), dim=-1)[..., :k]


def unpad(boxes: Tensor, scores: Tensor, labels: Tensor) -> list[Detections]:
    """Padded detections [B, K, ...] -> one dict per image without its empty slots."""
    keep = labels != EMPTY_LABEL
    if keep.all():  # no empty slot: views of the rows
        return [{"boxes": b, "scores": s, "labels": c} for b, s, c in zip(boxes, scores, labels)]
    return [
        {"boxes": boxes[b][keep[b]], "scores": scores[b][keep[b]], "labels": labels[b][keep[b]]}
        for b in range(len(labels))
    ]


# ------------------------------------------------------------------------------- COCO


def coco_rows(
    det: Detections,
    image_id: int,
    category_ids: Sequence[int],
    scale: float = 1.0,
    score_thresh: float | None = None,
) -> list[dict[str, Any]]:
    """COCO results entries of one image's detections: bbox [x, y, w, h] of the boxes
    divided by ``scale`` (2 decimals), category id ``category_ids[label]``, score (5
    decimals); with ``score_thresh``, only the detections scoring above it."""
    rows = []
    boxes = (det["boxes"] / scale).tolist()
    for (x1, y1, x2, y2), score, label in zip(
        boxes, det["scores"].tolist(), det["labels"].tolist()
    ):
        if score_thresh is not None and score <= score_thresh:
            continue
        rows.append(
            {
                "image_id": image_id,
                "category_id": category_ids[label],
                "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                "score": round(score, 5),
            }
        )
    return rows
