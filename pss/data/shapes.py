"""A synthetic COCO-format detection dataset of circles, squares and triangles.

    python -m pss.data.shapes OUT --train 200 --val 50 --seed 0 --size 256

writes ``OUT/train/*.png``, ``OUT/val/*.png``, ``OUT/annotations/train.json``
and ``OUT/annotations/val.json`` (real COCO json: pycocotools reads it and
``COCOeval`` scores against it).

Each image is ``size`` x ``size`` RGB: a textured background (two-colour
gradient, low-frequency colour noise, a few distractor lines and blurry
blobs that are *not* objects), then 1-8 filled shapes drawn one over the
other, then pixel noise. The class is the shape (colours are random):
circle (id 1), square (id 3), triangle (id 7); the ids are deliberately not
0-based or contiguous. Shapes are mildly stretched and rotated, their sides
spread log-uniformly from ~12 px to ~200 px at 256 px (FPN strides 8-128;
``sides`` sets another range, in pixels of the image), and later shapes
occlude earlier ones. A shape that would hide more than
60% of an earlier one is re-drawn elsewhere, so every shape in the image is
annotated and none is mostly hidden. ``bbox`` is the full shape's box,
``segmentation`` the exact mask of its visible pixels (compressed RLE, the
pixels the image shows in its colour) and ``area`` their count.

Everything about image ``index`` of ``split`` comes from one numpy Generator
seeded with ``(seed, split, index)``: the same seed gives byte-identical
files whatever the process or worker count; another seed gives other data.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

from pss.config import SyntheticConfig
from pss.data.masks import encode_masks
from pss.errors import EXIT_INVALID, UserError

SHAPE_CATEGORIES: list[dict[str, Any]] = [
    {"id": 1, "name": "circle", "supercategory": "shape"},
    {"id": 3, "name": "square", "supercategory": "shape"},
    {"id": 7, "name": "triangle", "supercategory": "shape"},
]
SPLITS = {"train": 0, "val": 1}
GENERATOR = "pss.data.shapes"

# Default sides, for a 256 px image; they scale with the image size (default_sides).
MIN_SIDE, MAX_SIDE = 12.0, 200.0
MAX_OBJECTS = 8
MAX_HIDDEN = 0.6  # a shape may lose at most this fraction of its pixels to later shapes
MIN_CONTRAST = 80.0  # RGB distance between a shape and what lies under it
TRIES = 12

# Unit outlines (centred at 0, extent ~1) for each category, in SHAPE_CATEGORIES order.
_CIRCLE = np.stack([np.cos(t := np.linspace(0, 2 * np.pi, 48, endpoint=False)), np.sin(t)], 1)
_SQUARE = np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]) * (math.sqrt(math.pi) / 2)
# The triangle's larger circumradius gives it a visual size similar to the circle's.
_TRIANGLE = np.stack([np.cos(t := np.deg2rad([90.0, 210.0, 330.0])), np.sin(t)], 1) * 1.3
OUTLINES = (_CIRCLE, _SQUARE, _TRIANGLE)


# ----------------------------------------------------------------------------
# Rendering


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """[size, size, 3] float32 in 0..255: gradient + colour texture + distractors."""
    c0, c1 = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    theta = rng.uniform(0, 2 * np.pi)
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    t = np.cos(theta) * ramp[None, :] + np.sin(theta) * ramp[:, None]
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    bg = c0 * (1 - t[..., None]) + c1 * t[..., None]

    # Low-frequency colour texture: coarse noise, upsampled smoothly.
    cells = int(rng.integers(4, 12))
    coarse = rng.normal(0.0, rng.uniform(8, 25), (cells, cells, 3)).astype(np.float32)
    layers = [
        np.asarray(Image.fromarray(coarse[..., k], "F").resize((size, size), Image.BICUBIC))
        for k in range(3)
    ]
    bg = bg + np.stack(layers, -1)

    # Blurry blobs: soft Gaussian spots, clearly unlike the hard-edged shapes.
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for _ in range(int(rng.integers(0, 4))):
        cx, cy = rng.uniform(0, size, 2)
        sigma = rng.uniform(0.03, 0.12) * size
        dist2 = ((xx - np.float32(cx)) ** 2 + (yy - np.float32(cy)) ** 2) / np.float32(2 * sigma**2)
        alpha = np.float32(rng.uniform(0.3, 0.7)) * np.exp(-dist2)
        colour = rng.uniform(0, 255, 3).astype(np.float32)
        bg = bg * (1 - alpha[..., None]) + colour * alpha[..., None]

    # Distractor lines and polylines.
    canvas = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(1, 5))):
        points = rng.uniform(-0.1 * size, 1.1 * size, (int(rng.integers(2, 4)), 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        width = max(1, round(rng.uniform(1, 3) * size / 256))
        draw.line([tuple(p) for p in points.tolist()], fill=colour, width=width)
    return np.asarray(canvas, dtype=np.float32)


def default_sides(size: int) -> tuple[float, float]:
    """The shortest and longest object side (px) of a ``size`` px image by default."""
    return MIN_SIDE * size / 256.0, MAX_SIDE * size / 256.0


def _outline(
    rng: np.random.Generator, category: int, size: int, sides: tuple[float, float]
) -> tuple[np.ndarray, tuple[float, float, float, float]] | None:
    """A shape's polygon [K, 2] placed inside the image, and its (x, y, w, h) box."""
    side = math.exp(rng.uniform(math.log(sides[0]), math.log(sides[1])))
    aspect = math.exp(rng.uniform(math.log(0.8), math.log(1.25)))
    angle = rng.uniform(0, 2 * np.pi)
    pts = OUTLINES[category] * (side / 2) * np.array([math.sqrt(aspect), 1 / math.sqrt(aspect)])
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    pts = pts @ rot.T
    lo, hi = pts.min(0), pts.max(0)
    if np.any(hi - lo > size - 2):
        return None
    centre = rng.uniform(1 - lo, size - 1 - hi)
    pts = pts + centre
    lo, hi = pts.min(0), pts.max(0)
    return pts, (float(lo[0]), float(lo[1]), float(hi[0] - lo[0]), float(hi[1] - lo[1]))


