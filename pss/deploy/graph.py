"""The detector as one tensor-only graph: normalised images in, top-K detections out.

    graph = DeployedDetector(detector, "e2e").eval()
    boxes, scores, labels = graph(images)   # [B, 3, H, W] -> [B, K, 4], [B, K], [B, K]
    boxes, scores, labels, masks = graph(images)   # CondInst: + masks [B, K, H4, W4]

K is ``cfg.inference.max_per_image`` (100). Boxes are in input pixels (x1, y1,
x2, y2), clipped to H x W; rows are sorted by score; slots left empty (fewer
than K detections) hold score 0, label -1 and a zero box. This is what
``python -m pss.export`` writes to ONNX and what ``pss.predict`` runs in
PyTorch, so both give the same detections.

An instance segmentation model (CondInst, CondInst_PSS) also returns each slot's
mask: probabilities (float32, in [0, 1]) at ``MASK_OUT_STRIDE`` = 4 of the padded
input, [B, K, H4, W4] with H4 = 2 ceil(H / 8), W4 = 2 ceil(W / 8) (H / 4 x W / 4 for
sides divisible by 8); an empty slot's mask is zero. They are
:func:`pss.models.condinst.instance_masks` of the slots' locations, the masks
:meth:`pss.models.Detector.predict` gives; :func:`pss.models.condinst.paste_masks`
takes them to an image's pixels (the authors' x4 upsampling and a bilinear resize,
probability > 0.5).

The post-processing is :func:`pss.models.decode.detect`, the decoder
:meth:`pss.models.Detector.predict` evaluates with, in its exportable form:

* ``e2e``: P_i(c) = sigma(s_i(c)) sigma(ctr_i) sigma(pss_i), the K best
  (location, class) pairs, no NMS (and only their masks computed). Batched: only
  plain tensor ops (TopK, Gather, arithmetic, the dynamic mask head's MatMuls),
  whatever the batch size and image size.
* ``raw``: the same on the base score (the duplicates PSS removes).
* ``nms``: the base score, per level the ``pre_nms_topk`` best pairs above
  ``score_thresh``, class-aware NMS (torchvision ``nms``, ONNX
  NonMaxSuppression), the K best (and their masks: box NMS only, CondInst's own
  inference); one image at a time (the batch size is fixed when exported).
"""

from __future__ import annotations

from torch import Tensor, nn

from pss.models import Detector
from pss.models.backbone import Backbone
from pss.models.boxes import make_priors
from pss.models.condinst import instance_masks
from pss.models.decode import EMPTY_LABEL, Padded, check_mode, detect

# The graph's outputs, in order (a CondInst model's adds MASKS_OUTPUT).
OUTPUT_NAMES = ("boxes", "scores", "labels")
MASKS_OUTPUT = "masks"


def output_names(has_masks: bool) -> tuple[str, ...]:
    """The names of :class:`DeployedDetector`'s outputs for a model with / without masks."""
    return (*OUTPUT_NAMES, MASKS_OUTPUT) if has_masks else OUTPUT_NAMES


class DeployedDetector(nn.Module):
    """Backbone, head and post-processing of ``detector`` in ``mode``, tensors in and out.

    ``forward(images [B, 3, H, W])`` -> boxes [B, K, 4], scores [B, K], labels [B, K]
    (int64), and for CondInst masks [B, K, H4, W4] (probabilities, see the module).
    Shares the detector's modules (no copy).
    """

    def __init__(self, detector: Detector, mode: str) -> None:
        super().__init__()
        check_mode(mode, detector.cfg.has_pss, detector.cfg.name)
        self.backbone = detector.backbone
        self.head = detector.head
        self.cfg = detector.cfg
        self.mode = mode

    def forward(self, images: Tensor) -> Padded | tuple[Tensor, Tensor, Tensor, Tensor]:
        out = self.head(self.backbone(images))
        priors = make_priors(out.sizes, Backbone.strides, out.cls.device)
        size = (images.shape[-2], images.shape[-1])
        if not self.cfg.has_masks:
            return detect(self.cfg, out, priors, self.mode, [size], exportable=True)
        *padded, locs = detect(
            self.cfg, out, priors, self.mode, [size], exportable=True, locations=True
        )
        filled = (padded[2] != EMPTY_LABEL)[..., None, None]  # [B, K, 1, 1]
        return (*padded, instance_masks(out, priors, locs) * filled)
