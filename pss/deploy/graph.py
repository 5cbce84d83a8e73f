"""The detector as one tensor-only graph: normalised images in, top-K detections out.

    graph = DeployedDetector(detector, "e2e").eval()
    boxes, scores, labels = graph(images)   # [B, 3, H, W] -> [B, K, 4], [B, K], [B, K]

K is ``cfg.inference.max_per_image`` (100). Boxes are in input pixels (x1, y1,
x2, y2), clipped to H x W; rows are sorted by score; slots left empty (fewer
than K detections) hold score 0, label -1 and a zero box. This is what
``python -m pss.export`` writes to ONNX and what ``pss.predict`` runs in
PyTorch, so both give the same detections.

The post-processing is :func:`pss.models.decode.detect`, the decoder
:meth:`pss.models.Detector.predict` evaluates with, in its exportable form:

* ``e2e``: P_i(c) = sigma(s_i(c)) sigma(ctr_i) sigma(pss_i), the K best
  (location, class) pairs, no NMS. Batched: only plain tensor ops (TopK,
  Gather, arithmetic), whatever the batch size and image size.
* ``raw``: the same on the base score (the duplicates PSS removes).
* ``nms``: the base score, per level the ``pre_nms_topk`` best pairs above
  ``score_thresh``, class-aware NMS (torchvision ``nms``, ONNX
  NonMaxSuppression), the K best; one image at a time (the batch size is
  fixed when exported).
"""

from __future__ import annotations

from torch import Tensor, nn

from pss.models import Detector
from pss.models.backbone import Backbone
from pss.models.boxes import make_priors
from pss.models.decode import Padded, check_mode, detect


class DeployedDetector(nn.Module):
    """Backbone, head and post-processing of ``detector`` in ``mode``, tensors in and out.

    ``forward(images [B, 3, H, W])`` -> boxes [B, K, 4], scores [B, K], labels [B, K]
    (int64). Shares the detector's modules (no copy).
    """

    def __init__(self, detector: Detector, mode: str) -> None:
        super().__init__()
        check_mode(mode, detector.cfg.has_pss, detector.cfg.name)
        self.backbone = detector.backbone
        self.head = detector.head
        self.cfg = detector.cfg
        self.mode = mode

    def forward(self, images: Tensor) -> Padded:
        out = self.head(self.backbone(images))
        priors = make_priors(out.sizes, Backbone.strides, out.cls.device)
        size = (images.shape[-2], images.shape[-1])
        return detect(self.cfg, out, priors, self.mode, [size], exportable=True)
