"""Loss functions against values computed by hand on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch

from pss.models.losses import centerness_loss, focal_loss, focal_loss_on_prob, giou_loss, rank_loss


def test_focal_loss_by_hand():
    # p = sigmoid(0) = 0.5. Positive: 0.25 * 0.5^2 * ln 2; negative: 0.75 * 0.5^2 * ln 2.
    logits = torch.zeros(2)
    assert focal_loss(logits, torch.tensor([1.0, 0.0])).item() == pytest.approx(
        (0.25 + 0.75) * 0.25 * math.log(2)
    )
    # p = sigmoid(ln 4) = 0.8, positive: 0.25 * 0.2^2 * -ln 0.8
    assert focal_loss(torch.tensor([math.log(4)]), torch.tensor([1.0])).item() == pytest.approx(
        0.25 * 0.04 * -math.log(0.8)
    )


def test_focal_loss_on_probability_by_hand():
    log_p = torch.log(torch.tensor([0.2, 0.2]))
    pos = 0.25 * 0.8**2 * -math.log(0.2)
    neg = 0.75 * 0.2**2 * -math.log(0.8)
    assert focal_loss_on_prob(log_p, torch.tensor([1.0, 0.0])).item() == pytest.approx(pos + neg)


def test_focal_loss_on_probability_stays_finite_at_extremes():
    log_p = torch.tensor([-200.0, 0.0, -1e-9], requires_grad=True)
    loss = focal_loss_on_prob(log_p, torch.tensor([1.0, 0.0, 0.0]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(log_p.grad).all()


def test_giou_loss_by_hand():
    a = torch.tensor([[0.0, 0, 1, 1], [0.0, 0, 2, 2]])
    b = torch.tensor([[2.0, 0, 3, 1], [0.0, 0, 2, 2]])
    # disjoint: IoU 0, hull 3, union 2 -> GIoU = -1/3, loss 4/3; identical: 0
    assert giou_loss(a, b, torch.tensor([1.0, 1.0])).item() == pytest.approx(4 / 3)
    assert giou_loss(a, b, torch.tensor([0.5, 1.0])).item() == pytest.approx(2 / 3)
    assert giou_loss(a[:0], b[:0], torch.zeros(0)).item() == 0


def test_centerness_bce_by_hand():
    assert centerness_loss(torch.zeros(1), torch.tensor([0.3])).item() == pytest.approx(math.log(2))


def test_rank_loss_by_hand():
    prob = torch.tensor([[0.6, 0.1], [0.3, 0.2]]).log()
    pos_loc, pos_cls = torch.tensor([0]), torch.tensor([0])
    # negatives: top-2 of the other pairs = 0.3, 0.2 -> hinge 0.2 and 0.1, mean 0.15
    assert rank_loss(prob, pos_loc, pos_cls, 0.5, 2).item() == pytest.approx(0.15)
    assert rank_loss(prob, pos_loc, pos_cls, 0.5, 1).item() == pytest.approx(0.2)
    assert rank_loss(prob, pos_loc, pos_cls, 0.1, 2).item() == pytest.approx(0.0)
    # two positives (0.6 and 0.2): pairs (0.6, 0.3), (0.6, 0.1), (0.2, 0.3), (0.2, 0.1)
    two = rank_loss(prob, torch.tensor([0, 1]), torch.tensor([0, 1]), 0.5, 2)
    assert two.item() == pytest.approx((0.2 + 0.0 + 0.6 + 0.4) / 4)
    assert rank_loss(prob, pos_loc[:0], pos_cls[:0], 0.5, 2).item() == 0


def test_rank_loss_gradient_reaches_positive_and_negatives_only():
    prob = torch.tensor([[0.6, 0.1], [0.3, 0.2]], requires_grad=True)
    rank_loss(prob.log(), torch.tensor([0]), torch.tensor([0]), 0.5, 1).backward()
    assert torch.allclose(prob.grad, torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))
