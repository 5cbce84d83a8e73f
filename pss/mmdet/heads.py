"""FCOSPSSHead, ATSSPSSHead, GFocalV2PSSHead and CondInstPSSHead: mmdet dense heads plus
the positive sample selector; GFocalV2Head: mmdet's GFLHead plus GFocalV2's quality
predictor.

CondInstPSSHead is mmdet's :class:`CondInstBboxHead` (FCOS plus CondInst's controller)
with the PSS branch as FCOSPSSHead has it; mmdet's ``CondInstMaskHead`` computes the
masks of its detections, in every mode (docs/mmdet.md, CondInst).

GFocalV2Head is mmdet's :class:`GFLHead` (GFL v1: towers, distribution box regression,
ATSS assignment, QFL, DFL, GIoU, NMS post-processing; mmdet 3.3 has no v2 head) with
v2's distribution-guided quality predictor (:class:`pss.models.gfocal.DGQP`, the module
our ``GFocalHead`` uses) on each level's box distribution. It returns the class logits,
the distribution logits and the quality logits (the third output, where FCOS / ATSS
return center-ness); its losses and predictions hand GFLHead the joint score
sigma(s) sigma(q) as a logit (:func:`joint_logit`), so that GFLHead's own sigmoid gives
it back: its QFL, box weights and post-processing then run on GFocalV2's joint score.

Each PSS head is its mmdet base head, unchanged (towers, one-to-many assignment, base
losses, NMS post-processing), plus:

* a PSS branch per level: ``pss.num_convs`` x [conv 3x3, norm, ReLU] + a 1-channel
  conv 3x3, fed from the regression tower (or the classification tower), detached
  when ``pss.stop_grad`` (docs/method.md);
* L_pss and L_rank, from :mod:`pss.models.selector` (the functions ``pss.models.Detector``
  uses): the one-to-one target is chosen among the positives that *mmdet's* own
  one-to-many assignment gives each object (FCOS: its point targets; ATSS and GFL:
  their ``ATSSAssigner``);
* prediction in the mode ``test_cfg.mode`` names: ``e2e`` (P_i(c) = sigma(pss)
  sigma(cls) sigma(ctr), ctr GFocalV2's quality logit, top ``max_per_img`` pairs, no
  NMS), ``nms`` (mmdet's own post-processing of the base detector, the PSS branch
  ignored) or ``raw`` (base scores, top-k, no NMS).

Head arguments beyond the base head's (defaults: the paper's):

    pss=dict(num_convs=2, branch='regression', stop_grad=True)
    one_to_one=dict(match='mul', alpha=0.8, solver='hungarian')
    loss_pss=dict(pss_weight=1.0, rank_weight=0.25, rank_margin=0.5, rank_negatives=100)

The focal loss of L_pss takes alpha and gamma from ``loss_cls`` (GFocalV2PSSHead: gamma
is the QFL's beta, as ``loss.focal_gamma`` is both in our config, and alpha a key of
``loss_pss``, ``focal_alpha``, default 0.25).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmdet.models.dense_heads import ATSSHead, CondInstBboxHead, FCOSHead, GFLHead
from mmdet.models.dense_heads.anchor_free_head import AnchorFreeHead
from mmdet.models.task_modules.prior_generators import anchor_inside_flags
from mmdet.models.utils import multi_apply
from mmdet.registry import MODELS
from mmdet.structures.bbox import get_box_tensor, scale_boxes
from mmengine.structures import InstanceData
from pydantic import ValidationError
from torch import Tensor

from pss import contract
from pss.config import AssignConfig, LossConfig, PSSConfig
from pss.errors import UserError, validation_error
from pss.models import selector
from pss.models.decode import EMPTY_LABEL, check_mode, score_factor, top_pairs, unpad
from pss.models.gfocal import DGQP, REG_MAX, integral
from pss.models.heads import flatten_levels
from pss.models.losses import log_complement

ONE_TO_ONE_KEYS = ("match", "alpha", "solver")
LOSS_KEYS = ("pss_weight", "rank_weight", "rank_margin", "rank_negatives")


def _section(kind, given: dict | None, keys: tuple[str, ...] | None, argument: str):
    """A pss config section from an mmdet head argument; unknown keys are a UserError."""
    given = dict(given or {})
    allowed = keys if keys is not None else tuple(kind.model_fields)
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise UserError(
            f"head argument '{argument}': unknown keys {unknown}; expected some of {list(allowed)}"
        )
    try:
        return kind(**given)
    except ValidationError as exc:
        raise validation_error(exc, kind, f"head argument '{argument}'") from None


class PSSHeadMixin:
    """The PSS branch, losses and prediction modes; mixed into an mmdet dense head."""

    loss_pss_keys: tuple[str, ...] = LOSS_KEYS  # the keys head argument loss_pss takes

    def __init__(
        self,
        *args,
        pss: dict | None = None,
        one_to_one: dict | None = None,
        loss_pss: dict | None = None,
        **kwargs,
    ) -> None:
        # Parsed before the base head builds its layers (which calls _init_layers).
        self.pss_cfg: PSSConfig = _section(PSSConfig, pss, None, "pss")
        self.one_to_one_cfg: AssignConfig = _section(
            AssignConfig, one_to_one, ONE_TO_ONE_KEYS, "one_to_one"
        )
        super().__init__(*args, **kwargs)
        self.loss_pss_cfg: LossConfig = _section(
            LossConfig, loss_pss, self.loss_pss_keys, "loss_pss"
        ).model_copy(update=self.pss_focal())

    def pss_focal(self) -> dict[str, float]:
        """The focal settings of L_pss taken from the base head's classification loss."""
        return {"focal_alpha": self.loss_cls.alpha, "focal_gamma": self.loss_cls.gamma}

    def _init_layers(self) -> None:
        super()._init_layers()
        self.pss_convs = nn.ModuleList(
            ConvModule(
                self.feat_channels,
                self.feat_channels,
                3,
                padding=1,
                conv_cfg=self.conv_cfg,
                norm_cfg=self.norm_cfg,
            )
            for _ in range(self.pss_cfg.num_convs)
        )
        self.conv_pss = nn.Conv2d(self.feat_channels, 1, 3, padding=1)

    def forward_pss(self, cls_feat: Tensor, reg_feat: Tensor) -> Tensor:
        """PSS logits [B, 1, H, W] of one level from the towers' outputs."""
        feat = cls_feat if self.pss_cfg.branch == "classification" else reg_feat
        if self.pss_cfg.stop_grad:
            feat = feat.detach()
        for conv in self.pss_convs:
            feat = conv(feat)
        return self.conv_pss(feat)

    # ------------------------------------------------------------------ losses

    def loss_by_feat(
        self,
        cls_scores: list[Tensor],
        bbox_preds: list[Tensor],
        centernesses: list[Tensor],
        pss_logits: list[Tensor],
        batch_gt_instances: list[InstanceData],
        batch_img_metas: list[dict],
        batch_gt_instances_ignore: list[InstanceData] | None = None,
    ) -> dict[str, Tensor]:
        """The base head's losses, plus loss_pss and loss_rank."""
        losses = super().loss_by_feat(
            cls_scores,
            bbox_preds,
            centernesses,
            batch_gt_instances,
            batch_img_metas,
            batch_gt_instances_ignore,
        )
        losses.update(
            self.pss_loss(
                cls_scores,
                bbox_preds,
                centernesses,
                pss_logits,
                batch_gt_instances,
                batch_img_metas,
                batch_gt_instances_ignore,
            )
        )
        return losses

    def pss_loss(self, *args, **kwargs) -> dict[str, Tensor]:
        """loss_pss and loss_rank (float32) of the head outputs, targets and metas that
        :meth:`pss_targets` takes."""
        log_p, chosen, targets = self.pss_targets(*args, **kwargs)
        with torch.autocast(log_p.device.type, enabled=False):
            return selector.pss_losses(log_p, chosen, targets, self.loss_pss_cfg)

    def pss_targets(
        self,
        cls_scores: list[Tensor],
        bbox_preds: list[Tensor],
        centernesses: list[Tensor],
        pss_logits: list[Tensor],
        batch_gt_instances: list[InstanceData],
        batch_img_metas: list[dict],
        batch_gt_instances_ignore: list[InstanceData] | None = None,
    ) -> tuple[Tensor, list[Tensor], list[dict[str, Tensor]]]:
        """log P [B, N, C] (float32), the one-to-one selections (per image [M], -1: none)
        and the targets as pss.models.selector takes them."""
        sizes = [tuple(m.shape[-2:]) for m in cls_scores]
        with torch.autocast(cls_scores[0].device.type, enabled=False):
            log_p = selector.log_prob(
                flatten_levels(cls_scores).float(),
                flatten_levels(centernesses).squeeze(-1).float(),
                flatten_levels(pss_logits).squeeze(-1).float(),
            )
            boxes = self.decode_all(sizes, flatten_levels(bbox_preds).float().detach())
        targets = [
            {"boxes": get_box_tensor(g.bboxes).float(), "labels": g.labels}
            for g in batch_gt_instances
        ]
        gt_index = self.one_to_many(
            sizes, batch_gt_instances, batch_img_metas, batch_gt_instances_ignore, log_p.device
        )
        pos_b, pos_i = torch.nonzero(gt_index >= 0, as_tuple=True)
        omega = (pos_b, pos_i, gt_index[pos_b, pos_i])
        chosen = selector.one_to_one_targets(log_p, boxes, targets, omega, self.one_to_one_cfg)
        return log_p, chosen, targets

    # -------------------------------------------------------------- prediction

    def predict_by_feat(
        self,
        cls_scores: list[Tensor],
        bbox_preds: list[Tensor],
        score_factors: list[Tensor],
        pss_logits: list[Tensor],
        batch_img_metas: list[dict] | None = None,
        cfg=None,
        rescale: bool = False,
        with_nms: bool = True,
    ) -> list[InstanceData]:
        """Detections per image in the mode ``cfg.mode`` (default: test_cfg's, else e2e)."""
        cfg = self.test_cfg if cfg is None else cfg
        if self.mode_of(cfg) == "nms":
            return super().predict_by_feat(
                cls_scores,
                bbox_preds,
                score_factors,
                batch_img_metas=batch_img_metas,
                cfg=cfg,
                rescale=rescale,
                with_nms=with_nms,
            )
        return self.predict_top(
            cls_scores, bbox_preds, score_factors, pss_logits, batch_img_metas, cfg, rescale
        )[0]

    def mode_of(self, cfg) -> str:
        """The inference mode a test config names (``mode``; absent: e2e), checked."""
        mode = cfg.get("mode", "e2e")
        check_mode(mode, True, type(self).__name__, "test_cfg.mode")
        return mode

    def predict_top(
        self,
        cls_scores: list[Tensor],
        bbox_preds: list[Tensor],
        score_factors: list[Tensor],
        pss_logits: list[Tensor],
        batch_img_metas: list[dict],
        cfg,
        rescale: bool = False,
    ) -> tuple[list[InstanceData], list[Tensor]]:
        """e2e / raw (``cfg.mode``): the top ``cfg.max_per_img`` pairs per image, no NMS,
        and the location [K] (an index over all levels) each detection comes from."""
        mode = self.mode_of(cfg)
        sizes = [tuple(m.shape[-2:]) for m in cls_scores]
        priors = self.flat_priors(sizes, cls_scores[0].device)
        cls = flatten_levels(cls_scores).detach()
        reg = flatten_levels(bbox_preds).detach().float()
        ctr = flatten_levels(score_factors).detach().squeeze(-1)
        factor = score_factor(mode, cls, ctr, flatten_levels(pss_logits).detach().squeeze(-1))

        def boxes_at(locs: Tensor) -> Tensor:  # [B, K] -> [B, K, 4], clipped to each image
            metas = enumerate(zip(locs, batch_img_metas))
            boxes = [
                self.decode_boxes(priors[i], reg[b, i], m["img_shape"][:2]) for b, (i, m) in metas
            ]
            return torch.stack(boxes)

        *padded, locs = top_pairs(
            cls, factor, boxes_at, cfg.max_per_img, cfg.get("e2e_score_thr", 0.0), True
        )
        keep = padded[2] != EMPTY_LABEL
        results = []
        for det, meta in zip(unpad(*padded), batch_img_metas):
            result = InstanceData(bboxes=det["boxes"], scores=det["scores"], labels=det["labels"])
            if rescale:
                result.bboxes = scale_boxes(result.bboxes, [1 / s for s in meta["scale_factor"]])
            results.append(result)
        return results, [loc[k] for loc, k in zip(locs, keep)]

    # ---------------------------------------------------- what each base differs in

    def flat_priors(self, sizes: list[tuple[int, int]], device) -> Tensor:
        """Priors of every location, [N, 4]: FCOS (x, y, stride, stride), ATSS anchors."""
        priors = self.prior_generator.grid_priors(sizes, device=device, with_stride=True)
        return torch.cat(priors)

    def decode_boxes(self, priors: Tensor, reg: Tensor, max_shape=None) -> Tensor:
        """Boxes in input pixels [..., 4] from regression outputs at ``priors``."""
        raise NotImplementedError

    def decode_all(self, sizes: list[tuple[int, int]], reg: Tensor) -> Tensor:
        """Boxes [B, N, 4] of every location from regression outputs [B, N, 4]."""
        priors = self.flat_priors(sizes, reg.device)
        return self.decode_boxes(priors.expand(len(reg), -1, -1), reg)

    def one_to_many(
        self,
        sizes: list[tuple[int, int]],
        batch_gt_instances: list[InstanceData],
        batch_img_metas: list[dict],
        batch_gt_instances_ignore: list[InstanceData] | None,
        device,
    ) -> Tensor:
        """gt_index [B, N] of mmdet's one-to-many assignment (-1: not a positive)."""
        raise NotImplementedError


