"""Instance masks in COCO's formats, through pycocotools (numpy only, no torch).

    mask = decode_segmentation(ann["segmentation"], height, width)   # [H, W] uint8
    rles = encode_masks(masks)                 # masks [K, H, W] bool -> K RLE dicts (JSON)

COCO writes an object's ``segmentation`` as polygons (a list of [x1, y1, x2, y2, ...]
in pixels), as uncompressed RLE (``{"size": [h, w], "counts": [int, ...]}``, crowd
regions) or as compressed RLE (``counts`` a string). :func:`decode_segmentation` reads
all three; :func:`encode_masks` writes compressed RLE with ``counts`` as a str, what
``json`` can store and ``COCO.loadRes`` reads.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as mask_utils


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """One object's mask [height, width] uint8 (0 / 1) from its COCO ``segmentation``.

    Polygons are rasterised at (height, width); an RLE's own size must be that size
    (ValueError otherwise, naming both).
    """
    if isinstance(segmentation, list):  # polygons: one RLE each, merged
        polygons = [p for p in segmentation if len(p) >= 6]
        if not polygons:
            return np.zeros((height, width), dtype=np.uint8)
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(segmentation, dict) and "counts" in segmentation:
        size = list(segmentation.get("size", []))
        if size != [height, width]:
            raise ValueError(f"an RLE of size {size} on an image of size {[height, width]}")
        rle = segmentation
        if isinstance(segmentation["counts"], list):  # uncompressed (crowd regions)
            rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        raise ValueError(
            "a segmentation must be a list of polygons or an RLE dict with 'counts', "
            f"got {type(segmentation).__name__}"
        )
    return mask_utils.decode(rle).astype(np.uint8)


def encode_masks(masks: np.ndarray) -> list[dict[str, Any]]:
    """Compressed RLEs (``counts`` a str) of masks [K, H, W] (bool or 0 / 1)."""
    if len(masks) == 0:
        return []
    fortran = np.asfortranarray(np.asarray(masks, dtype=np.uint8).transpose(1, 2, 0))
    rles = mask_utils.encode(fortran)
    return [
        {"size": [int(v) for v in r["size"]], "counts": r["counts"].decode("ascii")} for r in rles
    ]
