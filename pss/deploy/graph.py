"""The detector as one tensor-only graph: normalised images in, top-K detections out.

    graph = DeployedDetector(detector, "e2e").eval()
    boxes, scores, labels = graph(images)   # [B, 3, H, W] -> [B, K, 4], [B, K], [B, K]

K is ``cfg.inference.max_per_image`` (100). Boxes are in input pixels (x1, y1,
x2, y2), clipped to H x W; rows are sorted by score; slots left empty (fewer
than K detections) hold score 0, label -1 and a zero box. This is what
``python -m pss.export`` writes to ONNX and what ``pss.predict`` runs in
PyTorch, so both give the same detections.

* ``e2e``: P_i(c) = sigma(s_i(c)) sigma(ctr_i) sigma(pss_i), the K best
  (location, class) pairs, no NMS. Batched: only plain tensor ops (TopK,
  Gather, arithmetic), whatever the batch size and image size.
* ``raw``: the same on the base score (the duplicates PSS removes).
* ``nms``: the base score, per level the ``pre_nms_topk`` best pairs above
  ``score_thresh``, class-aware NMS (torchvision ``nms``, ONNX
  NonMaxSuppression), the K best; one image at a time (the batch size is
  fixed when exported).

The rules are those of :meth:`pss.models.Detector.predict`; the tests check
that both give the same detections.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import nms

from pss.config import ModelConfig
from pss.models import MODES, Detector
from pss.models.backbone import Backbone
from pss.models.boxes import Priors, make_priors
from pss.models.detector import clip_boxes, decode_boxes
from pss.models.heads import HeadOutputs

EMPTY_LABEL = -1  # label of an unused slot (its score is 0)


class Postprocess(nn.Module):
    """Head outputs of a batch -> (boxes [B, K, 4], scores [B, K], labels [B, K])."""

    def __init__(self, cfg: ModelConfig, mode: str) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown inference mode '{mode}', expected one of {MODES}")
        if mode == "e2e" and not cfg.has_pss:
            raise ValueError(f"mode 'e2e' needs a PSS head; {cfg.name} has none")
        self.cfg = cfg
        self.mode = mode

    def forward(self, out: HeadOutputs, height: int, width: int) -> tuple[Tensor, Tensor, Tensor]:
        priors = make_priors(out.sizes, Backbone.strides, out.cls.device)
        # Per-location factor of the score: sigma(ctr) [* sigma(pss) for e2e], [B, N].
        factor = torch.ones_like(out.cls[..., 0], dtype=torch.float32)
        if out.ctr is not None:
            factor = factor * out.ctr.float().sigmoid()
        if self.mode == "e2e":
            factor = factor * out.pss.float().sigmoid()
        if self.mode == "nms":
            return self.nms(out, factor, priors, height, width)
        return self.topk(out, factor, priors, height, width)

    def topk(
        self, out: HeadOutputs, factor: Tensor, priors: Priors, height: int, width: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The K best pairs among the K locations whose best class scores highest."""
        ic = self.cfg.inference
        k = ic.max_per_image
        cls = out.cls.float()  # [B, N, C]
        num_classes = cls.shape[2]
        best = cls.amax(dim=2).sigmoid() * factor  # [B, N]
        locs = best.topk(torch.sym_min(k, best.shape[1]), dim=1).indices  # [B, k1]
        pair_logits = cls.gather(1, locs[..., None].expand(-1, -1, num_classes))
        scores = pair_logits.sigmoid() * factor.gather(1, locs)[..., None]  # [B, k1, C]
        top, idx = scores.flatten(1).topk(torch.sym_min(k, scores.shape[1] * num_classes), dim=1)
        loc = locs.gather(1, idx // num_classes)  # [B, k2]
        reg = out.reg.float().gather(1, loc[..., None].expand(-1, -1, 4))
        boxes = decode_boxes(self.cfg, reg, priors.points[loc], priors.strides[loc])
        boxes = clip_boxes(boxes, height, width)
        valid = top > ic.e2e_score_thresh
        labels = torch.where(valid, idx % num_classes, EMPTY_LABEL)
        return _pad(boxes * valid[..., None], top * valid, labels, k)

    def nms(
        self, out: HeadOutputs, factor: Tensor, priors: Priors, height: int, width: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Per image: per-level top-k above the threshold, class-aware NMS, the K best."""
        ic = self.cfg.inference
        num_classes = out.cls.shape[2]
        all_boxes = clip_boxes(
            decode_boxes(self.cfg, out.reg.float(), priors.points, priors.strides), height, width
        )
        results = []
        for b in range(out.cls.shape[0]):
            scores = out.cls[b].float().sigmoid() * factor[b, :, None]  # [N, C]
            kept_scores, kept_idx = [], []
            start = 0
            for count in priors.counts:
                level = scores[start : start + count].reshape(-1)
                top, idx = level.topk(torch.sym_min(ic.pre_nms_topk, level.shape[0]))
                above = top > ic.score_thresh
                kept_scores.append(top[above])
                kept_idx.append(idx[above] + start * num_classes)
                start = start + count
            top = torch.cat(kept_scores)
            idx = torch.cat(kept_idx)
            loc, labels = idx // num_classes, idx % num_classes
            cand = all_boxes[b][loc]
            # Class-aware NMS in one call: boxes of different classes never overlap. (The
            # zero keeps max() defined when no location scores above the threshold.)
            extent = torch.cat((cand.reshape(-1), cand.new_zeros(1))).max() + 1
            shift = labels.to(cand.dtype)[:, None] * extent
            keep = nms(cand + shift, top, ic.nms_iou)[: ic.max_per_image]
            results.append(_pad(cand[keep], top[keep], labels[keep], ic.max_per_image))
        boxes, scores, labels = zip(*results)
        return torch.stack(boxes), torch.stack(scores), torch.stack(labels)


def _pad(boxes: Tensor, scores: Tensor, labels: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Pad the last detection axis to exactly k slots (score 0, label -1, zero box)."""
    lead = scores.shape[:-1]
    boxes = torch.cat((boxes, boxes.new_zeros(*lead, k, 4)), dim=-2)[..., :k, :]
    scores = torch.cat((scores, scores.new_zeros(*lead, k)), dim=-1)[..., :k]
    labels = torch.cat((labels, labels.new_full((*lead, k), EMPTY_LABEL)), dim=-1)[..., :k]
    return boxes, scores, labels


class DeployedDetector(nn.Module):
    """Backbone, head and post-processing of ``detector`` in ``mode``, tensors in and out.

    ``forward(images [B, 3, H, W])`` -> boxes [B, K, 4], scores [B, K], labels [B, K]
    (int64). Shares the detector's modules (no copy).
    """

    def __init__(self, detector: Detector, mode: str) -> None:
        super().__init__()
        self.backbone = detector.backbone
        self.head = detector.head
        self.postprocess = Postprocess(detector.cfg, mode)

    @property
    def mode(self) -> str:
        return self.postprocess.mode

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = self.head(self.backbone(images))
        return self.postprocess(out, images.shape[-2], images.shape[-1])
