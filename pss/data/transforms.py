"""Detection transforms on (PIL image, target) pairs, random only through an explicit RNG.

Every transform is called as ``t(image, target, rng)`` where ``rng`` is a
``random.Random`` made for that one sample (see ``CocoDetection``), never the
global RNG: a sample's augmentation is then a pure function of (seed, epoch,
index), whatever the DataLoader's worker count.

``target`` is a dict holding at least ``boxes`` [M, 4] float32 (x1, y1, x2,
y2 in the current image's pixels), and for instance segmentation ``masks``
[M, h, w] uint8 (0 / 1, the current image's size), kept aligned with the boxes;
the transforms keep ``size`` (h, w) of the current image and ``scale`` (current /
original size) up to date.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from pss.config import DataConfig
from pss.errors import UserError

# ImageNet statistics, RGB in [0, 1]; every supported backbone was trained with them.
PIXEL_MEAN = (0.485, 0.456, 0.406)
PIXEL_STD = (0.229, 0.224, 0.225)

Target = dict[str, Any]
Transform = Callable[[Any, Target, random.Random], tuple[Any, Target]]


def resize_masks(masks: Tensor, height: int, width: int) -> Tensor:
    """Masks [M, h, w] uint8 resized to [M, height, width] uint8: bilinear (pixel
    centres aligned, as the image's resize), then >= 0.5."""
    if masks.shape[-2:] == (height, width):
        return masks
    if len(masks) == 0:
        return masks.new_zeros((0, height, width))
    soft = F.interpolate(
        masks[None].float(), size=(height, width), mode="bilinear", align_corners=False
    )
    return (soft[0] >= 0.5).to(torch.uint8)


def resized_shape(
    height: int, width: int, short: int, max_size: int | None
) -> tuple[int, int, float]:
    """(new_h, new_w, scale): shorter side -> ``short``, longer side at most ``max_size``."""
    scale = short / min(height, width)
    if max_size is not None and max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    new_h = max(1, int(height * scale + 0.5))
    new_w = max(1, int(width * scale + 0.5))
    return new_h, new_w, scale


class RandomResize:
    """Resize: shorter side drawn from ``scales`` with rng, longer side at most ``max_size``.

    Boxes are multiplied by the one float ``scale`` (not the per-axis ratios
    of the rounded size, which differ by < 0.5 px), so that original boxes are
    exactly ``boxes / target["scale"]``; masks take the image's new size
    (:func:`resize_masks`).
    """

    def __init__(self, scales: Sequence[int], max_size: int | None = None) -> None:
        if not scales:
            raise ValueError("RandomResize needs at least one scale")
        self.scales = list(scales)
        self.max_size = max_size

    def __call__(
        self, image: Image.Image, target: Target, rng: random.Random
    ) -> tuple[Image.Image, Target]:
        short = rng.choice(self.scales)
        width, height = image.size
        new_h, new_w, scale = resized_shape(height, width, short, self.max_size)
        if (new_h, new_w) != (height, width):
            image = image.resize((new_w, new_h), Image.BILINEAR)
        target = dict(target)
        target["boxes"] = target["boxes"] * scale
        if "masks" in target:
            target["masks"] = resize_masks(target["masks"], new_h, new_w)
        target["size"] = (new_h, new_w)
        target["scale"] = target.get("scale", 1.0) * scale
        return image, target


class HorizontalFlip:
    """Mirror left-right with probability ``p``: x1, x2 -> W - x2, W - x1 (masks mirrored)."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(
        self, image: Image.Image, target: Target, rng: random.Random
    ) -> tuple[Image.Image, Target]:
        if rng.random() >= self.p:  # always draws, so later draws do not depend on p
            return image, target
        width = image.size[0]
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
        target = dict(target)
        boxes = target["boxes"].clone()
        boxes[:, 0], boxes[:, 2] = width - target["boxes"][:, 2], width - target["boxes"][:, 0]
        target["boxes"] = boxes
        if "masks" in target:
            target["masks"] = target["masks"].flip(-1)
        target["flipped"] = not target.get("flipped", False)
        return image, target


class Normalize:
    """PIL RGB image -> float32 tensor [3, H, W]: /255, then (x - mean) / std (ImageNet)."""

    def __init__(
        self, mean: Sequence[float] = PIXEL_MEAN, std: Sequence[float] = PIXEL_STD
    ) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]

    def __call__(
        self, image: Image.Image, target: Target, rng: random.Random
    ) -> tuple[Tensor, Target]:
        array = np.asarray(image.convert("RGB"), dtype=np.uint8)
        tensor = torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)
        return (tensor - self.mean) / self.std, target


class Compose:
    """Apply transforms in order, passing the same per-sample rng along."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: Any, target: Target, rng: random.Random) -> tuple[Any, Target]:
        for t in self.transforms:
            image, target = t(image, target, rng)
        return image, target

    def __repr__(self) -> str:
        return f"Compose({', '.join(type(t).__name__ for t in self.transforms)})"


def build_transforms(cfg: DataConfig, train: bool) -> Compose:
    """Train: multi-scale resize + flip + normalise; eval: resize to ``test_scale`` + normalise."""
    if train:
        if not cfg.train_scales:
            raise UserError("data.train_scales is empty: give at least one shorter-side size")
        return Compose(
            [
                RandomResize(cfg.train_scales, cfg.max_size),
                HorizontalFlip(cfg.flip_prob),
                Normalize(),
            ]
        )
    return Compose([RandomResize([cfg.test_scale], cfg.max_size), Normalize()])
