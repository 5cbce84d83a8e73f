"""Pictures of detections: one image with its boxes, and raw / nms / e2e side by side.

    panel = draw_detections(image, det, categories, score_thresh=0.3)        # PIL image
    figure = draw_modes("outputs/run/last.pth", ["a.jpg", "b.jpg"], "modes.png")

:func:`draw_modes` is the picture of what PSS removes: for each image (a row),
the detections of ``raw`` (the base scores without NMS: duplicates), ``nms``
and ``e2e`` (no NMS) of one trained checkpoint, every box with its class and
score (and, for an instance segmentation model, its mask: semi-transparent, outlined).
``pss.predict`` draws its PNGs with :func:`draw_detections`, ``pss.visualize`` is
:func:`draw_modes` on the command line.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from pss.deploy.inference import (
    Category,
    ImageTooLarge,
    LoadedModel,
    TorchRunner,
    load_model,
    read_image,
)
from pss.errors import UserError
from pss.models.decode import Detections, modes_for

# Columns of draw_modes, left to right, and what each one shows.
MODE_TITLES = {
    "raw": "raw: base score, no NMS",
    "nms": "nms: base score + NMS",
    "e2e": "e2e: PSS score, no NMS",
}
SCORE_THRESH = 0.3  # default: boxes drawn (and written by pss.predict) score above this
MIN_SIDE = 384  # small images are enlarged to this shorter side, so labels stay readable
FONT_SIZE = 14
MASK_OPACITY = 0.45  # of a mask's fill (its outline is opaque)
# Distinct colours for classes (tab10), cycled.
PALETTE = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)


def check_score_thresh(value: float) -> float:
    """``--score-thresh`` of pss.predict and pss.visualize: scores lie in [0, 1], so a
    threshold outside it (or nan) would keep every box or none."""
    if not 0 <= value <= 1:  # also False for nan
        raise UserError(f"--score-thresh must be a score from 0 to 1, got {value:g}")
    return value


def showcase_images(coco: dict[str, Any], count: int = 3) -> list[str]:
    """File names of the first ``count`` images (by id) of a COCO annotation dict holding
    at least three objects (not crowds), so that raw's duplicates show; the first images
    if none does."""
    objects: dict[int, int] = {}
    for ann in coco.get("annotations", []):
        if not ann.get("iscrowd", 0):
            objects[ann["image_id"]] = objects.get(ann["image_id"], 0) + 1
    images = sorted(coco["images"], key=lambda im: im["id"])
    busy = [im for im in images if objects.get(im["id"], 0) >= 3] or images
    return [im["file_name"] for im in busy[:count]]


def _font(size: int = FONT_SIZE) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def draw_detections(
    image: Image.Image,
    det: Detections,
    categories: Sequence[Category],
    score_thresh: float = SCORE_THRESH,
    min_side: int = MIN_SIDE,
) -> Image.Image:
    """A copy of ``image`` with the boxes scoring above ``score_thresh``, labelled 'name 0.87'.

    ``det`` holds boxes [K, 4] in the image's pixels, scores [K], labels [K], and
    optionally masks [K, h, w] (bool, the image's pixels): filled semi-transparent in the
    class colour and outlined. Images whose shorter side is under ``min_side`` are
    enlarged first. Labels
    sit above their box (inside it at the top edge); a label that would cover
    a better-scoring one moves down inside its box until it does not (or stays,
    under it, when the box has no room). Better boxes are drawn last, on top.
    """
    zoom = max(1.0, min_side / min(image.size))
    canvas = image.convert("RGB")
    if zoom > 1:
        canvas = canvas.resize(
            (round(image.width * zoom), round(image.height * zoom)), Image.BILINEAR
        )
    keep = det["scores"] > score_thresh
    if "masks" in det:
        canvas = _draw_masks(canvas, det["masks"][keep], det["labels"][keep], det["scores"][keep])
    draw = ImageDraw.Draw(canvas)
    font = _font()
    boxes = (det["boxes"][keep] * zoom).tolist()
    scores, labels = det["scores"][keep].tolist(), det["labels"][keep].tolist()
    order = sorted(range(len(scores)), key=lambda i: -scores[i])  # best first
    placed: list[tuple[float, float, float, float]] = []
    tags = {}
    for i in order:
        text = f"{categories[int(labels[i])].name} {scores[i]:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left + 4, bottom - top + 4
        x1, y1, _, y2 = boxes[i]
        ty = y1 - th if y1 - th >= 0 else y1  # above the box, inside it at the top edge
        tx = min(max(x1, 0), canvas.width - tw)
        room = int(max(y2 - ty, 0) // th)  # label rows down to the box's bottom
        free = (y for y in (ty + k * th for k in range(room)) if _free((tx, y, tw, th), placed))
        ty = next(free, ty)
        placed.append((tx, ty, tx + tw, ty + th))
        tags[i] = (text, (tx, ty, tx + tw, ty + th), (tx + 2 - left, ty + 2 - top))
    for i in reversed(order):
        draw.rectangle(boxes[i], outline=PALETTE[int(labels[i]) % len(PALETTE)], width=2)
    for i in reversed(order):
        text, rect, origin = tags[i]
        draw.rectangle(rect, fill=PALETTE[int(labels[i]) % len(PALETTE)])
        draw.text(origin, text, fill=(255, 255, 255), font=font)
    return canvas


def _draw_masks(
    canvas: Image.Image, masks: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor
) -> Image.Image:
    """``canvas`` with masks [K, h, w] (bool, the image's pixels; the canvas may be an
    enlargement) filled at ``MASK_OPACITY`` and outlined in their class colours, the best
    scoring on top."""
    pixels = np.asarray(canvas, dtype=np.float32).copy()
    size = canvas.size
    for k in torch.argsort(scores).tolist():  # worst first: the best is drawn last
        mask = np.asarray(
            Image.fromarray(masks[k].cpu().numpy().astype(np.uint8) * 255).resize(size)
        ) > 127
        colour = np.array(PALETTE[int(labels[k]) % len(PALETTE)], dtype=np.float32)
        pixels[mask] = (1 - MASK_OPACITY) * pixels[mask] + MASK_OPACITY * colour
        inner = mask.copy()  # a pixel all of whose 4 neighbours are in the mask
        inner[1:] &= mask[:-1]
        inner[:-1] &= mask[1:]
        inner[:, 1:] &= mask[:, :-1]
        inner[:, :-1] &= mask[:, 1:]
        pixels[mask & ~inner] = colour
    return Image.fromarray(pixels.round().astype(np.uint8))


def _free(label: tuple[float, float, float, float], placed: list[tuple[float, ...]]) -> bool:
    """Whether a label (x, y, width, height) covers none of the ``placed`` (x1, y1, x2, y2)."""
    x, y, w, h = label
    return not any(x < r[2] and r[0] < x + w and y < r[3] and r[1] < y + h for r in placed)


def _header(text: str, width: int) -> Image.Image:
    font = _font(FONT_SIZE + 2)
    strip = Image.new("RGB", (width, FONT_SIZE + 14), (255, 255, 255))
    ImageDraw.Draw(strip).text((6, 5), text, fill=(0, 0, 0), font=font)
    return strip


def draw_modes(
    model: LoadedModel | str | Path,
    images: Sequence[str | Path | Image.Image],
    out: str | Path | None = None,
    score_thresh: float = SCORE_THRESH,
    modes: Sequence[str] = ("raw", "nms", "e2e"),
) -> Image.Image:
    """One row per image, one column per mode: the same checkpoint's detections side by side.

    ``model``: a checkpoint path or a :class:`LoadedModel`. A model without a
    PSS head has no ``e2e`` column. Each panel's header says the mode and how
    many boxes score above ``score_thresh``. Written to ``out`` (PNG) if given.
    """
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    runners = {
        mode: TorchRunner(loaded, mode) for mode in modes_for(loaded.cfg.model.has_pss, modes)
    }
    return draw_runners(runners, loaded.categories, images, out, score_thresh)


def draw_runners(
    runners: Mapping[str, Callable[[Image.Image], Detections]],
    categories: Sequence[Category],
    images: Sequence[str | Path | Image.Image],
    out: str | Path | None = None,
    score_thresh: float = SCORE_THRESH,
) -> Image.Image:
    """:func:`draw_modes` for any detector: ``runners`` maps a mode to a function from an
    image to its detections in the image's pixels (labels index ``categories``)."""
    rows = []
    for item in images:
        try:
            image = item if isinstance(item, Image.Image) else read_image(item)
        except ImageTooLarge as exc:
            print(f"warning: {exc}", file=sys.stderr)
            continue
        name = "" if isinstance(item, Image.Image) else f"{Path(item).name}  "
        panels = []
        for mode, runner in runners.items():
            det = runner(image)
            panel = draw_detections(image, det, categories, score_thresh)
            count = int((det["scores"] > score_thresh).sum())
            header = _header(f"{name}{MODE_TITLES[mode]} ({count} > {score_thresh:g})", panel.width)
            panels.append((header, panel))
        rows.append(panels)
    if not rows:
        raise UserError("no image could be read (every one was skipped)", str(images[0]))
    gap = 6
    width = max(sum(p.width for _, p in row) + gap * (len(row) - 1) for row in rows)
    height = sum(max(h.height + p.height for h, p in row) for row in rows) + gap * (len(rows) - 1)
    figure = Image.new("RGB", (width, height), (255, 255, 255))
    y = 0
    for row in rows:
        x = 0
        for header, panel in row:
            figure.paste(header, (x, y))
            figure.paste(panel, (x, y + header.height))
            x += panel.width + gap
        y += max(h.height + p.height for h, p in row) + gap
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        figure.save(out)
    return figure
