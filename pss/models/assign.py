"""Label assignment, as pure functions on one image.

One-to-many (the base detectors):
  * :func:`fcos_assign`: locations inside the centre region (radius x stride)
    of a box whose largest regression distance fits the level's range; a
    location inside several boxes takes the smallest.
  * :func:`atss_assign`: per level the ``topk`` anchors closest to the box
    centre are candidates; those with IoU >= mean + std of the candidates' IoU
    and centre inside the box are positive; ties go to the highest IoU.
Both return ``gt_index`` [N]: the object each location is positive for, or -1.
Omega_j of the paper is ``{i : gt_index[i] == j}``.

One-to-one (the PSS target): :func:`match_quality` scores (location, object)
pairs and :func:`one_to_one` picks one location per object.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torchvision.ops import box_iou

from pss.models.boxes import box_to_distance


def fcos_assign(
    points: Tensor,
    strides: Tensor,
    ranges: Tensor,
    gt_boxes: Tensor,
    radius: float = 1.5,
) -> Tensor:
    """FCOS one-to-many assignment.

    points [N, 2], strides [N], ranges [N, 2] (lo, hi of each location's
    level), gt_boxes [M, 4] -> gt_index [N] (long, -1 for background).
    """
    n, m = points.shape[0], gt_boxes.shape[0]
    if m == 0:
        return torch.full((n,), -1, dtype=torch.long, device=points.device)
    ltrb = box_to_distance(points[:, None], gt_boxes[None])  # [N, M, 4]
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


def match_quality(prob: Tensor, iou: Tensor, kind: str = "mul", alpha: float = 0.8) -> Tensor:
    """Matching score Q of (location, object) pairs inside Omega (Eq. 3 of the paper).

    mul: P^(1 - alpha) * IoU^alpha;  add: (1 - alpha) * P + alpha * IoU.
    prob, iou: [P] -> [P].
    """
    if kind == "mul":
        return prob.clamp(min=0) ** (1 - alpha) * iou.clamp(min=0) ** alpha
    if kind == "add":
        return (1 - alpha) * prob + alpha * iou
    raise ValueError(f"unknown matching score '{kind}'")


def one_to_one(
    quality: Tensor, loc: Tensor, obj: Tensor, num_objects: int, solver: str = "hungarian"
) -> Tensor:
    """Pick one location per object among its Omega pairs.

    The candidate pairs are (loc[p], obj[p]) with score quality[p], p < P:
    exactly the memberships i in Omega_j. Returns selected [num_objects]
    (long): the location chosen for each object, -1 where it gets none. No
    location serves two objects.

    'hungarian' maximises first the number of objects served, then the total
    score (``scipy.optimize.linear_sum_assignment``); 'top1' takes pairs
    greedily in descending score, which is the per-object argmax whenever the
    Omega_j are disjoint (always so for FCOS and ATSS).
    """
    device = quality.device
    selected = np.full(num_objects, -1, dtype=np.int64)
    if quality.numel() == 0 or num_objects == 0:
        return torch.from_numpy(selected).to(device)
    q = quality.detach().float().cpu().numpy()
    locs = loc.cpu().numpy()
    objs = obj.cpu().numpy()
    if solver == "hungarian":
        uniq, col = np.unique(locs, return_inverse=True)
        member = np.zeros((num_objects, len(uniq)), dtype=bool)
        member[objs, col] = True
        # A served object is worth more than any total of scores in [0, 1].
        gain = np.zeros(member.shape)
        gain[objs, col] = q + num_objects + 1.0
        rows, cols = linear_sum_assignment(gain, maximize=True)
        keep = member[rows, cols]
        selected[rows[keep]] = uniq[cols[keep]]
    elif solver == "top1":
        taken: set[int] = set()
        for p in np.argsort(-q, kind="stable"):
            if selected[objs[p]] < 0 and locs[p] not in taken:
                selected[objs[p]] = locs[p]
                taken.add(int(locs[p]))
    else:
        raise ValueError(f"unknown one-to-one solver '{solver}'")
    return torch.from_numpy(selected).to(device)
