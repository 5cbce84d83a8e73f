"""Label assignment, as pure functions on one image.

One-to-many (the base detectors):
  * :func:`fcos_assign`: locations inside the centre region (radius x stride
    around the box centre or a given point, clipped to the box) of a box whose
    largest regression distance fits the level's range; a location inside
    several boxes takes the smallest.
  * :func:`atss_assign`: per level the ``topk`` anchors closest to the box
    centre are candidates; those with IoU >= mean + std of the candidates' IoU
    and centre inside the box are positive; ties go to the highest IoU.
Both return ``gt_index`` [N]: the object each location is positive for, or -1.
Omega_j of the paper is ``{i : gt_index[i] == j}``.

The one-to-one assignment of the PSS target (Q_ij and the Hungarian matching) is
in :mod:`pss.models.selector`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import box_iou

from pss.models.boxes import box_to_distance


@dataclass
class Positives:
    """The one-to-many positives of a batch, P of them: location ``loc[p]`` of image
    ``img[p]`` is positive for an object of box ``boxes[p]`` and class ``labels[p]``.

    img, loc, labels: [P] long; boxes: [P, 4] (x1, y1, x2, y2).
    """

    img: Tensor
    loc: Tensor
    boxes: Tensor
    labels: Tensor


def fcos_assign(
    points: Tensor,
    strides: Tensor,
    ranges: Tensor,
    gt_boxes: Tensor,
    radius: float = 1.5,
    centers: Tensor | None = None,
) -> Tensor:
    """FCOS one-to-many assignment.

    points [N, 2], strides [N], ranges [N, 2] (lo, hi of each location's
    level), gt_boxes [M, 4] -> gt_index [N] (long, -1 for background). The
    centre regions are around ``centers`` [M, 2] (x, y), the boxes' centres
    unless given (CondInst gives its masks' centroids).
    """
    n, m = points.shape[0], gt_boxes.shape[0]
    if m == 0:
        return torch.full((n,), -1, dtype=torch.long, device=points.device)
    ltrb = box_to_distance(points[:, None], gt_boxes[None])  # [N, M, 4]
    if centers is None:
        centers = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2  # [M, 2]
    r = (strides * radius)[:, None, None]  # [N, 1, 1]
    region = torch.cat(
        (
            torch.maximum(centers[None] - r, gt_boxes[None, :, :2]),
            torch.minimum(centers[None] + r, gt_boxes[None, :, 2:]),
        ),
        dim=-1,
    )  # [N, M, 4] centre region clipped to the box
    p = points[:, None, :]
    inside = torch.cat((p - region[..., :2], region[..., 2:] - p), dim=-1).min(-1).values > 0
    reach = ltrb.max(-1).values
    in_range = (reach >= ranges[:, :1]) & (reach <= ranges[:, 1:])
    areas = ((gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1]))[None]
    areas = areas.expand(n, m).masked_fill(~(inside & in_range), float("inf"))
    min_area, gt_index = areas.min(dim=1)
    return gt_index.masked_fill(min_area == float("inf"), -1)


def atss_assign(anchors: Tensor, counts: list[int], gt_boxes: Tensor, topk: int = 9) -> Tensor:
    """ATSS one-to-many assignment.

    anchors [N, 4] (level-major, ``counts`` per level), gt_boxes [M, 4]
    -> gt_index [N] (long, -1 for background).
    """
    n, m = anchors.shape[0], gt_boxes.shape[0]
    if m == 0:
        return torch.full((n,), -1, dtype=torch.long, device=anchors.device)
    ious = box_iou(anchors, gt_boxes)  # [N, M]
    anchor_centers = (anchors[:, :2] + anchors[:, 2:]) / 2
    gt_centers = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    dist = torch.cdist(anchor_centers, gt_centers)  # [N, M]
    candidates, start = [], 0
    for count in counts:
        k = min(topk, count)
        candidates.append(dist[start : start + count].topk(k, dim=0, largest=False).indices + start)
        start += count
    cand = torch.cat(candidates)  # [K, M] anchor indices
    cand_iou = ious.gather(0, cand)  # [K, M]
    threshold = cand_iou.mean(0) + cand_iou.std(0)
    ltrb = box_to_distance(anchor_centers[:, None], gt_boxes[None]).gather(
        0, cand[..., None].expand(-1, -1, 4)
    )  # [K, M, 4]
    positive = (cand_iou >= threshold) & (ltrb.min(-1).values > 0.01)
    best = torch.full_like(ious, -1.0)
    cols = torch.arange(m, device=anchors.device).expand_as(cand)
    best[cand[positive], cols[positive]] = cand_iou[positive]
    best_iou, gt_index = best.max(dim=1)
    return gt_index.masked_fill(best_iou < 0, -1)
