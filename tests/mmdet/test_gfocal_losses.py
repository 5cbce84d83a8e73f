"""GFocalV2's losses (pss.models.gfocal) against MMDetection 3.3's QualityFocalLoss and
DistributionFocalLoss (mmdet has GFL v1's losses; v2 adds only the quality predictor)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from mmdet.models.losses import DistributionFocalLoss, QualityFocalLoss

from pss.models.gfocal import REG_MAX, distribution_focal_loss, quality_focal_loss


def test_quality_focal_loss_on_the_joint_probability_is_mmdets():
    """GFocalV2 trains QFL on sigma(s) x quality: mmdet's QualityFocalLoss with
    activated=True (probabilities in), labels and IoU scores as a tuple."""
    gen = torch.Generator().manual_seed(0)
    n, c = 200, 5
    cls, q = torch.randn(n, c, generator=gen) * 2, torch.randn(n, generator=gen)
    labels = torch.randint(0, c, (n,), generator=gen)
    labels[torch.rand(n, generator=gen) < 0.7] = c  # background
    iou = torch.rand(n, generator=gen)
    joint = cls.sigmoid() * q.sigmoid()[:, None]
    theirs = QualityFocalLoss(use_sigmoid=True, activated=True, beta=2.0, reduction="sum")(
        joint, (labels, iou)
    )
    target = torch.zeros(n, c)
    pos = labels < c
    target[pos, labels[pos]] = iou[pos]
    ours = quality_focal_loss(F.logsigmoid(cls) + F.logsigmoid(q)[:, None], target, 2.0)
    assert torch.allclose(ours, theirs, rtol=1e-4)


def test_distribution_focal_loss_is_mmdets():
    gen = torch.Generator().manual_seed(1)
    p = 50
    reg = torch.randn(p, 4 * (REG_MAX + 1), generator=gen) * 3
    # targets as mmdet's DistancePointBBoxCoder gives them: clamped to REG_MAX - 0.1
    target = torch.rand(p, 4, generator=gen) * (REG_MAX - 0.1)
    theirs = DistributionFocalLoss(reduction="none")(
        reg.reshape(-1, REG_MAX + 1), target.reshape(-1)
    )
    assert torch.allclose(distribution_focal_loss(reg, target).reshape(-1), theirs, atol=1e-5)