@MODELS.register_module()
class FCOSPSSHead(PSSHeadMixin, FCOSHead):
    """FCOS_PSS: mmdet's :class:`FCOSHead` plus the positive sample selector."""

    def forward(self, x: tuple[Tensor, ...]) -> tuple[list[Tensor], ...]:
        """cls_scores, bbox_preds, centernesses, pss_logits: one map per level each."""
        return multi_apply(self.forward_single, x, self.scales, self.strides)

    def forward_single(self, x: Tensor, scale, stride: int) -> tuple[Tensor, ...]:
        """FCOSHead.forward_single (same arithmetic), plus the PSS logits."""
        cls_score, bbox_pred, centerness, cls_feat, reg_feat = self.fcos_single(x, scale, stride)
        return cls_score, bbox_pred, centerness, self.forward_pss(cls_feat, reg_feat)

    def fcos_single(self, x: Tensor, scale, stride: int) -> tuple[Tensor, ...]:
        """FCOSHead.forward_single's outputs of one level and the towers' (cls_feat,
        reg_feat)."""
        cls_score, bbox_pred, cls_feat, reg_feat = AnchorFreeHead.forward_single(self, x)
        centerness = self.conv_centerness(reg_feat if self.centerness_on_reg else cls_feat)
        bbox_pred = scale(bbox_pred).float()
        if self.norm_on_bbox:
            bbox_pred = bbox_pred.clamp(min=0)
            if not self.training:
                bbox_pred *= stride
        else:
            bbox_pred = bbox_pred.exp()
        return cls_score, bbox_pred, centerness, cls_feat, reg_feat

    def decode_boxes(self, priors: Tensor, reg: Tensor, max_shape=None) -> Tensor:
        # In training, norm_on_bbox predictions are in units of the stride.
        if self.norm_on_bbox and self.training:
            reg = reg * priors[..., 2:3]
        return self.bbox_coder.decode(priors[..., :2], reg, max_shape=max_shape)

    def one_to_many(self, sizes, batch_gt_instances, batch_img_metas, ignore, device) -> Tensor:
        # FCOSHead._get_targets_single, run with each object's label replaced by the code
        # -1 - j: a positive location's "label" then names its object j (background
        # keeps num_classes >= 0), so Omega is exactly mmdet's assignment. (CondInst's
        # centres its center sampling on each mask's centroid: the masks go along.)
        points = self.prior_generator.grid_priors(sizes, device=device)
        ranges = torch.cat(
            [p.new_tensor(r)[None].expand_as(p) for p, r in zip(points, self.regress_ranges)]
        )
        counts = [len(p) for p in points]
        gt_index = []
        for gt in batch_gt_instances:
            codes = -1 - torch.arange(len(gt), device=device)
            masks = {"masks": gt.masks} if "masks" in gt else {}
            indexed = InstanceData(bboxes=get_box_tensor(gt.bboxes), labels=codes, **masks)
            labels = self._get_targets_single(
                indexed, points=torch.cat(points), regress_ranges=ranges, num_points_per_lvl=counts
            )[0]
            gt_index.append(torch.where(labels < 0, -1 - labels, -1))
        return torch.stack(gt_index)


