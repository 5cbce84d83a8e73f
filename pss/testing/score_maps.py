"""Synthetic detector inputs and outputs: targets, and trained-looking score maps.

A randomly initialised head is useless for timing post-processing: almost
every location sits at the prior, so either nothing or everything passes the
0.05 score threshold. :func:`realistic_outputs` builds head outputs whose
scores look like a trained FCOS_PSS's, with real duplicates for NMS to remove.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pss.models.backbone import Backbone
from pss.models.boxes import make_priors
from pss.models.heads import HeadOutputs

SCORE_THRESH = 0.05  # the nms mode's score threshold (config: inference.score_thresh)
REGRESS_BOUNDS = (0.0, 64.0, 128.0, 256.0, 512.0, float("inf"))  # FCOS levels P3-P7


def random_boxes(
    n: int, hw: tuple[int, int], gen: torch.Generator, min_side: float = 24.0
) -> Tensor:
    """[n, 4] xyxy boxes in an HxW image: sides log-uniform from ``min_side`` to half
    the shorter image side, aspect ratios exp(U(-0.7, 0.7))."""
    h, w = hw
    log_side = torch.empty(n).uniform_(math.log(min_side), math.log(min(h, w) / 2), generator=gen)
    side = torch.exp(log_side)
    aspect = torch.exp(torch.empty(n).uniform_(-0.7, 0.7, generator=gen))
    bw = (side * aspect.sqrt()).clamp(max=w - 2)
    bh = (side / aspect.sqrt()).clamp(max=h - 2)
    x1 = torch.rand(n, generator=gen) * (w - bw)
    y1 = torch.rand(n, generator=gen) * (h - bh)
    return torch.stack((x1, y1, x1 + bw, y1 + bh), 1)


def synthetic_targets(
    hw: tuple[int, int], batch: int, boxes: int, num_classes: int, device, seed: int
) -> list[dict[str, Tensor]]:
    """``boxes`` random boxes (see :func:`random_boxes`) and labels per image, in pixels."""
    gen = torch.Generator().manual_seed(seed + 1)
    targets = []
    for _ in range(batch):
        xyxy = random_boxes(boxes, hw, gen)
        labels = torch.randint(0, num_classes, (boxes,), generator=gen)
        targets.append({"boxes": xyxy.to(device), "labels": labels.to(device)})
    return targets


def toy_targets() -> list[dict[str, Tensor]]:
    """Two images' targets, 3 objects and 1, for detectors of 3 classes (loss tests)."""
    return [
        {
            "boxes": torch.tensor([[10.0, 20, 100, 120], [50, 60, 200, 230], [5, 5, 30, 40]]),
            "labels": torch.tensor([0, 2, 1]),
        },
        {"boxes": torch.tensor([[30.0, 30, 180, 150]]), "labels": torch.tensor([1])},
    ]


def _logit(p: Tensor) -> Tensor:
    p = p.clamp(1e-6, 1 - 1e-6)
    return torch.log(p) - torch.log1p(-p)


