"""Data: the data check, COCO-format datasets and loaders, detection transforms, shapes.

    from pss.data import build_dataset, build_loader, check_data, set_epoch

Names are imported on first use (PEP 562), so ``python -m pss.data.shapes``
and ``python -m pss.data.check`` do not import their own module twice, and
``import pss.data`` stays cheap (the check and the annotation readers need no
torch).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pss.data.check import (
        DataReport,
        check_data,
        check_image_files,
        read_annotations,
        validate_annotations,
    )
    from pss.data.coco import (
        CocoDetection,
        build_dataset,
        build_loader,
        collate,
        load_coco,
        set_epoch,
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
    "DataReport",
    "HorizontalFlip",
    "Normalize",
    "RandomResize",
    "build_dataset",
    "build_loader",
    "build_transforms",
    "check_data",
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

_MODULES = (  # cheapest first
    "pss.data.check",
    "pss.data.shapes",
    "pss.data.transforms",
    "pss.data.coco",
)


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