@MODELS.register_module()
class ATSSPSSHead(PSSHeadMixin, ATSSHead):
    """ATSS_PSS: mmdet's :class:`ATSSHead` plus the positive sample selector."""

    def forward(self, x: tuple[Tensor, ...]) -> tuple[list[Tensor], ...]:
        """cls_scores, bbox_preds, centernesses, pss_logits: one map per level each."""
        return multi_apply(self.forward_single, x, self.scales)

    def forward_single(self, x: Tensor, scale) -> tuple[Tensor, ...]:
        """ATSSHead.forward_single (same arithmetic), plus the PSS logits."""
        cls_feat = reg_feat = x
        for conv in self.cls_convs:
            cls_feat = conv(cls_feat)
        for conv in self.reg_convs:
            reg_feat = conv(reg_feat)
        cls_score = self.atss_cls(cls_feat)
        bbox_pred = scale(self.atss_reg(reg_feat)).float()
        centerness = self.atss_centerness(reg_feat)
        return cls_score, bbox_pred, centerness, self.forward_pss(cls_feat, reg_feat)

    def flat_priors(self, sizes: list[tuple[int, int]], device) -> Tensor:
        return torch.cat(self.prior_generator.grid_priors(sizes, device=device))

    def decode_boxes(self, priors: Tensor, reg: Tensor, max_shape=None) -> Tensor:
        shape = reg.shape
        boxes = self.bbox_coder.decode(
            priors.reshape(-1, 4), reg.reshape(-1, 4), max_shape=max_shape
        )
        return get_box_tensor(boxes).reshape(shape)

    def one_to_many(self, sizes, batch_gt_instances, batch_img_metas, ignore, device) -> Tensor:
        # What ATSSHead._get_targets_single hands to its assigner, and the assigner's
        # answer (gt_inds: 0 background, -1 ignored, j + 1 object j).
        anchor_list, valid_list = self.get_anchors(sizes, batch_img_metas, device=device)
        counts = [len(a) for a in anchor_list[0]]
        ignore = ignore or [None] * len(batch_gt_instances)
        gt_index = []
        for anchors, valid, gt, meta, gt_ignore in zip(
            anchor_list, valid_list, batch_gt_instances, batch_img_metas, ignore
        ):
            anchors, valid = torch.cat(anchors), torch.cat(valid)
            inside = anchor_inside_flags(
                anchors, valid, meta["img_shape"][:2], self.train_cfg["allowed_border"]
            )
            result = self.assigner.assign(
                InstanceData(priors=anchors[inside]),
                self.get_num_level_anchors_inside(counts, inside),
                gt,
                gt_ignore,
            )
            index = anchors.new_full((len(anchors),), -1, dtype=torch.long)
            index[inside] = (result.gt_inds - 1).clamp(min=-1)
            gt_index.append(index)
        return torch.stack(gt_index)


