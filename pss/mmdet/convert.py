"""Weights of a :class:`pss.models.Detector` in an mmdet FCOS / ATSS / GFocalV2 / CondInst
(+ PSS head) model.

    zeroed = copy_weights(detector, mmdet_model)

copies every parameter and buffer across (torchvision ResNet and mmdet's ResNet
share their names; FPN and head modules are renamed) and returns the mmdet keys
our model has no counterpart for, which are set to zero: the tower conv biases
before GroupNorm of mmdet configs with ``conv_bias=True`` (FCOS). BatchNorm's
``num_batches_tracked`` counters and GFLHead's ``integral.project`` (the bins 0..16, a
constant) are left as they are. Any other key that does
not fit, or one base's weights into another's model (FCOS into ATSS, say), is a
UserError.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor, nn

from pss.errors import UserError

# The prefix of each base's predictor convs in mmdet (conv_cls, atss_cls, gfl_cls, ...).
PREDICTOR_PREFIX = {"fcos": "conv_", "atss": "atss_", "gfocalv2": "gfl_", "condinst": "conv_"}
# A weight only one base's mmdet model has, where its predictors' names are another's.
BASE_KEY = {"condinst": "bbox_head.controller.weight"}
# CondInst's mask branch (pss.models.condinst.MaskBranch) in mmdet's MaskFeatModule: the
# first conv is P3's level conv, the others its stacked convs.
MASK_BRANCH = "mask_head.mask_feature_head"
# mmdet buffers that are not weights: BatchNorm's step counters, GFLHead's bins 0..16.
LEFT_AS_THEY_ARE = ("num_batches_tracked", "bbox_head.integral.project")
# (our key pattern, mmdet key template).
_RULES: list[tuple[str, str]] = [
    (r"backbone\.body\.(.+)", r"backbone.\1"),
    (r"backbone\.fpn\.lateral\.(\d+)\.(weight|bias)", r"neck.lateral_convs.\1.conv.\2"),
    (r"backbone\.fpn\.output\.(\d+)\.(weight|bias)", r"neck.fpn_convs.\1.conv.\2"),
    (r"backbone\.fpn\.p6\.(weight|bias)", r"neck.fpn_convs.3.conv.\1"),
    (r"backbone\.fpn\.p7\.(weight|bias)", r"neck.fpn_convs.4.conv.\1"),
    (r"head\.scales\.(\d+)\.scale", r"bbox_head.scales.\1.scale"),
    (r"head\.pss\.out\.(weight|bias)", r"bbox_head.conv_pss.\1"),
    # GFocalV2's quality predictor: the same module (pss.models.gfocal.DGQP) on both sides.
    (r"head\.quality\.(hidden|out)\.(weight|bias)", r"bbox_head.quality.\1.\2"),
    # CondInst's controller (both: a 3x3 conv on the regression tower).
    (r"head\.controller\.(weight|bias)", r"bbox_head.controller.\1"),
    (r"head\.mask_branch\.out\.(weight|bias)", rf"{MASK_BRANCH}.conv_pred.\1"),
]
# Towers: nn.Sequential of [conv, GroupNorm, ReLU] -> ModuleList of ConvModule(conv, gn).
_TOWERS = {"cls_tower": "cls_convs", "reg_tower": "reg_convs", "pss.convs": "pss_convs"}
_PREDICTORS = {"cls_logits": "cls", "bbox_pred": "reg", "centerness": "centerness"}


def mmdet_key(key: str, predictor_prefix: str) -> str | None:
    """The mmdet name of one of our state-dict keys (None: no rule)."""
    for pattern, template in _RULES:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, template, key)
    for ours, theirs in _TOWERS.items():
        m = re.fullmatch(rf"head\.{re.escape(ours)}\.(\d+)\.(weight|bias)", key)
        if m:
            index, layer = divmod(int(m.group(1)), 3)  # conv, norm, relu
            part = ("conv", "gn")[layer]
            return f"bbox_head.{theirs}.{index}.{part}.{m.group(2)}"
    m = re.fullmatch(r"head\.mask_branch\.convs\.(\d+)\.(weight|bias)", key)
    if m:
        index, layer = divmod(int(m.group(1)), 3)  # conv, norm, relu
        conv = "convs_all_levels.0.conv0" if index == 0 else f"conv_branch.{index - 1}"
        return f"{MASK_BRANCH}.{conv}.{('conv', 'gn')[layer]}.{m.group(2)}"
    m = re.fullmatch(r"head\.(cls_logits|bbox_pred|centerness)\.(weight|bias)", key)
    if m:
        return f"bbox_head.{predictor_prefix}{_PREDICTORS[m.group(1)]}.{m.group(2)}"
    return None


def to_mmdet_state(state: dict[str, Tensor], predictor_prefix: str) -> dict[str, Tensor]:
    """Our state dict renamed for mmdet (``predictor_prefix``: PREDICTOR_PREFIX's)."""
    out = {}
    for key, value in state.items():
        name = mmdet_key(key, predictor_prefix)
        if name is None:
            raise UserError(f"no mmdet counterpart for the weight '{key}'")
        out[name] = value
    return out


@torch.no_grad()
def copy_weights(detector: nn.Module, model: nn.Module) -> list[str]:
    """Load ``detector``'s weights into the mmdet ``model``; returns the keys set to zero."""
    target = model.state_dict()
    bases = [b for b, p in PREDICTOR_PREFIX.items() if f"bbox_head.{p}cls.weight" in target]
    # FCOS and CondInst name their predictors alike: the one whose own weight is there.
    theirs = next((b for b in bases if BASE_KEY.get(b) in target), None) or next(
        (b for b in bases if b not in BASE_KEY), None
    )
    if theirs is None:
        heads = ", ".join(PREDICTOR_PREFIX)
        raise UserError(f"mmdet's {type(model).__name__} has none of the heads of {heads}")
    # FCOS's and ATSS's (one anchor a location) weights have the same shapes: only the
    # detector's base tells them apart.
    base = getattr(getattr(detector, "cfg", None), "base", None)
    if base is not None and base != theirs:
        raise UserError(f"{base.upper()} weights do not fit mmdet's {type(model).__name__}")
    state = to_mmdet_state(detector.state_dict(), PREDICTOR_PREFIX[theirs])
    unexpected = sorted(set(state) - set(target))
    if unexpected:
        raise UserError(f"the mmdet model has no weights {unexpected[:5]} (of {len(unexpected)})")
    for key, value in state.items():
        if target[key].shape != value.shape:
            raise UserError(
                f"weight '{key}': ours {tuple(value.shape)}, mmdet's {tuple(target[key].shape)}"
            )
    missing = sorted(set(target) - set(state))
    zeroed = [k for k in missing if re.fullmatch(r"bbox_head\.\w+_convs\.\d+\.conv\.bias", k)]
    others = [k for k in missing if k not in zeroed and not k.endswith(LEFT_AS_THEY_ARE)]
    if others:
        raise UserError(f"our model has no weights for mmdet's {others[:5]} (of {len(others)})")
    for key in zeroed:
        state[key] = torch.zeros_like(target[key])
    model.load_state_dict(state, strict=False)
    return zeroed
