"""Loss functions, as pure functions on flat tensors.

All return *sums* (or, for the ranking loss, a mean over pairs); the detector
divides by the normalisers of docs/method.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import generalized_box_iou_loss


def focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Sigmoid focal loss on logits, summed. logits, targets: same shape."""
    logits = logits.float()
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    weight = alpha * targets + (1 - alpha) * (1 - targets)
    return (weight * (1 - p_t) ** gamma * ce).sum()


def log_complement(log_p: Tensor) -> Tensor:
    """log(1 - p) from log p (any shape; log p <= 0), floored at log 1e-12 where p -> 1."""
    return torch.log((-torch.expm1(log_p)).clamp(min=1e-12))


def focal_loss_on_prob(
    log_prob: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """Focal loss on a probability p given as log p (L_pss), summed.

    FL = -alpha t (1 - p)^gamma log p - (1 - alpha)(1 - t) p^gamma log(1 - p).
    Taking log p (a sum of log-sigmoids) keeps it finite where p is tiny.
    """
    log_prob = log_prob.float().clamp(max=0)
    p = log_prob.exp()
    log_not_p = log_complement(log_prob)
    pos = -alpha * targets * (1 - p) ** gamma * log_prob
    neg = -(1 - alpha) * (1 - targets) * p**gamma * log_not_p
    return (pos + neg).sum()


def giou_loss(pred: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Weighted GIoU loss, summed. pred, target [P, 4] (x1, y1, x2, y2), weight [P]."""
    if pred.numel() == 0:
        return pred.sum() * 0
    return (generalized_box_iou_loss(pred.float(), target.float()) * weight).sum()


def centerness_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Binary cross-entropy of center-ness logits [P] against targets [P], summed."""
    return F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="sum")


def rank_loss(
    log_prob: Tensor, pos_loc: Tensor, pos_cls: Tensor, margin: float, num_neg: int
) -> Tensor:
    """L_rank of Eq. 2 for one image.

    log_prob [N, C]: log P_i(c) of every (location, class) pair. Positives are the
    pairs (pos_loc[k], pos_cls[k]); negatives are the ``num_neg`` highest entries
    among all other pairs. Returns the mean over positive-negative pairs of
    max(0, margin - P_pos + P_neg) (0 when there is no positive). Only the gathered
    entries are exponentiated: the top-k runs on the (monotone) log-probabilities.
    """
    if pos_loc.numel() == 0:
        return log_prob.sum() * 0
    flat = log_prob.reshape(-1)
    pos_idx = pos_loc * log_prob.shape[1] + pos_cls
    k = min(num_neg, flat.numel() - pos_idx.numel())
    if k <= 0:
        return log_prob.sum() * 0
    masked = flat.detach().clone()
    masked[pos_idx] = -float("inf")
    pos = flat[pos_idx].exp()
    neg = flat[masked.topk(k).indices].exp()
    return F.relu(margin - pos[:, None] + neg[None, :]).mean()
