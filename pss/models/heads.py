"""The dense head of FCOS and ATSS (+PSS), and the PSS head (GFocalV2's: pss.models.gfocal;
CondInst's: pss.models.condinst).

Per FPN level (shared weights across levels):

    cls tower (num_convs x [conv3x3, GN, ReLU]) -> cls_logits   [C]
    reg tower (num_convs x [conv3x3, GN, ReLU]) -> bbox_pred    [4]  (x per-level scale)
                                                -> centerness   [1]  (optional)
    reg (or cls) tower --stop-grad--> PSS head: num_convs x [conv3x3, GN, ReLU] -> conv3x3 [1]

``DenseHead.forward`` returns the maps flattened over levels (level-major,
row-major), see :class:`HeadOutputs`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pss.config import ModelConfig


@dataclass
class HeadOutputs:
    """Raw head outputs for a batch of B images over N locations.

    cls:  [B, N, C] classification logits s
    reg:  [B, N, 4] box regression (FCOS: distances / stride before ReLU;
          ATSS: anchor deltas; GFocalV2: [B, N, 4 (reg_max + 1)] logits of each
          side's distance distribution), already multiplied by the level's scale
    ctr:  [B, N] logits of the per-location quality (FCOS / ATSS: center-ness;
          GFocalV2: its quality predictor's), or None without the branch
    pss:  [B, N] PSS logits, or None for the baselines
    sizes: (H, W) of each level's map
    params: [B, N, K] per-location parameters of an instance segmentation head
          (CondInst: its dynamic mask head's), or None
    mask_feats: [B, D, H3, W3] the mask branch's map at P3's size (CondInst), or None
    """

    cls: Tensor
    reg: Tensor
    ctr: Tensor | None
    pss: Tensor | None
    sizes: list[tuple[int, int]]
    params: Tensor | None = None
    mask_feats: Tensor | None = None


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups (fewer for narrow heads, keeping >= 2 channels a group)."""
    return nn.GroupNorm(math.gcd(32, max(channels // 2, 1)), channels)


def conv_tower(channels: int, num_convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers += [
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            group_norm(channels),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers)


class Scale(nn.Module):
    """A learnable scalar multiplier (one per FPN level)."""

    def __init__(self, value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(value))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class PSSHead(nn.Module):
    """Positive sample selector: ``num_convs`` conv-GN-ReLU, then a 1-channel conv."""

    def __init__(self, channels: int, num_convs: int = 2) -> None:
        super().__init__()
        self.convs = conv_tower(channels, num_convs)
        self.out = nn.Conv2d(channels, 1, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.convs(x))


def flatten_levels(maps: list[Tensor]) -> Tensor:
    """[B, K, H, W] per level -> [B, sum(H * W), K] (a view of each map, contiguous or
    channels-last, until the one copy that concatenates them)."""
    return torch.cat([m.permute(0, 2, 3, 1).flatten(1, 2) for m in maps], dim=1)


class DenseHead(nn.Module):
    """FCOS / ATSS's head; a subclass changes the box output's width (``box_channels``)
    and the per-location quality (:meth:`quality_logits`, center-ness here)."""

    def __init__(
        self,
        cfg: ModelConfig,
        num_levels: int = 5,
        box_channels: int = 4,
        centerness: bool | None = None,
    ) -> None:
        """``centerness``: build the center-ness branch (None: ``cfg.head.centerness``)."""
        super().__init__()
        ch, n = cfg.head.channels, cfg.head.num_convs
        centerness = cfg.head.centerness if centerness is None else centerness
        self.cls_tower = conv_tower(ch, n)
        self.reg_tower = conv_tower(ch, n)
        self.cls_logits = nn.Conv2d(ch, cfg.num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(ch, box_channels, 3, padding=1)
        self.centerness = nn.Conv2d(ch, 1, 3, padding=1) if centerness else None
        self.scales = nn.ModuleList(Scale() for _ in range(num_levels))
        self.pss = PSSHead(ch, cfg.pss.num_convs) if cfg.has_pss else None
        self.pss_from_cls = cfg.pss.branch == "classification"
        self.stop_grad = cfg.pss.stop_grad
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        prior = cfg.head.prior_prob
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior) / prior))

    def quality_logits(self, reg_feat: Tensor, box: Tensor) -> Tensor | None:
        """One level's per-location quality logits [B, 1, H, W] (center-ness), or None
        without the branch. reg_feat: the reg tower's output; box: the box output."""
        return None if self.centerness is None else self.centerness(reg_feat)

    def location_params(self, reg_feat: Tensor) -> Tensor | None:
        """One level's per-location parameters [B, K, H, W] of an instance segmentation
        head (CondInst's controller), None for box detectors."""
        return None

    def forward(self, feats: list[Tensor]) -> HeadOutputs:
        cls, reg, ctr, pss, params = [], [], [], [], []
        for feat, scale in zip(feats, self.scales):
            cls_feat = self.cls_tower(feat)
            reg_feat = self.reg_tower(feat)
            box = scale(self.bbox_pred(reg_feat))
            cls.append(self.cls_logits(cls_feat))
            reg.append(box)
            quality = self.quality_logits(reg_feat, box)
            if quality is not None:
                ctr.append(quality)
            level_params = self.location_params(reg_feat)
            if level_params is not None:
                params.append(level_params)
            if self.pss is not None:
                pss_in = cls_feat if self.pss_from_cls else reg_feat
                pss.append(self.pss(pss_in.detach() if self.stop_grad else pss_in))
        return HeadOutputs(
            cls=flatten_levels(cls),
            reg=flatten_levels(reg),
            ctr=flatten_levels(ctr).squeeze(-1) if ctr else None,
            pss=flatten_levels(pss).squeeze(-1) if pss else None,
            sizes=[tuple(f.shape[-2:]) for f in feats],
            params=flatten_levels(params) if params else None,
        )
