"""GFocalV2 (Li et al., "Generalized Focal Loss V2", CVPR 2021): its head and its losses.

The head is the dense head of FCOS / ATSS with two changes:

* box regression is a *distribution*: each side (l, t, r, b) gets ``REG_MAX + 1``
  logits over the distances 0, 1, ..., REG_MAX (in strides); the distance is the
  distribution's mean (:func:`integral`);
* the per-location quality is the distribution-guided quality predictor (DGQP):
  the top-``DGQP_TOPK`` probabilities of each side's distribution and their mean
  (4 x 5 = 20 numbers) -> 1x1 conv (``DGQP_CHANNELS``) -> ReLU -> 1x1 conv -> sigmoid.
  The classification score is sigma(s_i(c)) * quality_i (the joint score).

:class:`GFocalHead` returns :class:`pss.models.heads.HeadOutputs` with ``reg`` the
distribution logits [B, N, 4 (REG_MAX + 1)] and ``ctr`` the DGQP's logit (before its
sigmoid), so that everything downstream of the head is shared with FCOS / ATSS: the
scores sigma(s) sigma(ctr) [sigma(pss)] of :mod:`pss.models.decode`, and the PSS
probability P_i(c) = sigma(pss_i) sigma(s_i(c)) sigma(q_i) of :mod:`pss.models.selector`.

Losses (:func:`gfocal_losses`, on the one-to-many positives of ATSS):

* quality focal loss on the joint score against IoU(predicted box, its object) at the
  object's class, 0 elsewhere, / #positives;
* GIoU of the positives' boxes x ``giou_weight``, and distribution focal loss on the
  side distances (in strides) x ``DFL_WEIGHT`` / 4, each weighted by the positive's
  highest joint score (detached) and divided by the sum of those weights (at least 1).

The architecture constants are GFocalV2's (its configs ``gfocal_*_ms2x.py``: reg_max 16,
reg_topk 4, reg_channels 64, add_mean, DFL weight 0.25, QFL beta 2 = ``loss.focal_gamma``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pss.config import LossConfig, ModelConfig
from pss.dist import reduce_mean
from pss.models import losses
from pss.models.assign import Positives
from pss.models.boxes import Priors, aligned_iou, box_to_distance
from pss.models.heads import DenseHead, HeadOutputs

REG_MAX = 16  # distances 0..REG_MAX strides: REG_MAX + 1 bins a side
DGQP_TOPK = 4  # top-k probabilities of each side's distribution fed to the DGQP
DGQP_CHANNELS = 64  # hidden width of the DGQP
DFL_WEIGHT = 0.25


# ------------------------------------------------------------------------ box coder


def integral(reg: Tensor, reg_max: int = REG_MAX) -> Tensor:
    """Distances (l, t, r, b) in strides [..., 4]: the mean of each side's distribution.

    reg [..., 4 (reg_max + 1)] logits, side-major (side k's bins are
    ``reg[..., k (reg_max + 1) : (k + 1)(reg_max + 1)]``).
    """
    prob = reg.float().unflatten(-1, (4, reg_max + 1)).softmax(dim=-1)
    bins = torch.arange(reg_max + 1, dtype=prob.dtype, device=prob.device)
    return prob @ bins


# ------------------------------------------------------------------------------ DGQP


def dgqp_statistics(reg: Tensor, topk: int = DGQP_TOPK, reg_max: int = REG_MAX) -> Tensor:
    """The DGQP's input: per side the ``topk`` largest bin probabilities and their mean.

    reg [B, 4 (reg_max + 1), H, W] logits -> [B, 4 (topk + 1), H, W] (side-major).
    """
    b, _, h, w = reg.shape
    prob = reg.reshape(b, 4, reg_max + 1, h, w).softmax(dim=2)
    top = prob.topk(topk, dim=2).values
    return torch.cat((top, top.mean(dim=2, keepdim=True)), dim=2).reshape(b, -1, h, w)


class DGQP(nn.Module):
    """Distribution-guided quality predictor: statistics -> 1x1 conv -> ReLU -> 1x1 conv.

    Returns the quality *logit* [B, 1, H, W]; the quality is its sigmoid.
    """

    def __init__(self, topk: int = DGQP_TOPK, channels: int = DGQP_CHANNELS) -> None:
        super().__init__()
        self.topk = topk
        self.hidden = nn.Conv2d(4 * (topk + 1), channels, 1)
        self.out = nn.Conv2d(channels, 1, 1)
        for conv in (self.hidden, self.out):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, reg: Tensor) -> Tensor:
        stats = dgqp_statistics(reg.float(), self.topk)
        return self.out(F.relu(self.hidden(stats.to(self.hidden.weight.dtype))))


# ------------------------------------------------------------------------------ head


class GFocalHead(DenseHead):
    """GFocalV2's head (+ the PSS head for ``gfocalv2_pss``): FCOS / ATSS's towers and
    classifier, ``bbox_pred`` [4 (REG_MAX + 1)] (x the level's scale), no center-ness
    branch; the quality logits are the DGQP's on the box distribution. The PSS head
    (``model.pss``) sits on the towers as for FCOS / ATSS."""

    def __init__(self, cfg: ModelConfig, num_levels: int = 5) -> None:
        super().__init__(cfg, num_levels, box_channels=4 * (REG_MAX + 1), centerness=False)
        self.quality = DGQP()

    def quality_logits(self, reg_feat: Tensor, box: Tensor) -> Tensor:
        return self.quality(box)


# ---------------------------------------------------------------------------- losses


def quality_focal_loss(log_score: Tensor, target: Tensor, beta: float = 2.0) -> Tensor:
    """Quality focal loss on a score p given as log p, summed.

    QFL(p, y) = -|y - p|^beta (y log p + (1 - y) log(1 - p)); y in [0, 1] is the IoU
    at the object's class of a positive and 0 elsewhere. log_score, target: same shape.
    Taking log p (a sum of log-sigmoids for the joint score) keeps it finite where p
    is tiny.
    """
    log_p = log_score.float().clamp(max=0)
    p = log_p.exp()
    log_not_p = losses.log_complement(log_p)
    ce = -(target * log_p + (1 - target) * log_not_p)
    return ((target - p).abs() ** beta * ce).sum()


def distribution_focal_loss(reg: Tensor, target: Tensor, reg_max: int = REG_MAX) -> Tensor:
    """Distribution focal loss of each side [P, 4] (not reduced).

    reg [P, 4 (reg_max + 1)] logits; target [P, 4] distances in strides, clamped to
    [0, reg_max - 0.1] as GFocal's own code and mmdet's (``DistancePointBBoxCoder``).
    DFL = -((y_r - y) log S_l + (y - y_l) log S_r), y_l = floor(y), y_r = y_l + 1, S the
    softmax over the side's bins.
    """
    logits = reg.float().unflatten(-1, (4, reg_max + 1))
    y = target.float().clamp(0, reg_max - 0.1)
    left = y.floor().long()
    log_s = logits.log_softmax(dim=-1)
    log_left = log_s.gather(-1, left[..., None]).squeeze(-1)
    log_right = log_s.gather(-1, (left + 1)[..., None]).squeeze(-1)
    return -((left + 1 - y) * log_left + (y - left) * log_right)


def gfocal_losses(
    out: HeadOutputs,
    boxes: Tensor,
    priors: Priors,
    positives: Positives,
    cfg: LossConfig,
) -> dict[str, Tensor]:
    """GFocalV2's one-to-many losses: loss_cls (QFL), loss_box (GIoU), loss_dfl.

    out: float32 head outputs (B images, N locations, C classes); boxes [B, N, 4]
    decoded predictions; priors: the N locations; positives: ATSS's. Normalisers count
    the whole global batch under DDP (:func:`pss.dist.reduce_mean`).
    """
    pos_b, pos_i, target_boxes = positives.img, positives.loc, positives.boxes
    log_score = F.logsigmoid(out.cls) + F.logsigmoid(out.ctr)[..., None]  # [B, N, C]
    pred = boxes[pos_b, pos_i]
    iou = aligned_iou(pred.detach(), target_boxes).clamp(min=0)
    cls_target = torch.zeros_like(log_score)
    cls_target[pos_b, pos_i, positives.labels] = iou
    num_pos = reduce_mean(pos_b.new_tensor(pos_b.numel(), dtype=torch.float32)).clamp(min=1.0)
    result = {
        "loss_cls": quality_focal_loss(log_score, cls_target, cfg.focal_gamma) / num_pos
    }

    weight = log_score[pos_b, pos_i].detach().amax(dim=-1).exp()  # [P] highest joint score
    norm = reduce_mean(weight.sum()).clamp(min=1.0)
    result["loss_box"] = cfg.giou_weight * losses.giou_loss(pred, target_boxes, weight) / norm
    sides = box_to_distance(priors.points[pos_i], target_boxes) / priors.strides[pos_i, None]
    dfl = distribution_focal_loss(out.reg[pos_b, pos_i], sides)  # [P, 4]
    result["loss_dfl"] = DFL_WEIGHT * (dfl * weight[:, None]).sum() / 4 / norm
    return result
