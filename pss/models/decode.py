"""Post-processing of one image's dense predictions into at most K detections.

* :func:`topk_detections` ("e2e" on the PSS score P_i(c), "raw" on the base
  score): the K best (location, class) pairs, no NMS; :func:`best_pair_detections`
  gives the same answer from class logits, decoding only the boxes it may keep.
* :func:`nms_detections` ("nms"): per level the ``pre_nms_topk`` best pairs
  above ``score_thresh``, then class-aware NMS, then the K best.

Inputs: scores [N, C] probabilities, boxes [N, 4] decoded (x1, y1, x2, y2).
Outputs: dict(boxes [K, 4], scores [K], labels [K]) sorted by score.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torchvision.ops import batched_nms

Detections = dict[str, Tensor]


def topk_detections(scores: Tensor, boxes: Tensor, k: int = 100, thresh: float = 0.0) -> Detections:
    num_classes = scores.shape[1]
    top, idx = scores.reshape(-1).topk(min(k, scores.numel()))
    keep = top > thresh
    top, idx = top[keep], idx[keep]
    loc = idx // num_classes
    return {"boxes": boxes[loc], "scores": top, "labels": idx % num_classes}


def best_pair_detections(
    logits: Tensor,
    factor: Tensor,
    decode: Callable[[Tensor], Tensor],
    k: int = 100,
    thresh: float = 0.0,
) -> Detections:
    """:func:`topk_detections` on scores sigma(logits) * factor, scoring few locations.

    logits [N, C] class logits, factor [N] per-location factor (sigma(ctr) [* sigma(pss)]),
    decode(locs [K]) -> boxes [K, 4] of those locations. Only the ``k`` locations whose
    best class scores highest can hold the k best pairs, so only those locations' pairs
    are scored and their boxes decoded; the answer is that of every pair.
    """
    best = logits.amax(dim=1).float().sigmoid() * factor
    locs = best.topk(min(k, best.numel())).indices
    scores = logits[locs].float().sigmoid() * factor[locs, None]
    return topk_detections(scores, decode(locs), k, thresh)


def nms_detections(
    scores: Tensor,
    boxes: Tensor,
    counts: list[int],
    score_thresh: float = 0.05,
    pre_nms_topk: int = 1000,
    iou_threshold: float = 0.6,
    k: int = 100,
) -> Detections:
    """``counts``: locations per level (level-major order of scores and boxes)."""
    num_classes = scores.shape[1]
    kept_scores, kept_idx = [], []
    start = 0
    for count in counts:
        level = scores[start : start + count].reshape(-1)
        idx = torch.nonzero(level > score_thresh).squeeze(1)
        if idx.numel() > pre_nms_topk:
            idx = idx[level[idx].topk(pre_nms_topk).indices]
        kept_scores.append(level[idx])
        kept_idx.append(idx + start * num_classes)
        start += count
    top = torch.cat(kept_scores)
    idx = torch.cat(kept_idx)
    loc, labels = idx // num_classes, idx % num_classes
    cand = boxes[loc]
    keep = batched_nms(cand, top, labels, iou_threshold)[:k]
    return {"boxes": cand[keep], "scores": top[keep], "labels": labels[keep]}