@MODELS.register_module()
class CondInstPSSHead(FCOSPSSHead, CondInstBboxHead):
    """CondInst_PSS: mmdet's :class:`CondInstBboxHead` (FCOS and the controller) plus the
    positive sample selector, as :class:`FCOSPSSHead` adds it to FCOSHead; mmdet's
    ``CondInstMaskHead`` turns its detections into masks in every mode.

    Its outputs are CondInstBboxHead's (class, box, center-ness and controller maps) and
    the PSS logits; its one-to-many positives are mmdet's CondInst ones (center sampling
    around each mask's centroid), also for the one-to-one target. Its detections carry
    what the mask head computes masks from (``param_preds``, ``points``, ``strides``):
    in e2e and raw mode those of the top pairs' locations, in nms mode CondInst's own.
    """

    def forward_single(self, x: Tensor, scale, stride: int) -> tuple[Tensor, ...]:
        """CondInstBboxHead.forward_single (same arithmetic), plus the PSS logits."""
        cls_score, bbox_pred, centerness, cls_feat, reg_feat = self.fcos_single(x, scale, stride)
        params = self.controller(reg_feat)
        return cls_score, bbox_pred, centerness, params, self.forward_pss(cls_feat, reg_feat)

    def loss_by_feat(
        self,
        cls_scores: list[Tensor],
        bbox_preds: list[Tensor],
        centernesses: list[Tensor],
        param_preds: list[Tensor],
        pss_logits: list[Tensor],
        *targets,
    ) -> dict[str, Tensor]:
        """CondInstBboxHead's losses (it keeps the positives for the mask head), plus
        loss_pss and loss_rank. targets: batch_gt_instances, batch_img_metas and
        batch_gt_instances_ignore (optional), as loss_by_feat takes them."""
        outs = (cls_scores, bbox_preds, centernesses)
        losses = CondInstBboxHead.loss_by_feat(self, *outs, param_preds, *targets)
        losses.update(self.pss_loss(*outs, pss_logits, *targets))
        return losses

    def predict_by_feat(
        self,
        cls_scores: list[Tensor],
        bbox_preds: list[Tensor],
        score_factors: list[Tensor],
        param_preds: list[Tensor],
        pss_logits: list[Tensor],
        batch_img_metas: list[dict] | None = None,
        cfg=None,
        rescale: bool = False,
        with_nms: bool = True,
    ) -> list[InstanceData]:
        """Detections per image in the mode ``cfg.mode``, each with its location's
        dynamic parameters [K, num_params], point [K, 2] and stride [K]."""
        cfg = self.test_cfg if cfg is None else cfg
        if self.mode_of(cfg) == "nms":
            return CondInstBboxHead.predict_by_feat(
                self,
                cls_scores,
                bbox_preds,
                score_factors,
                param_preds,
                batch_img_metas=batch_img_metas,
                cfg=cfg,
                rescale=rescale,
                with_nms=with_nms,
            )
        results, locs = self.predict_top(
            cls_scores, bbox_preds, score_factors, pss_logits, batch_img_metas, cfg, rescale
        )
        sizes = [tuple(m.shape[-2:]) for m in cls_scores]
        priors = self.flat_priors(sizes, cls_scores[0].device)  # (x, y, stride, stride)
        params = flatten_levels(param_preds).detach()
        for b, (result, loc) in enumerate(zip(results, locs)):
            result.param_preds = params[b, loc]
            result.points = priors[loc, :2]
            result.strides = priors[loc, 2]
        return results


