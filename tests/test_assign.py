"""One-to-many (FCOS, ATSS) and one-to-one assignment on cases with known answers."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from pss.config import AssignConfig, LossConfig
from pss.models.assign import atss_assign, fcos_assign
from pss.models.boxes import aligned_iou, make_priors
from pss.models.losses import focal_loss_on_prob, rank_loss
from pss.models.selector import match_quality, one_to_one, one_to_one_targets, pss_losses

STRIDES = (8, 16, 32, 64, 128)
RANGES = torch.tensor([[-1.0, 64.0], [64.0, 128.0], [128.0, 256.0], [256.0, 512.0], [512.0, 1e8]])


def fcos_case(boxes: list[list[float]], size: int = 64):
    sizes = [(math.ceil(size / s), math.ceil(size / s)) for s in STRIDES]
    pri = make_priors(sizes, STRIDES, "cpu")
    gt = torch.tensor(boxes, dtype=torch.float32)
    return pri, fcos_assign(pri.points, pri.strides, RANGES[pri.levels], gt, 1.5)


def test_fcos_center_region_and_range():
    # Box [0, 40]^2, centre (20, 20), radius 1.5 * 8 = 12: region (8, 32)^2 clipped to the
    # box. On P3 (points 4, 12, 20, ...) that is x, y in {12, 20, 28}: 9 locations. On P4
    # the largest distance (>= 32) is below P4's range [64, 128]: none there.
    pri, gt_index = fcos_case([[0, 0, 40, 40]])
    pos = pri.points[gt_index == 0]
    assert sorted({tuple(p.tolist()) for p in pos}) == [
        (x, y) for x in (12.0, 20.0, 28.0) for y in (12.0, 20.0, 28.0)
    ]
    assert (pri.levels[gt_index == 0] == 0).all()


def test_fcos_ambiguous_location_goes_to_smaller_box():
    # The small box's centre region (20, 36)^2 holds only (28, 28) on P3.
    pri, gt_index = fcos_case([[0, 0, 40, 40], [20, 20, 36, 36]])
    shared = (pri.points == torch.tensor([28.0, 28.0])).all(1) & (pri.levels == 0)
    assert gt_index[shared].item() == 1  # area 256 < 1600
    assert (gt_index == 0).sum() == 8  # the large box keeps its other locations


def test_fcos_large_box_goes_to_coarse_level():
    # A 200 px box: the largest distance from points near its centre is 100-148: P4's
    # range [64, 128] and P5's [128, 256] (P5 points within 48 px, e.g. 144 -> 144).
    pri, gt_index = fcos_case([[0, 0, 200, 200]], size=256)
    assert set(pri.levels[gt_index == 0].tolist()) == {1, 2}
    on_p5 = (gt_index == 0) & (pri.levels == 2)
    # P5 points in the region (52, 148)^2 are 80, 112, 144; only those with a coordinate
    # of 144 reach beyond 128.
    expected = {(144.0, 80.0), (144.0, 112.0), (144.0, 144.0), (80.0, 144.0), (112.0, 144.0)}
    assert {tuple(p.tolist()) for p in pri.points[on_p5]} == expected


def test_fcos_no_objects():
    pri, gt_index = fcos_case([])
    assert (gt_index == -1).all() and gt_index.shape == (pri.points.shape[0],)


def test_atss_mean_plus_std_threshold_by_hand():
    anchors = torch.tensor([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], dtype=torch.float32)
    gt = torch.tensor([[0, 0, 10, 10]], dtype=torch.float32)
    # IoUs 1, 1/3, 0: mean 4/9, unbiased std 0.509 -> threshold 0.954: only anchor 0.
    ious = torch.tensor([1.0, 1 / 3, 0.0])
    assert ious.mean() + ious.std() == pytest.approx(0.9537, abs=1e-3)
    assert atss_assign(anchors, [3], gt, topk=3).tolist() == [0, -1, -1]


def test_atss_centre_must_be_inside_box():
    # Anchor 0 has the highest IoU (1/3) but its centre (10, 5) lies on the box edge;
    # the two large anchors (IoU 1/4, centres inside) are below mean + std = 0.326.
    anchors = torch.tensor([[5, 0, 15, 10], [-5, -5, 15, 15], [-4, -5, 16, 15]]).float()
    gt = torch.tensor([[0, 0, 10, 10]], dtype=torch.float32)
    ious = torch.tensor([1 / 3, 0.25, 0.25])
    assert 0.25 < (ious.mean() + ious.std()).item() < 1 / 3
    assert atss_assign(anchors, [3], gt, topk=3).tolist() == [-1, -1, -1]


def test_atss_candidates_are_the_topk_closest_per_level_and_highest_iou_wins():
    pri = make_priors([(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)], STRIDES, "cpu")
    anchors = pri.anchors(8.0)
    gt = torch.tensor([[10, 10, 60, 60], [14, 14, 58, 62]], dtype=torch.float32)
    gt_index = atss_assign(anchors, pri.counts, gt, topk=3)
    positive = torch.nonzero(gt_index >= 0).squeeze(1)
    assert positive.numel() > 0
    ious = box_iou(anchors, gt)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    gt_centres = (gt[:, :2] + gt[:, 2:]) / 2
    for i in positive.tolist():
        j = int(gt_index[i])
        level = pri.levels == pri.levels[i]
        dist = (centres - gt_centres[j]).norm(dim=1).masked_fill(~level, float("inf"))
        assert dist[i] <= dist.topk(3, largest=False).values[-1]  # among the 3 closest (ties)
        assert (gt[j, :2] < centres[i]).all() and (centres[i] < gt[j, 2:]).all()
    # Positives for each box alone; an anchor positive for both goes to the higher IoU.
    alone = [atss_assign(anchors, pri.counts, gt[k : k + 1], topk=3) == 0 for k in range(2)]
    assert ((gt_index >= 0) == (alone[0] | alone[1])).all()
    both = alone[0] & alone[1]
    assert both.any()
    assert (gt_index[both] == ious[both].argmax(1)).all()


def test_match_quality_mul_and_add():
    p, iou = torch.tensor([0.25]), torch.tensor([0.5])
    assert match_quality(p, iou, "mul", 0.8).item() == pytest.approx(0.25**0.2 * 0.5**0.8)
    assert match_quality(p, iou, "add", 0.8).item() == pytest.approx(0.2 * 0.25 + 0.8 * 0.5)
    assert match_quality(p, iou, "mul", 0.0).item() == pytest.approx(0.25)


def pairs(table: dict[tuple[int, int], float]):
    items = sorted(table.items())
    q = torch.tensor([v for _, v in items])
    loc = torch.tensor([i for (i, _), _ in items])
    obj = torch.tensor([j for (_, j), _ in items])
    return q, loc, obj


def test_one_to_one_hand_case_hungarian_beats_greedy():
    # Omega_0 = {0, 1}, Omega_1 = {1, 2}: greedy takes (1, 0) = 0.9 and leaves object 1
    # with location 2 (total 1.0); the optimum is 0 -> 0, 1 -> 1 (total 1.3).
    q, loc, obj = pairs({(0, 0): 0.5, (1, 0): 0.9, (1, 1): 0.8, (2, 1): 0.1})
    assert one_to_one(q, loc, obj, 2, "hungarian").tolist() == [0, 1]
    assert one_to_one(q, loc, obj, 2, "top1").tolist() == [1, 2]


def test_one_to_one_disjoint_omegas_is_argmax():
    q, loc, obj = pairs({(3, 0): 0.2, (4, 0): 0.7, (5, 1): 0.6, (6, 1): 0.1})
    for solver in ("hungarian", "top1"):
        assert one_to_one(q, loc, obj, 3, solver).tolist() == [4, 5, -1]  # object 2: empty Omega


def test_one_to_one_zero_scores_still_serve_every_object():
    q, loc, obj = pairs({(0, 0): 0.0, (1, 0): 0.0, (1, 1): 0.0})
    assert one_to_one(q, loc, obj, 2, "hungarian").tolist() == [0, 1]


def test_one_to_one_infeasible_serves_as_many_as_possible():
    q, loc, obj = pairs({(5, 0): 0.3, (5, 1): 0.9})
    chosen = one_to_one(q, loc, obj, 2, "hungarian").tolist()
    assert sorted(chosen) == [-1, 5] and chosen[1] == 5


def brute_force(q: np.ndarray, omega: np.ndarray) -> float:
    """Best total over assignments giving each object one distinct location in its Omega."""
    m, n = omega.shape
    best = -1.0
    for choice in itertools.product(*[np.flatnonzero(omega[j]) for j in range(m)]):
        if len(set(choice)) == m:
            best = max(best, sum(q[j, i] for j, i in enumerate(choice)))
    return best


def random_problem(seed: int, private: bool):
    """m objects, n >= m locations, random Omegas that admit a perfect matching.

    With ``private`` each object owns one location no other Omega holds, so a greedy
    pass serves every object too and the totals compare like for like.
    """
    rng = np.random.default_rng(seed)
    m = int(rng.integers(1, 5))
    n = m + int(rng.integers(0, 4))
    omega = rng.random((m, n)) < 0.5
    own = rng.permutation(n)[:m]
    if private:
        omega[:, own] = False
    omega[np.arange(m), own] = True
    q = np.round(rng.random((m, n)), 3) * omega
    obj, loc = np.nonzero(omega)
    return q, omega, (torch.tensor(q[obj, loc]), torch.tensor(loc), torch.tensor(obj), m)


def check_matching(chosen: np.ndarray, omega: np.ndarray) -> None:
    served = chosen >= 0
    assert len(set(chosen[served].tolist())) == served.sum(), "a location serves two objects"
    assert all(omega[j, chosen[j]] for j in np.flatnonzero(served)), "a location outside Omega"


def total(q: np.ndarray, chosen: np.ndarray) -> float:
    return float(sum(q[j, i] for j, i in enumerate(chosen) if i >= 0))


@pytest.mark.parametrize("seed", range(60))
def test_hungarian_random_problems_match_brute_force(seed: int):
    q, omega, args = random_problem(seed, private=False)
    chosen = one_to_one(*args, "hungarian").numpy()
    check_matching(chosen, omega)
    assert (chosen >= 0).all(), "an object with a non-empty Omega got no location"
    assert total(q, chosen) == pytest.approx(brute_force(q, omega))


@pytest.mark.parametrize("seed", range(60))
def test_hungarian_never_below_top1(seed: int):
    q, omega, args = random_problem(seed, private=True)
    hungarian = one_to_one(*args, "hungarian").numpy()
    top1 = one_to_one(*args, "top1").numpy()
    for chosen in (hungarian, top1):
        check_matching(chosen, omega)
        assert (chosen >= 0).all()
    assert total(q, hungarian) >= total(q, top1) - 1e-9
    assert total(q, hungarian) == pytest.approx(brute_force(q, omega))


def per_image_targets(log_p, boxes, targets, omega, cfg):
    """The one-to-one targets image by image (what one_to_one_targets gives in one batch)."""
    pos_b, pos_i, pos_j = omega
    chosen = []
    for b, t in enumerate(targets):
        mine = pos_b == b
        locs, objs = pos_i[mine], pos_j[mine]
        prob = log_p[b, locs, t["labels"][objs]].exp()
        quality = match_quality(prob, aligned_iou(boxes[b, locs], t["boxes"][objs]), cfg.match)
        chosen.append(one_to_one(quality, locs, objs, len(t["labels"]), cfg.solver))
    return chosen


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("solver", ["hungarian", "top1"])
def test_batched_targets_equal_image_by_image(seed: int, solver: str):
    # Images with and without objects, shared and private locations, a NaN score now and
    # then, pairs in no particular image order.
    g = torch.Generator().manual_seed(seed)
    batch, n, classes = 3, 40, 5
    log_p = -torch.rand(batch, n, classes, generator=g) * 4
    if seed % 3 == 0:
        log_p[0, 3] = float("nan")
    xy = torch.rand(batch, n, 2, generator=g) * 50
    boxes = torch.cat((xy, xy + 5 + torch.rand(batch, n, 2, generator=g) * 30), -1)
    targets, pairs = [], []
    for b in range(batch):
        m = 0 if (seed + b) % 4 == 0 else int(torch.randint(1, 6, (), generator=g))
        xy = torch.rand(m, 2, generator=g) * 50
        gt = torch.cat((xy, xy + 5 + torch.rand(m, 2, generator=g) * 30), -1)
        targets.append({"boxes": gt, "labels": torch.randint(0, classes, (m,), generator=g)})
        for j in range(m):
            for i in torch.randperm(n, generator=g)[: int(torch.randint(0, 8, (), generator=g))]:
                pairs.append((b, int(i), j))
    order = torch.randperm(len(pairs), generator=g).tolist()
    omega = tuple(torch.tensor([pairs[p][k] for p in order], dtype=torch.long) for k in range(3))
    cfg = AssignConfig(solver=solver)
    batched = one_to_one_targets(log_p, boxes, targets, omega, cfg)
    reference = per_image_targets(log_p, boxes, targets, omega, cfg)
    assert [c.tolist() for c in batched] == [r.tolist() for r in reference]
    assert [len(c) for c in batched] == [len(t["labels"]) for t in targets]


def test_batched_targets_without_candidates():
    targets = [{"boxes": torch.zeros(2, 4), "labels": torch.zeros(2, dtype=torch.long)}]
    empty = torch.zeros(0, dtype=torch.long)
    chosen = one_to_one_targets(
        torch.zeros(1, 4, 3), torch.zeros(1, 4, 4), targets, (empty, empty, empty), AssignConfig()
    )
    assert [c.tolist() for c in chosen] == [[-1, -1]]


def per_image_pss_losses(log_p, chosen, targets, cfg):
    """L_pss and L_rank image by image (what pss_losses computes for the batch at once)."""
    target = torch.zeros_like(log_p)
    ranks, num_sel = [], 0
    for b, (sel, t) in enumerate(zip(chosen, targets)):
        served = sel >= 0
        loc, cls = sel[served], t["labels"][served]
        target[b, loc, cls] = 1.0
        num_sel += len(loc)
        if len(loc):
            ranks.append(rank_loss(log_p[b], loc, cls, cfg.rank_margin, cfg.rank_negatives))
    focal = focal_loss_on_prob(log_p, target, cfg.focal_alpha, cfg.focal_gamma)
    rank = torch.stack(ranks).sum() if ranks else log_p.sum() * 0
    return {
        "loss_pss": cfg.pss_weight * focal / max(num_sel, 1),
        "loss_rank": cfg.rank_weight * rank / max(len(ranks), 1),
    }


@pytest.mark.parametrize("seed", range(10))
def test_batched_pss_losses_equal_image_by_image(seed: int):
    g = torch.Generator().manual_seed(seed)
    batch, n, classes = 3, 50, 6
    log_p = (-torch.rand(batch, n, classes, generator=g) * 5).requires_grad_()
    targets, chosen = [], []
    for _ in range(batch):
        m = int(torch.randint(0, 5, (), generator=g))  # some images without objects
        targets.append({"boxes": torch.zeros(m, 4), "labels": torch.randint(0, classes, (m,))})
        sel = torch.randperm(n, generator=g)[:m]
        sel[torch.rand(m, generator=g) < 0.3] = -1  # objects left without a location
        chosen.append(sel)
    cfg = LossConfig(rank_weight=0.25)
    batched = pss_losses(log_p, chosen, targets, cfg)
    reference = per_image_pss_losses(log_p, chosen, targets, cfg)
    assert batched.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.allclose(batched[key], value, rtol=1e-6, atol=0), key
    grads = [torch.autograd.grad(sum(x.values()), log_p)[0] for x in (batched, reference)]
    assert torch.allclose(*grads, rtol=1e-6, atol=1e-12)
