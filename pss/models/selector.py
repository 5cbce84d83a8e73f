"""The positive sample selector, as functions of flat tensors: its score, target and losses.

One implementation of the method, shared by :class:`pss.models.Detector` and the
MMDetection heads of :mod:`pss.mmdet` (which hand in mmdet's tensors and mmdet's
own one-to-many positives):

    log_p = log_prob(cls, ctr, pss)                          # log P_i(c), [B, N, C]
    chosen = one_to_one_targets(log_p, boxes, targets, omega, assign_cfg)
    losses = pss_losses(log_p, chosen, targets, loss_cfg)   # loss_pss, loss_rank

The one-to-one assignment itself: :func:`match_quality` scores each (location,
object) pair of Omega, Q_ij, and :func:`one_to_one` picks one location per object
(Hungarian matching, or greedy ``top1``; :func:`solve_one_to_one` on host arrays).

Shapes: B images, N locations (level-major, row-major), C classes. ``targets`` is
one dict per image with ``boxes`` [M, 4] (x1, y1, x2, y2) and ``labels`` [M].
``omega`` = (pos_b, pos_i, pos_j), each [P]: location pos_i of image pos_b is a
one-to-many positive of object pos_j (that image's index), i.e. Omega of the paper.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from pss.config import AssignConfig, LossConfig
from pss.dist import reduce_mean
from pss.models import losses
from pss.models.boxes import aligned_iou

Omega = tuple[Tensor, Tensor, Tensor]


def log_prob(cls: Tensor, ctr: Tensor | None, pss: Tensor | None) -> Tensor:
    """log P_i(c) = log sigma(pss_i) + log sigma(s_i(c)) + log sigma(ctr_i).

    cls [B, N, C] logits; ctr, pss [B, N] logits or None (factor dropped) -> [B, N, C].
    """
    log_p = F.logsigmoid(cls.float())
    if ctr is not None:
        log_p = log_p + F.logsigmoid(ctr.float())[..., None]
    if pss is not None:
        log_p = log_p + F.logsigmoid(pss.float())[..., None]
    return log_p


@torch.no_grad()
def one_to_one_targets(
    log_p: Tensor,
    boxes: Tensor,
    targets: list[dict[str, Tensor]],
    omega: Omega,
    cfg: AssignConfig,
) -> list[Tensor]:
    """The PSS target: per image, selected [M] location of each object (-1: none).

    Candidates are Omega, scored by Q = match_quality(P_i(c_j), IoU(bhat_i, b_j)).
    log_p [B, N, C], boxes [B, N, 4] decoded predictions in input pixels.

    The scores of the whole batch are computed on log_p's device and copied to the
    host in one transfer (the solver runs there, image by image); the selections go
    back in one transfer from pinned memory that the host does not wait for. A GPU
    step waits for the device once here, not once per image.
    """
    pos_b, pos_i, pos_j = omega
    counts = [len(t["labels"]) for t in targets]
    device = log_p.device
    if pos_b.numel() == 0 or sum(counts) == 0:
        return [torch.full((m,), -1, dtype=torch.long, device=device) for m in counts]
    first = _to_device(torch.tensor([0, *counts[:-1]]).cumsum(0), device)  # [B]
    flat_j = first[pos_b] + pos_j  # [P] object index into the batch's objects
    labels = torch.cat([t["labels"] for t in targets])[flat_j]
    gt = torch.cat([t["boxes"] for t in targets])[flat_j]
    prob = log_p[pos_b, pos_i, labels].exp()
    iou = aligned_iou(boxes[pos_b, pos_i], gt)
    quality = match_quality(prob, iou, cfg.match, cfg.alpha)
    # One device-to-host copy: the scores (float32, exact in float64) and the pairs.
    host = torch.stack((quality.float().double(), pos_b.double(), pos_i.double(), pos_j.double()))
    q, b_host, i_host, j_host = host.cpu().numpy()
    q = q.astype(np.float32)
    b_host, i_host, j_host = (a.astype(np.int64) for a in (b_host, i_host, j_host))
    selected = []
    for b, m in enumerate(counts):
        mine = b_host == b
        selected.append(solve_one_to_one(q[mine], i_host[mine], j_host[mine], m, cfg.solver))
    chosen = _to_device(torch.from_numpy(np.concatenate(selected)), device)
    return list(chosen.split(counts))


def _to_device(host: Tensor, device: torch.device) -> Tensor:
    """A host tensor on ``device``; to a GPU through pinned memory, without waiting."""
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


def pss_losses(
    log_p: Tensor, chosen: list[Tensor], targets: list[dict[str, Tensor]], cfg: LossConfig
) -> dict[str, Tensor]:
    """lambda1 * L_pss and lambda2 * L_rank of one batch.

    L_pss is normalised by the number of selected locations, L_rank is the mean over
    the images that have one; under DDP both counts are those of the whole global
    batch (:func:`pss.dist.reduce_mean`, at least 1). log_p [B, N, C] (float32);
    chosen: :func:`one_to_one_targets`' answer.

    The batch's selections are gathered at once: one wait for a GPU a step (the
    number of served objects of each image), whatever the batch size.
    """
    device = log_p.device
    target = torch.zeros_like(log_p)
    sizes = [len(c) for c in chosen]
    sel = torch.cat(chosen)  # [sum M], -1: not served
    labels = torch.cat([t["labels"] for t in targets])
    image = torch.cat(
        [torch.full((m,), b, dtype=torch.long, device=device) for b, m in enumerate(sizes)]
    )
    mask = sel >= 0
    per_image = torch.stack([m.sum() for m in mask.split(sizes)]).tolist()  # the one wait
    num_sel = sum(per_image)
    # The served objects in batch order: a stable sort puts them first (no nonzero's wait).
    served = torch.argsort(mask.logical_not().to(torch.uint8), stable=True)[:num_sel]
    loc, cls, img = sel[served], labels[served], image[served]
    target[img, loc, cls] = 1.0
    selected = list(zip(loc.split(per_image), cls.split(per_image)))
    norm = reduce_mean(_scalar(num_sel, device)).clamp(min=1.0)
    result = {
        "loss_pss": cfg.pss_weight
        * losses.focal_loss_on_prob(log_p, target, cfg.focal_alpha, cfg.focal_gamma)
        / norm
    }
    if cfg.rank_weight > 0:
        ranks = [
            losses.rank_loss(log_p[b], loc, cls, cfg.rank_margin, cfg.rank_negatives)
            for b, (loc, cls) in enumerate(selected)
            if loc.numel() > 0
        ]
        rank = torch.stack(ranks).sum() if ranks else log_p.sum() * 0
        images = reduce_mean(_scalar(len(ranks), device)).clamp(min=1.0)
        result["loss_rank"] = cfg.rank_weight * rank / images
    return result


def _scalar(value: float, device: torch.device) -> Tensor:
    """A float32 0-d tensor on ``device``, filled there (no host-to-device copy)."""
    return torch.full((), float(value), dtype=torch.float32, device=device)


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
    """Pick one location per object among its Omega pairs (:func:`solve_one_to_one`).

    quality, loc, obj [P] (any device) -> selected [num_objects] (long, on quality's
    device): the location chosen for each object, -1 where it gets none.
    """
    selected = solve_one_to_one(
        quality.detach().float().cpu().numpy(),
        loc.cpu().numpy(),
        obj.cpu().numpy(),
        num_objects,
        solver,
    )
    return torch.from_numpy(selected).to(quality.device)


def solve_one_to_one(
    q: np.ndarray, locs: np.ndarray, objs: np.ndarray, num_objects: int, solver: str = "hungarian"
) -> np.ndarray:
    """Pick one location per object among its Omega pairs, on the host.

    The candidate pairs are (locs[p], objs[p]) with score q[p], p < P:
    exactly the memberships i in Omega_j. Returns selected [num_objects]
    (int64): the location chosen for each object, -1 where it gets none. No
    location serves two objects.

    'hungarian' maximises first the number of objects served, then the total
    score (``scipy.optimize.linear_sum_assignment``); 'top1' takes pairs
    greedily in descending score, which is the per-object argmax whenever the
    Omega_j are disjoint (always so for FCOS and ATSS).

    Pairs whose score is not finite (a diverging network's NaN or infinite
    predictions) are no candidates: the solver never sees them, and the training
    loop's check of the losses, which are non-finite too, says what diverged.
    """
    selected = np.full(num_objects, -1, dtype=np.int64)
    finite = np.isfinite(q)
    q = q[finite]
    locs = locs[finite]
    objs = objs[finite]
    if q.size == 0 or num_objects == 0:
        return selected
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
    return selected