def joint_logit(cls_score: Tensor, quality: Tensor) -> Tensor:
    """The logit of GFocalV2's joint score p = sigma(s) sigma(q), log p - log(1 - p),
    [B, C, H, W] (float32) from class logits [B, C, H, W] and quality logits [B, 1, H, W]:
    what GFLHead takes as its classification output (it applies the sigmoid itself)."""
    log_p = F.logsigmoid(cls_score.float()) + F.logsigmoid(quality.float())
    return log_p - log_complement(log_p)


@MODELS.register_module()
class GFocalV2Head(GFLHead):
    """GFocalV2: mmdet's :class:`GFLHead` plus v2's distribution-guided quality predictor
    (DGQP) on the box distribution; the classification score is sigma(s) sigma(q)."""

    def __init__(self, *args, reg_max: int = REG_MAX, **kwargs) -> None:
        if reg_max != REG_MAX:
            raise UserError(
                f"head argument 'reg_max': GFocalV2's quality predictor takes {REG_MAX} "
                f"(pss.models.gfocal.REG_MAX), got {reg_max}"
            )
        super().__init__(*args, reg_max=reg_max, **kwargs)

    def _init_layers(self) -> None:
        super()._init_layers()
        self.quality = DGQP()

    def forward(self, x: tuple[Tensor, ...]) -> tuple[list[Tensor], ...]:
        """cls_scores (class logits), bbox_preds (distribution logits), qualities (DGQP
        logits): one map per level each."""
        return multi_apply(self.forward_single, x, self.scales)

    def towers(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The classification and regression towers' outputs of one level."""
        cls_feat = reg_feat = x
        for conv in self.cls_convs:
            cls_feat = conv(cls_feat)
        for conv in self.reg_convs:
            reg_feat = conv(reg_feat)
        return cls_feat, reg_feat

    def outputs(self, cls_feat: Tensor, reg_feat: Tensor, scale) -> tuple[Tensor, ...]:
        """GFLHead.forward_single's outputs (same arithmetic), plus the quality logits."""
        bbox_pred = scale(self.gfl_reg(reg_feat)).float()
        return self.gfl_cls(cls_feat), bbox_pred, self.quality(bbox_pred)

    def forward_single(self, x: Tensor, scale) -> tuple[Tensor, ...]:
        return self.outputs(*self.towers(x), scale)

    def loss_by_feat(
        self,
        cls_scores: list[Tensor],
        bbox_preds: list[Tensor],
        qualities: list[Tensor],
        batch_gt_instances: list[InstanceData],
        batch_img_metas: list[dict],
        batch_gt_instances_ignore: list[InstanceData] | None = None,
    ) -> dict[str, Tensor]:
        """GFLHead's losses (QFL, GIoU, DFL) on the joint score."""
        return super().loss_by_feat(
            list(map(joint_logit, cls_scores, qualities)),
            bbox_preds,
            batch_gt_instances,
            batch_img_metas,
            batch_gt_instances_ignore,
        )

    def predict_by_feat(
        self,
        cls_scores: list[Tensor],
        bbox_preds: list[Tensor],
        qualities: list[Tensor],
        batch_img_metas: list[dict] | None = None,
        cfg=None,
        rescale: bool = False,
        with_nms: bool = True,
    ) -> list[InstanceData]:
        """GFLHead's post-processing (NMS) on the joint score."""
        return super().predict_by_feat(
            list(map(joint_logit, cls_scores, qualities)),
            bbox_preds,
            None,
            batch_img_metas=batch_img_metas,
            cfg=cfg,
            rescale=rescale,
            with_nms=with_nms,
        )


@MODELS.register_module()
class GFocalV2PSSHead(PSSHeadMixin, GFocalV2Head):
    """GFocalV2_PSS: :class:`GFocalV2Head` plus the positive sample selector; P_i(c) =
    sigma(pss) sigma(s) sigma(q) with q the DGQP's logit."""

    loss_pss_keys = (*LOSS_KEYS, "focal_alpha")

    def pss_focal(self) -> dict[str, float]:
        return {"focal_gamma": self.loss_cls.beta}

    def forward_single(self, x: Tensor, scale) -> tuple[Tensor, ...]:
        """GFocalV2Head.forward_single, plus the PSS logits."""
        cls_feat, reg_feat = self.towers(x)
        return (*self.outputs(cls_feat, reg_feat, scale), self.forward_pss(cls_feat, reg_feat))

    def flat_priors(self, sizes: list[tuple[int, int]], device) -> Tensor:
        """(x, y, stride, stride) of every location, [N, 4]: the anchors' centres."""
        anchors = self.prior_generator.grid_priors(sizes, device=device)
        return torch.cat(
            [
                torch.cat((self.anchor_center(a), a.new_tensor(s).expand(len(a), 2)), dim=1)
                for a, s in zip(anchors, self.prior_generator.strides)
            ]
        )

    def decode_boxes(self, priors: Tensor, reg: Tensor, max_shape=None) -> Tensor:
        distances = integral(reg) * priors[..., 2:3]  # the distribution's mean x stride
        return self.bbox_coder.decode(priors[..., :2], distances, max_shape=max_shape)

    # GFLHead assigns as ATSSHead does (the same anchors, flags and ATSSAssigner).
    one_to_many = ATSSPSSHead.one_to_many


def modes_of(model, wanted: Sequence[str] | None = None) -> tuple[str, ...]:
    """The inference modes a model answers in (all three with a PSS head, else nms), of
    those ``wanted`` (None: all)."""
    head = getattr(model, "module", model).bbox_head
    modes = contract.MODES if hasattr(head, "pss_convs") else ("nms",)
    return tuple(m for m in modes if wanted is None or m in wanted)


@contextlib.contextmanager
def inference_mode(model, mode: str) -> Iterator[None]:
    """Within it, the model predicts in ``mode`` (one of :func:`modes_of`): a PSS head's
    ``test_cfg.mode`` is set, and put back as it was after (absent: removed again)."""
    head = getattr(model, "module", model).bbox_head
    if mode not in modes_of(model):
        raise UserError(f"{type(head).__name__} does not predict in mode '{mode}'")
    if not hasattr(head, "pss_convs"):  # a baseline: mmdet's own prediction is nms
        yield
        return
    saved = head.test_cfg.get("mode")
    head.test_cfg["mode"] = mode
    try:
        yield
    finally:
        if saved is None:
            head.test_cfg.pop("mode")
        else:
            head.test_cfg["mode"] = saved
