"""Data: COCO-format datasets and loaders, detection transforms, synthetic shapes.

    from pss.data import build_dataset, build_loader, set_epoch

Names are imported on first use (PEP 562), so ``python -m pss.data.shapes``
does not import its own module twice and ``import pss.data`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pss.data.coco import (
        CocoDetection,
        build_dataset,
        build_loader,
        check_image_files,
        collate,
        load_coco,
        read_annotations,
        set_epoch,
        validate_annotations,
    )
    from pss.data.shapes import SHAPE_CATEGORIES, ensure_shapes, generate, render
    from pss.data.transforms import (
        Compose,
        HorizontalFlip,
        Normalize,
        RandomResize,
        build_transforms,
        resized_shape,
    )

__all__ = [
    "SHAPE_CATEGORIES",
    "CocoDetection",
    "Compose",
    "HorizontalFlip",
    "Normalize",
    "RandomResize",
    "build_dataset",
    "build_loader",
    "build_transforms",
    "check_image_files",
    "collate",
    "ensure_shapes",
    "generate",
    "load_coco",
    "read_annotations",
    "render",
    "resized_shape",
    "set_epoch",
    "validate_annotations",
]

_MODULES = ("pss.data.shapes", "pss.data.transforms", "pss.data.coco")  # cheapest first


def __getattr__(name: str) -> Any:
    if name in __all__:
        for module in _MODULES:
            value = getattr(importlib.import_module(module), name, None)
            if value is not None:
                globals()[name] = value
                return value
    raise AttributeError(f"module 'pss.data' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