def realistic_outputs(
    sizes: list[tuple[int, int]],
    hw: tuple[int, int],
    batch: int,
    num_classes: int,
    seed: int,
    objects: int,
    clutter: int,
) -> tuple[HeadOutputs, dict]:
    """Head outputs [B, N, ...] on feature maps ``sizes`` whose scores look like a trained
    FCOS_PSS's, and statistics of what passes the score threshold.

    Background: class logits ~ N(-8, 1) (sigma ~ 3e-4), center-ness logits
    ~ N(-1, 0.5), PSS logits ~ N(-7, 1), boxes of 1-3 strides per side. For each
    of ``objects`` objects per image (:func:`random_boxes`; random class): its
    FPN level by the FCOS regress ranges; the locations inside the box within 3
    strides of its centre on that level (within 2 strides on the next coarser
    and finer levels, at 0.5x and 0.35x the score) get class probability
    peak * exp(-d^2 / 2.9) (d in strides, peak ~ U(0.5, 0.95)), center-ness
    0.4 + 0.55 exp(-d^2 / 2), two confusable classes at 0.1-0.35 of that, boxes
    = the object's box with 10 % jitter per side, and PSS ~ N(-4, 1) (the
    one-to-many duplicates the selector learned to suppress); the best of them
    on the object's level gets PSS +3. ``clutter`` random (location, class)
    pairs get a base score U(0.05, 0.2).
    """
    gen = torch.Generator().manual_seed(seed + 2)
    strides = Backbone.strides
    priors = make_priors(sizes, strides, "cpu")
    counts = priors.counts
    starts = [sum(counts[:i]) for i in range(len(counts))]
    n, c = priors.points.shape[0], num_classes
    cls = torch.randn(batch, n, c, generator=gen) - 8.0
    ctr = torch.randn(batch, n, generator=gen) * 0.5 - 1.0
    pss = torch.randn(batch, n, generator=gen) - 7.0
    reg = torch.rand(batch, n, 4, generator=gen) * 2.5 + 0.5
    for b in range(batch):
        boxes = random_boxes(objects, hw, gen)
        labels = torch.randint(0, c, (objects,), generator=gen)
        for box, label in zip(boxes, labels):
            centre = (box[:2] + box[2:]) / 2
            reach = float(max(box[2] - box[0], box[3] - box[1])) / 2
            bounds = REGRESS_BOUNDS
            level = next(i for i in range(5) if bounds[i] <= reach < bounds[i + 1])
            peak = float(torch.empty(()).uniform_(0.5, 0.95, generator=gen))
            confusers = torch.randint(0, c, (2,), generator=gen)
            best, best_score = -1, 0.0
            rings = [(level, 3.0, 1.0)]  # (level, radius in strides, score factor)
            if level < 4:
                rings.append((level + 1, 2.0, 0.5))
            if level > 0:
                rings.append((level - 1, 2.0, 0.35))
            for lvl, radius, factor in rings:
                sl = slice(starts[lvl], starts[lvl] + counts[lvl])
                pts = priors.points[sl]
                d = (pts - centre).norm(dim=1) / strides[lvl]
                inside = (pts > box[:2]).all(1) & (pts < box[2:]).all(1)
                idx = torch.nonzero((d <= radius) & inside).squeeze(1)
                if idx.numel() == 0:
                    idx = d.argmin()[None]
                loc = idx + starts[lvl]
                dd = d[idx]
                p_cls = factor * peak * torch.exp(-(dd**2) / 2.9)
                p_ctr = 0.4 + 0.55 * torch.exp(-(dd**2) / 2)
                cls[b, loc, label] = _logit(p_cls)
                for conf in confusers:
                    ratio = torch.empty(len(loc)).uniform_(0.1, 0.35, generator=gen)
                    cls[b, loc, conf] = _logit(p_cls * ratio)
                ctr[b, loc] = _logit(p_ctr)
                point = priors.points[loc]
                ltrb = torch.cat((point - box[:2], box[2:] - point), 1).clamp(min=1.0)
                jitter = 1 + 0.1 * torch.randn(len(loc), 4, generator=gen)
                reg[b, loc] = ltrb * jitter / strides[lvl]
                pss[b, loc] = torch.randn(len(loc), generator=gen) - 4.0
                score = p_cls * p_ctr
                k = int(score.argmax())
                if lvl == level and float(score[k]) > best_score:
                    best, best_score = int(loc[k]), float(score[k])
            pss[b, best] = 3.0
        loc = torch.randint(0, n, (clutter,), generator=gen)
        lab = torch.randint(0, c, (clutter,), generator=gen)
        base = torch.empty(clutter).uniform_(SCORE_THRESH * 1.01, 0.2, generator=gen)
        ctr[b, loc] = 0.0  # center-ness 0.5
        cls[b, loc, lab] = _logit(base / 0.5)
    out = HeadOutputs(cls=cls, reg=reg, ctr=ctr, pss=pss, sizes=list(sizes))
    base = torch.sigmoid(cls) * torch.sigmoid(ctr)[..., None]
    passing = base > SCORE_THRESH  # [B, N, C]
    per_level = [int(passing[:, s : s + k].sum()) / batch for s, k in zip(starts, counts)]
    e2e = base * torch.sigmoid(pss)[..., None]
    stats = {
        "locations_per_level": counts,
        "pairs_per_image": n * c,
        "nms_candidates_per_level": per_level,  # per image
        "nms_candidates": sum(per_level),
        "e2e_pairs_above_thresh": int((e2e > SCORE_THRESH).sum()) / batch,
        "objects": objects,
        "clutter": clutter,
    }
    return out, stats


def to_device(out: HeadOutputs, device: torch.device) -> HeadOutputs:
    return HeadOutputs(
        cls=out.cls.to(device),
        reg=out.reg.to(device),
        ctr=None if out.ctr is None else out.ctr.to(device),
        pss=None if out.pss is None else out.pss.to(device),
        sizes=out.sizes,
    )
