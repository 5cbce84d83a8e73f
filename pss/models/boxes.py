"""Box geometry: prior points and anchors, box coders, IoU, center-ness.

Boxes are absolute pixel coordinates (x1, y1, x2, y2). Locations are flattened
over levels P3..P7, level-major and row-major inside a level, which is the
order in which the head flattens its maps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

BBOX_STDS = (0.1, 0.1, 0.2, 0.2)  # ATSS delta coder
MAX_LOG_RATIO = math.log(1000.0 / 16)


@dataclass
class Priors:
    """The locations of one feature pyramid.

    points:  [N, 2] centres (x, y) = ((col + 0.5) * stride, (row + 0.5) * stride)
    strides: [N] stride of each location's level
    levels:  [N] level index 0..4 (P3..P7)
    counts:  locations per level, sum(counts) == N
    """

    points: Tensor
    strides: Tensor
    levels: Tensor
    counts: list[int]

    def anchors(self, scale: float) -> Tensor:
        """[N, 4] square anchors of side ``scale * stride`` centred on the points."""
        half = (scale * self.strides / 2).unsqueeze(1)
        return torch.cat((self.points - half, self.points + half), dim=1)


def make_priors(sizes: list[tuple[int, int]], strides: tuple[int, ...], device) -> Priors:
    points, stride_list, levels = [], [], []
    for level, ((h, w), s) in enumerate(zip(sizes, strides)):
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * s
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * s
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack((xx.reshape(-1), yy.reshape(-1)), dim=1))
        stride_list.append(torch.full((h * w,), float(s), device=device))
        levels.append(torch.full((h * w,), level, device=device, dtype=torch.long))
    return Priors(
        torch.cat(points), torch.cat(stride_list), torch.cat(levels), [h * w for h, w in sizes]
    )


def distance_to_box(points: Tensor, ltrb: Tensor) -> Tensor:
    """points [..., 2], distances (l, t, r, b) [..., 4] -> boxes [..., 4]."""
    return torch.cat((points - ltrb[..., :2], points + ltrb[..., 2:]), dim=-1)


def box_to_distance(points: Tensor, boxes: Tensor) -> Tensor:
    """Distances (l, t, r, b) from points [..., 2] to box sides [..., 4] (broadcasting).

    Pairwise: ``box_to_distance(points[:, None], boxes[None])`` -> [N, M, 4].
    """
    return torch.cat((points - boxes[..., :2], boxes[..., 2:] - points), dim=-1)


def decode_deltas(anchors: Tensor, deltas: Tensor) -> Tensor:
    """ATSS coder: boxes from deltas (scaled by BBOX_STDS) relative to anchors.

    anchors [..., N, 4] broadcast with deltas [..., N, 4] -> boxes [..., N, 4].
    """
    d = deltas * deltas.new_tensor(BBOX_STDS)
    aw, ah = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
    ax, ay = anchors[..., 0] + 0.5 * aw, anchors[..., 1] + 0.5 * ah
    cx, cy = ax + d[..., 0] * aw, ay + d[..., 1] * ah
    w = aw * d[..., 2].clamp(max=MAX_LOG_RATIO).exp()
    h = ah * d[..., 3].clamp(max=MAX_LOG_RATIO).exp()
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


def aligned_iou(a: Tensor, b: Tensor, eps: float = 1e-6) -> Tensor:
    """IoU of matching rows: a [..., 4], b [..., 4] -> [...]."""
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)
    return inter / (area_a + area_b - inter).clamp(min=eps)


def centerness_target(ltrb: Tensor) -> Tensor:
    """FCOS center-ness from positive distances (l, t, r, b) [..., 4] -> [...] in [0, 1]."""
    lr, tb = ltrb[..., 0::2], ltrb[..., 1::2]
    ratio = (lr.min(-1).values / lr.max(-1).values.clamp(min=1e-6)) * (
        tb.min(-1).values / tb.max(-1).values.clamp(min=1e-6)
    )
    return ratio.clamp(min=0).sqrt()
