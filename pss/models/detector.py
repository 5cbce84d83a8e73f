"""FCOS, ATSS, GFocalV2, CondInst and their _PSS models: one detector class, its losses and
its three inference modes.

    model = Detector(cfg.model)
    out = model(images)                          # [B, 3, H, W] normalised, padded
    losses = model.losses(out, targets)          # dict of scalar tensors, 'loss' is the total
    dets = model.predict(out, image_sizes, "e2e")  # or "nms", "raw"

``targets`` is a list (one per image) of dicts with ``boxes`` [M, 4] (x1, y1,
x2, y2 in input pixels) and ``labels`` [M] (0..C-1), and for CondInst ``masks``
[M, h, w] (0 / 1, input pixels). Crowd boxes must already be removed. CondInst's
detections also hold ``masks`` [K, H/4, W/4]: probabilities at a quarter of the
padded input (:func:`pss.models.condinst.paste_masks` takes them to an image).

Base loss (one-to-many): focal loss / #positives, GIoU weighted by the
center-ness target / sum of those targets (x giou_weight), center-ness BCE /
#positives; GFocalV2's are in :mod:`pss.models.gfocal` (its head is
:class:`~pss.models.gfocal.GFocalHead`, its one-to-many assignment ATSS's). CondInst
is FCOS with the dice loss of its positives' masks (:mod:`pss.models.condinst`).
PSS (one-to-one): L = lambda1 * L_pss + lambda2 * L_rank on
P_i(c) = sigma(pss_i) sigma(s_i(c)) sigma(ctr_i), see docs/method.md.

Under DDP each rank computes its images' loss *sums* over the normalisers of the
whole global batch (:func:`pss.dist.reduce_mean` of the counts), so that DDP's
averaged gradient is one process's gradient on the whole batch. The losses run
in float32 whatever the head's outputs are (autocast off; float16 / bfloat16
outputs are cast first): log-probabilities of rare classes and focal weights such
as (1 - p_t)^2 underflow in a half type.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor, nn

from pss.config import ModelConfig
from pss.dist import reduce_mean
from pss.models import assign, condinst, gfocal, losses, selector
from pss.models.backbone import Backbone
from pss.models.boxes import Priors, box_to_distance, centerness_target, make_priors
from pss.models.condinst import CondInstHead
from pss.models.decode import EMPTY_LABEL, Detections, decode_boxes, detect, unpad
from pss.models.gfocal import GFocalHead
from pss.models.heads import DenseHead, HeadOutputs


class Detector(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = Backbone(cfg.backbone, cfg.head.channels)
        head = DenseHead
        if cfg.base == "gfocalv2":
            head = GFocalHead
        elif cfg.base == "condinst":
            head = CondInstHead
        self.head = head(cfg, num_levels=len(Backbone.strides))
        self.register_buffer(
            "regress_ranges", torch.tensor(cfg.assign.regress_ranges), persistent=False
        )
        self._priors: dict[tuple, Priors] = {}

    # ------------------------------------------------------------------ forward

    def forward(self, images: Tensor) -> HeadOutputs:
        return self.head(self.backbone(images))

    def priors(self, out: HeadOutputs) -> Priors:
        key = (tuple(out.sizes), out.cls.device)
        if key not in self._priors:
            self._priors[key] = make_priors(out.sizes, Backbone.strides, out.cls.device)
        return self._priors[key]

    def decode(self, out: HeadOutputs) -> Tensor:
        """Predicted boxes [B, N, 4] in input pixels."""
        priors = self.priors(out)
        return decode_boxes(self.cfg, out.reg.float(), priors.points, priors.strides)

    def log_prob(self, out: HeadOutputs) -> Tensor:
        """log P_i(c) = log sigma(pss_i) + log sigma(s_i(c)) + log sigma(ctr_i), [B, N, C]."""
        return selector.log_prob(out.cls, out.ctr, out.pss)

    # ------------------------------------------------------------------- losses

    def one_to_many(self, priors: Priors, target: dict[str, Tensor]) -> Tensor:
        """gt_index [N] of the base detector's assignment (-1: background) for one image's
        ``target`` (CondInst centres FCOS's regions on its masks' centroids)."""
        a, gt_boxes = self.cfg.assign, target["boxes"]
        if self.cfg.box_base == "fcos":
            ranges = self.regress_ranges[priors.levels]
            centers = condinst.mask_centroids(target["masks"]) if self.cfg.has_masks else None
            return assign.fcos_assign(
                priors.points, priors.strides, ranges, gt_boxes, a.center_sampling_radius, centers
            )
        return assign.atss_assign(
            priors.anchors(a.anchor_scale), priors.counts, gt_boxes, a.atss_topk
        )

    def losses(self, out: HeadOutputs, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        with torch.autocast(out.cls.device.type, enabled=False):
            return self._losses(_float32(out), targets)

    def _losses(self, out: HeadOutputs, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        priors = self.priors(out)
        boxes = self.decode(out)  # [B, N, 4]
        with torch.no_grad():
            gt_index = torch.stack([self.one_to_many(priors, t) for t in targets])
        pos_b, pos_i = torch.nonzero(gt_index >= 0, as_tuple=True)
        pos_j = gt_index[pos_b, pos_i]
        gt_boxes = torch.cat([t["boxes"] for t in targets])
        gt_labels = torch.cat([t["labels"] for t in targets])
        offsets = torch.tensor([0] + [len(t["boxes"]) for t in targets], device=gt_boxes.device)
        flat_j = pos_j + offsets.cumsum(0)[pos_b]  # object index into gt_boxes
        positives = assign.Positives(pos_b, pos_i, gt_boxes[flat_j], gt_labels[flat_j])

        if self.cfg.base == "gfocalv2":
            result = gfocal.gfocal_losses(out, boxes, priors, positives, self.cfg.loss)
        else:
            result = self.dense_losses(out, boxes, priors, positives)
        if self.cfg.has_masks:
            result.update(condinst.mask_loss(out, priors, pos_b, pos_i, flat_j, targets))
        if out.pss is not None:
            result.update(self.pss_losses(out, boxes, targets, pos_b, pos_i, pos_j))
        result["loss"] = sum(result.values())
        return result

    def dense_losses(
        self, out: HeadOutputs, boxes: Tensor, priors: Priors, positives: assign.Positives
    ) -> dict[str, Tensor]:
        """FCOS / ATSS's one-to-many losses: loss_cls, loss_box, loss_ctr (see the module).
        boxes [B, N, 4]: the decoded predictions."""
        lc = self.cfg.loss
        pos_b, pos_i = positives.img, positives.loc
        target_boxes = positives.boxes
        num_pos = reduce_mean(pos_b.new_tensor(pos_b.numel(), dtype=torch.float32)).clamp(min=1.0)
        cls_target = torch.zeros_like(out.cls, dtype=torch.float32)
        cls_target[pos_b, pos_i, positives.labels] = 1.0
        result = {
            "loss_cls": losses.focal_loss(out.cls, cls_target, lc.focal_alpha, lc.focal_gamma)
            / num_pos
        }

        ctr_target = centerness_target(box_to_distance(priors.points[pos_i], target_boxes))
        ctr_norm = reduce_mean(ctr_target.sum()).clamp(min=1e-6)
        result["loss_box"] = (
            lc.giou_weight
            * losses.giou_loss(boxes[pos_b, pos_i], target_boxes, ctr_target)
            / ctr_norm
        )
        if out.ctr is not None:
            result["loss_ctr"] = (
                lc.centerness_weight
                * losses.centerness_loss(out.ctr[pos_b, pos_i], ctr_target)
                / num_pos
            )
        return result

    @torch.no_grad()
    def select_one_to_one(
        self,
        log_p: Tensor,
        boxes: Tensor,
        targets: list[dict[str, Tensor]],
        pos_b: Tensor,
        pos_i: Tensor,
        pos_j: Tensor,
    ) -> list[Tensor]:
        """The PSS target: per image, selected [M] location of each object (-1: none).

        Candidates are Omega (the one-to-many positives (pos_b, pos_i) -> object pos_j),
        scored by Q = match_quality(P_i(c_j), IoU(bhat_i, b_j)).
        """
        omega = (pos_b, pos_i, pos_j)
        return selector.one_to_one_targets(log_p, boxes, targets, omega, self.cfg.assign)

    def pss_losses(
        self,
        out: HeadOutputs,
        boxes: Tensor,
        targets: list[dict[str, Tensor]],
        pos_b: Tensor,
        pos_i: Tensor,
        pos_j: Tensor,
    ) -> dict[str, Tensor]:
        """L_pss (normalised by the number of selected locations) and L_rank (mean over images).

        Both normalisers count the whole global batch under DDP: selected locations,
        and images with at least one selected location (L_rank's mean).
        """
        log_p = self.log_prob(out)  # [B, N, C]
        chosen = self.select_one_to_one(log_p, boxes, targets, pos_b, pos_i, pos_j)
        return selector.pss_losses(log_p, chosen, targets, self.cfg.loss)

    # ---------------------------------------------------------------- inference

    @torch.no_grad()
    def predict(
        self, out: HeadOutputs, image_sizes: list[tuple[int, int]], mode: str = "e2e"
    ) -> list[Detections]:
        """Detections per image in ``mode`` (:func:`pss.models.decode.detect`), boxes
        clipped to the (unpadded) image size (h, w), sorted by score; with ``masks`` for
        CondInst (the detections' own, see the module)."""
        priors = self.priors(out)
        if not self.cfg.has_masks:
            return unpad(*detect(self.cfg, out, priors, mode, image_sizes))
        *padded, locs = detect(self.cfg, out, priors, mode, image_sizes, locations=True)
        masks = condinst.instance_masks(out, priors, locs)  # [B, K, H4, W4]
        keep = padded[2] != EMPTY_LABEL
        return [
            {**det, "masks": m[k]} for det, m, k in zip(unpad(*padded), masks, keep, strict=True)
        ]


def _float32(out: HeadOutputs) -> HeadOutputs:
    """The head outputs as float32 (they are float16 / bfloat16 under autocast)."""
    maps = {k: getattr(out, k) for k in ("cls", "reg", "ctr", "pss", "params", "mask_feats")}
    return replace(out, **{k: v.float() for k, v in maps.items() if v is not None})