def render(
    seed: int, split: str, index: int, size: int, sides: tuple[float, float] | None = None
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Image ``index`` of ``split``: pixels [size, size, 3] uint8 and its objects.

    Each object is ``{"category_id", "bbox": [x, y, w, h], "area", "segmentation"}``
    (area = visible pixels, segmentation = their mask as compressed RLE), in drawing
    order. ``sides``: the objects' side range in
    pixels (default: :func:`default_sides`).
    """
    sides = sides or default_sides(size)
    rng = np.random.default_rng([seed, SPLITS[split], index])
    image = _background(rng, size)
    owner = np.full((size, size), -1, dtype=np.int32)  # which object each pixel shows
    colours: list[np.ndarray] = []
    full: list[int] = []  # pixel count of each object as drawn
    objects: list[dict[str, Any]] = []

    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        for _try in range(TRIES):
            category = int(rng.integers(len(SHAPE_CATEGORIES)))
            placed = _outline(rng, category, size, sides)
            if placed is None:
                continue
            pts, bbox = placed
            x0, y0 = (int(v) for v in np.floor(pts.min(0)))
            x1, y1 = (int(v) + 1 for v in np.ceil(pts.max(0)))
            patch = Image.new("L", (x1 - x0, y1 - y0), 0)
            ImageDraw.Draw(patch).polygon([tuple(p) for p in (pts - [x0, y0]).tolist()], fill=1)
            mask = np.asarray(patch, dtype=bool)
            if mask.sum() < 0.25 * sides[0] ** 2:
                continue
            under = owner[y0:y1, x0:x1][mask]
            covered = np.bincount(under + 1, minlength=len(objects) + 1)[1:]
            visible = np.bincount(owner[owner >= 0], minlength=len(objects))
            if any(v - c < (1 - MAX_HIDDEN) * f for v, c, f in zip(visible, covered, full)):
                continue  # would hide an earlier shape too much: try another
            region = image[y0:y1, x0:x1]
            # Contrast against the background under it and every shape it overlaps.
            refs = [region[mask].mean(0)] + [colours[j] for j in np.flatnonzero(covered)]
            colour = rng.uniform(0, 255, 3)
            for _c in range(TRIES):
                if all(np.linalg.norm(colour - r) >= MIN_CONTRAST for r in refs):
                    break
                colour = rng.uniform(0, 255, 3)
            # Mild linear shading across the shape.
            gx, gy = np.meshgrid(np.arange(x0, x1), np.arange(y0, y1))
            direction = rng.normal(size=2)
            ramp = (gx - (x0 + x1) / 2) * direction[0] + (gy - (y0 + y1) / 2) * direction[1]
            ramp = ramp / max(x1 - x0, y1 - y0, 1) * rng.uniform(0, 40)
            fill = colour[None, None, :] + ramp[..., None]
            region[mask] = fill[mask]
            owner[y0:y1, x0:x1][mask] = len(objects)
            colours.append(colour)
            full.append(int(mask.sum()))
            objects.append({"category_id": SHAPE_CATEGORIES[category]["id"], "bbox": list(bbox)})
            break

    visible = np.bincount(owner[owner >= 0], minlength=len(objects))
    masks = owner[None] == np.arange(len(objects))[:, None, None]  # [K, size, size]
    for obj, area, rle in zip(objects, visible, encode_masks(masks)):
        obj["area"] = float(area)
        obj["bbox"] = [round(v, 2) for v in obj["bbox"]]
        obj["segmentation"] = rle
    noise = rng.standard_normal(image.shape, dtype=np.float32) * np.float32(rng.uniform(3, 10))
    image = np.clip(image + noise, 0, 255)
    if rng.random() < 0.3:  # some images slightly blurred
        blurred = Image.fromarray(image.astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.8))
        return np.asarray(blurred), objects
    return image.astype(np.uint8), objects


# ----------------------------------------------------------------------------
# Writing


def write_split(
    out: Path,
    split: str,
    count: int,
    seed: int,
    size: int,
    progress: bool = False,
    info: dict[str, Any] | None = None,
    sides: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """Render ``count`` images into ``out/split/`` and return the COCO dict for them."""
    folder = out / split
    folder.mkdir(parents=True, exist_ok=True)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    bar = tqdm(range(count), desc=f"shapes {split}", unit="img", disable=not progress, leave=False)
    for index in bar:
        pixels, objects = render(seed, split, index, size, sides)
        name = f"{index:06d}.png"
        Image.fromarray(pixels, "RGB").save(folder / name, compress_level=1)
        image_id = index + 1
        images.append({"id": image_id, "file_name": name, "width": size, "height": size})
        for obj in objects:
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "iscrowd": 0, **obj}
            )
    return {
        "info": {
            "description": "PSS synthetic shapes",
            "generator": GENERATOR,
            "split": split,
            "seed": seed,
            "size": size,
            "sides": list(sides or default_sides(size)),
            **(info or {}),
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": SHAPE_CATEGORIES,
    }


def generate(
    out: Path,
    train: int,
    val: int,
    seed: int = 0,
    size: int = 256,
    progress: bool = False,
    sides: tuple[float, float] | None = None,
) -> None:
    """Write the whole dataset into ``out`` (val.json last: its presence marks completion)."""
    out = Path(out)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    for split, count in (("train", train), ("val", val)):
        counts = {"counts": {"train": train, "val": val}}
        coco = write_split(out, split, count, seed, size, progress, counts, sides)
        (out / "annotations" / f"{split}.json").write_text(json.dumps(coco))


def _sides(cfg: SyntheticConfig) -> tuple[float, float]:
    return tuple(cfg.sides) if cfg.sides else default_sides(cfg.size)  # type: ignore[return-value]


def _settings(cfg: SyntheticConfig) -> dict[str, Any]:
    sides = list(_sides(cfg))
    return {"seed": cfg.seed, "size": cfg.size, "sides": sides, "train": cfg.train, "val": cfg.val}


def _existing_settings(val_json: Path) -> dict[str, Any] | None:
    try:
        info = json.loads(val_json.read_text()).get("info", {})
        counts = info["counts"]
        # Datasets written before `sides` existed have the default sides.
        sides = info.get("sides", list(default_sides(info["size"])))
        return {"seed": info["seed"], "size": info["size"], "sides": sides, **counts}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def ensure_shapes(root: Path, cfg: SyntheticConfig) -> None:
    """Generate the shapes dataset into ``root`` unless ``root/annotations/val.json`` exists.

    Safe when several processes call it at once: each writes into a private
    temporary folder beside ``root`` and renames it into place; the first
    rename wins and the others discard their copy. Data already in ``root``
    that was generated with other settings is a :class:`UserError` (it would
    silently train on something else than the config says).
    """
    root = Path(root)
    marker = root / "annotations" / "val.json"
    if not marker.exists():
        root.parent.mkdir(parents=True, exist_ok=True)
        # Not tempfile.mkdtemp: its 0700 mode would stay on the renamed folder.
        tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            generate(tmp, cfg.train, cfg.val, cfg.seed, cfg.size, sys.stderr.isatty(), _sides(cfg))
            try:
                os.rename(tmp, root)  # atomic; replaces an empty root folder
            except OSError:
                if not marker.exists():
                    raise UserError(
                        "exists but holds no shapes dataset (no annotations/val.json); "
                        "remove it or point data.root elsewhere",
                        str(root),
                    ) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    found = _existing_settings(marker)
    if found is None:
        raise UserError(
            "holds an annotations/val.json not written by pss.data.shapes; "
            "remove the folder or point data.root elsewhere",
            str(root),
        )
    if found != _settings(cfg):
        raise UserError(
            f"holds a shapes dataset generated with {found}, but data.synthetic asks for "
            f"{_settings(cfg)}; remove the folder or point data.root elsewhere",
            str(root),
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pss.data.shapes", description=__doc__.split("\n")[0]
    )
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("--train", type=int, default=200, help="number of training images")
    parser.add_argument("--val", type=int, default=50, help="number of validation images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument(
        "--sides",
        type=float,
        nargs=2,
        metavar=("MIN", "MAX"),
        help="object sides in pixels (default: 12-200 at 256 px, scaled with --size)",
    )
    args = parser.parse_args(argv)
    if args.train < 1 or args.val < 1 or args.size < 32:
        print("error: --train and --val must be >= 1 and --size >= 32", file=sys.stderr)
        return EXIT_INVALID
    try:
        cfg = SyntheticConfig(
            train=args.train, val=args.val, seed=args.seed, size=args.size, sides=args.sides
        )
    except ValueError as exc:
        print(f"error: --sides: {exc.errors()[0]['msg']}", file=sys.stderr)
        return EXIT_INVALID
    generate(args.out, cfg.train, cfg.val, cfg.seed, cfg.size, sys.stderr.isatty(), _sides(cfg))
    print(f"wrote {args.train} train + {args.val} val images to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
