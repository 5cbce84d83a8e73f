"""The data check at the door: what a usable COCO-format dataset is, checked before training.

    python -m pss.data.check CONFIG... [--set KEY=VALUE ...] [--decode] [--no-cache]

    report = check_data(cfg.data)   # a UserError listing every problem found, or
    log.info("%s", report)          # one summary line per split

Both splits of a config's dataset are checked, before anything trains (one
call, :func:`check_data`, before the first step). A split is refused when

- its annotation file is missing or malformed (:func:`read_annotations`),
- a listed image is missing from the image folder, cannot be read (Pillow
  cannot identify it, or with ``decode=True`` cannot decode it), or is not
  of the size (``width`` / ``height``) the annotation file gives it,
- it has no usable box.

Each box is usable or unusable for one reason (:func:`box_reasons`, also the
training set's filter in :class:`~pss.data.coco.CocoDetection`): *degenerate*
(under 1 px wide or high), *outside* (under 1 px of it inside the image), or
*normalised* (every box of the file lies within [0, 1] x [0, 1] while its
image is at least 8 px a side: the file holds relative coordinates, not
COCO's pixels). Crowd boxes are ignored in training, as always, and not
counted as problems. Unusable boxes are dropped and counted in the summary;
a negative width or height or a non-finite coordinate refuses the file.

Image sizes come from the file headers (Pillow's lazy open; about 0.1 ms an
image, spread over up to 8 processes); ``decode=True`` decodes every image
as well (a few ms an image), which also finds truncated or corrupt data
behind a good header.

A split that passes is cached in ``$XDG_CACHE_HOME/pss/data-check/``
(default ``~/.cache/pss/data-check/``), one small JSON file per (annotation
file, image folder), keyed by the annotation file's size and mtime and the
image folder's mtime (which changes when a file is added, removed or renamed
there); written atomically, so concurrent sweep cells may race. A 40-cell
sweep reads its images once. An image rewritten in place keeps the folder's
mtime and is not re-checked; a split with problems is never cached.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from pss.config import DataConfig, add_config_arguments, load_config
from pss.errors import EXIT_INVALID, EXIT_OK, UserError

# ----------------------------------------------------------------------------
# The annotation file


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string"}.get(
        type(value), type(value).__name__
    )


def read_annotations(ann_file: str | Path) -> dict[str, Any]:
    """Read and validate a COCO annotation file; every problem is one UserError naming it."""
    src = str(ann_file)
    try:
        text = Path(ann_file).read_bytes()
    except FileNotFoundError:
        raise UserError("annotation file not found", src) from None
    except OSError as exc:
        raise UserError(f"cannot read annotation file: {exc.strerror or exc}", src) from None
    if not text.strip():
        raise UserError("the annotation file is empty (expected a COCO JSON object)", src)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(
            f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})", src
        ) from None
    except UnicodeDecodeError:
        raise UserError("not valid JSON (not UTF-8 text)", src) from None
    validate_annotations(data, src)
    fill_area(data["annotations"])
    return data


def fill_area(annotations: Iterable[dict[str, Any]]) -> None:
    """Give each annotation without COCO's ``area`` its box's, ``w * h`` in square pixels.

    COCO evaluation sorts objects into small / medium / large by ``area`` and fails with
    ``KeyError: 'area'`` without it; many converters leave it out.
    """
    for ann in annotations:
        if "area" not in ann:
            ann["area"] = float(ann["bbox"][2] * ann["bbox"][3])


def _is_id(value: Any) -> bool:
    """An integer id that numpy's int64 (the datasets' arrays) can hold."""
    return type(value) is int and -(2**63) <= value < 2**63


def validate_annotations(data: Any, src: str) -> None:
    """Check the structure pycocotools and the dataset rely on (fast for COCO-size files)."""
    if not isinstance(data, dict):
        raise UserError(
            f"a COCO annotation file must be a JSON object, got {_type_name(data)}", src
        )
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise UserError(f"missing top-level key '{key}'", src)
        if not isinstance(data[key], list):
            raise UserError(f"'{key}' must be a list, got {_type_name(data[key])}", src)
    if not data["images"]:
        raise UserError("'images' is empty: the dataset has no images", src)
    if not data["categories"]:
        raise UserError("'categories' is empty: the dataset has no classes", src)

    image_ids: set[int] = set()
    for i, img in enumerate(data["images"]):
        if type(img) is not dict:
            raise UserError(f"images[{i}] must be an object, got {_type_name(img)}", src)
        if not _is_id(img.get("id")):
            raise UserError(
                f"images[{i}]: 'id' must be an integer of 64 bits at most, got {img.get('id')!r}",
                src,
            )
        if type(img.get("file_name")) is not str or not img["file_name"]:
            raise UserError(
                f"images[{i}] (id {img['id']}): 'file_name' must be a non-empty string, "
                f"got {img.get('file_name')!r}",
                src,
            )
        if img["id"] in image_ids:
            raise UserError(f"duplicate image id {img['id']} (images[{i}])", src)
        image_ids.add(img["id"])
        for side in ("width", "height"):
            value = img.get(side, 1)
            if type(value) not in (int, float) or not (math.isfinite(value) and value >= 1):
                raise UserError(
                    f"images[{i}] (id {img['id']}): '{side}' must be a positive number of "
                    f"pixels, got {value!r}",
                    src,
                )

    cat_ids: set[int] = set()
    for i, cat in enumerate(data["categories"]):
        if type(cat) is not dict or not _is_id(cat.get("id")):
            raise UserError(
                f"categories[{i}] must be an object with an integer 'id' (64 bits at most)", src
            )
        if cat["id"] in cat_ids:
            raise UserError(f"duplicate category id {cat['id']} (categories[{i}])", src)
        cat_ids.add(cat["id"])

    ann_ids: set[int] = set()
    for i, ann in enumerate(data["annotations"]):
        if type(ann) is not dict:
            raise UserError(f"annotations[{i}] must be an object, got {_type_name(ann)}", src)
        ann_id = ann.get("id")
        where = f"annotations[{i}] (id {ann_id})"
        if not _is_id(ann_id):
            raise UserError(
                f"annotations[{i}]: 'id' must be an integer of 64 bits at most, got {ann_id!r}",
                src,
            )
        if ann_id in ann_ids:
            raise UserError(f"duplicate annotation id {ann_id} (annotations[{i}])", src)
        ann_ids.add(ann_id)
        if ann.get("image_id") not in image_ids:
            raise UserError(f"{where} references unknown image_id {ann.get('image_id')!r}", src)
        if ann.get("category_id") not in cat_ids:
            raise UserError(
                f"{where} references unknown category_id {ann.get('category_id')!r}", src
            )
        box = ann.get("bbox")
        if type(box) is not list or len(box) != 4 or any(type(v) not in (int, float) for v in box):
            raise UserError(f"{where}: bbox must be 4 numbers [x, y, w, h], got {box!r}", src)
        if not all(map(math.isfinite, box)):
            raise UserError(f"{where}: bbox {box} has non-finite values", src)
        if box[2] < 0 or box[3] < 0:
            raise UserError(f"{where}: bbox {box} has a negative width/height", src)
        area = ann.get("area", 0)
        if type(area) not in (int, float) or not (math.isfinite(area) and area >= 0):
            raise UserError(
                f"{where}: 'area' must be a number of square pixels >= 0 (or left out), "
                f"got {area!r}",
                src,
            )
        if ann.get("iscrowd", 0) not in (0, 1):
            raise UserError(f"{where}: iscrowd must be 0 or 1, got {ann['iscrowd']!r}", src)


def category_list(data: dict[str, Any]) -> list[list]:
    """[[id, name], ...] sorted by id, as the dataset reads them (a missing name: the id)."""
    cats = sorted(data["categories"], key=lambda cat: cat["id"])
    return [[cat["id"], str(cat.get("name", cat["id"]))] for cat in cats]


def category_difference(train: list[list], val: list[list], train_file: str) -> str | None:
    """How the validation file's categories differ from those of ``train_file``, or None.

    The model's classes are the training file's categories in id order, and evaluation
    maps them to the validation file's: the two lists must be the same, ids and names.
    """
    if [list(c) for c in train] == [list(c) for c in val]:
        return None
    ours, theirs = dict(map(tuple, train)), dict(map(tuple, val))

    def shown(ids: list, names: dict) -> str:
        more = f" and {len(ids) - 3} more" if len(ids) > 3 else ""
        return ", ".join(f"{i} '{names[i]}'" for i in ids[:3]) + more

    parts = []
    if missing := [i for i in ours if i not in theirs]:
        parts.append(f"missing here: {shown(missing, ours)}")
    if extra := [i for i in theirs if i not in ours]:
        parts.append(f"not in the training file: {shown(extra, theirs)}")
    for i in [i for i in ours if i in theirs and ours[i] != theirs[i]][:3]:
        parts.append(f"id {i} is '{theirs[i]}' here, '{ours[i]}' there")
    return (
        f"its categories are not those of {train_file} ({'; '.join(parts)}); the model's "
        "classes are the training file's categories, so both files must list the same ones "
        "(ids and names)"
    )


# ----------------------------------------------------------------------------
# Image files


def _require_dir(image_dir: Path, src: str) -> None:
    if not image_dir.is_dir():
        raise UserError(f"{_no_folder(image_dir)} (needed by {src})", str(image_dir))


def _no_folder(image_dir: Path) -> str:
    what = "is a file, not a folder" if image_dir.exists() else "does not exist"
    return f"image directory {image_dir} {what}"


def missing_image_files(data: dict[str, Any], image_dir: Path) -> list[str]:
    """The listed file names not under ``image_dir`` (one directory listing, not a stat each)."""
    try:
        present = {entry.name for entry in os.scandir(image_dir)}
    except OSError as exc:
        raise UserError(
            f"cannot list image directory: {exc.strerror or exc}", str(image_dir)
        ) from None
    return [
        img["file_name"]
        for img in data["images"]
        if img["file_name"] not in present and not (image_dir / img["file_name"]).is_file()
    ]


def check_image_files(data: dict[str, Any], image_dir: Path, src: str) -> None:
    """Every listed image exists under ``image_dir``; else a UserError naming the first."""
    _require_dir(image_dir, src)
    missing = missing_image_files(data, image_dir)
    if missing:
        first = image_dir / missing[0]
        raise UserError(
            f"image file missing: {first} ({len(missing)} of {len(data['images'])} "
            f"images listed in {src} are missing from {image_dir})",
            src,
        )


def declared_size_differs(declared_hw: tuple[int, int], file_hw: tuple[int, int]) -> bool:
    """Whether the file's (h, w) contradicts the annotation file's; -1 there means not given."""
    return min(declared_hw) >= 0 and tuple(declared_hw) != tuple(file_hw)


def read_size(path: str, decode: bool = False) -> tuple[int, int] | str:
    """(width, height) of an image file from its header, or why it cannot be read.

    ``decode``: decode every pixel as well, which finds truncated or corrupt
    data behind a readable header. Any failure is that file's problem: the
    reason is returned, never raised.
    """
    try:
        with Image.open(path) as image:
            if decode:
                image.load()
            return image.size
    except UnidentifiedImageError:
        return "not an image file Pillow can read"
    except Image.DecompressionBombError:
        return f"over Pillow's limit of {Image.MAX_IMAGE_PIXELS} pixels"
    except Exception as exc:  # truncated data, broken chunks, unreadable file: all reasons
        text = str(getattr(exc, "strerror", None) or exc).replace(f"'{path}'", "").strip(" :")
        return text or type(exc).__name__


PARALLEL_FROM = 10_000  # images; fewer are read in this process (a pool costs ~0.1 s)


def reader_processes(images: int) -> int:
    """How many processes :func:`read_sizes` reads ``images`` files with (1: this one)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    forkable = sys.platform == "linux" and "fork" in multiprocessing.get_all_start_methods()
    daemon = multiprocessing.current_process().daemon  # daemons may not have children
    if images < PARALLEL_FROM or not forkable or daemon:
        return 1
    return min(8, cpus)


def read_sizes(paths: Sequence[str], decode: bool = False) -> list[tuple[int, int] | str]:
    """:func:`read_size` of each path, in up to 8 forked processes for large sets."""
    workers = reader_processes(len(paths))
    if workers < 2:
        return [read_size(path, decode) for path in paths]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        chunk = max(64, len(paths) // (workers * 16))
        return pool.map(partial(read_size, decode=decode), paths, chunksize=chunk)


# ----------------------------------------------------------------------------
# Boxes: one rule for the check's counts and the training set's filter

MIN_SIDE = 1.0  # px: a box under one pixel wide or high (inside its image) teaches nothing
RELATIVE_MIN_IMAGE = 8  # px: boxes all within 0-1 on images this big are relative coordinates
USABLE, DEGENERATE, OUTSIDE, NORMALISED = 0, 1, 2, 3
REASONS = {DEGENERATE: "degenerate", OUTSIDE: "outside the image", NORMALISED: "normalised"}


def in_unit_square(xywh: np.ndarray) -> bool:
    """Whether there are boxes [N, 4] (x, y, w, h) and all lie within [0, 1] x [0, 1]."""
    xywh = np.asarray(xywh, np.float32).reshape(-1, 4)
    return len(xywh) > 0 and bool(((xywh[:, :2] >= 0) & (xywh[:, :2] + xywh[:, 2:] <= 1)).all())


def box_reasons(xywh: np.ndarray, size_wh: Any, relative: bool) -> np.ndarray:
    """Why each box cannot be trained on: [M] uint8, USABLE (0) or a key of REASONS.

    xywh: [M, 4] float32 COCO boxes (x, y, w, h) in pixels.
    size_wh: (width, height) of their image, [2] or per box [M, 2].
    relative: :func:`in_unit_square` of all boxes of the annotation file.

    DEGENERATE: under MIN_SIDE wide or high. OUTSIDE: under MIN_SIDE of it
    inside the image (clipped as training clips it). NORMALISED: ``relative``
    and the image at least RELATIVE_MIN_IMAGE px a side. Crowd boxes are
    judged alike; callers ignore them.
    """
    xywh = np.asarray(xywh, np.float32).reshape(-1, 4)
    size = np.broadcast_to(np.asarray(size_wh, np.float32), (len(xywh), 2))
    inside = np.clip(xywh[:, :2] + xywh[:, 2:], 0, size) - np.clip(xywh[:, :2], 0, size)
    reasons = np.zeros(len(xywh), np.uint8)
    reasons[(inside < MIN_SIDE).any(axis=1)] = OUTSIDE
    reasons[(xywh[:, 2:] < MIN_SIDE).any(axis=1)] = DEGENERATE
    if relative:
        reasons[size.min(axis=1) >= RELATIVE_MIN_IMAGE] = NORMALISED
    return reasons


# ----------------------------------------------------------------------------
# One split

FIRST = 5  # problems listed by name; the rest are counted
EXAMPLES = 3  # dropped boxes named per reason


@dataclasses.dataclass
class SplitReport:
    """What the check found in one split; ``problems`` empty means it may be trained on."""

    split: str
    ann_file: str
    image_dir: str
    decoded: bool = False
    images: int = 0
    boxes: int = 0
    crowd: int = 0
    usable: int = 0
    dropped: dict[str, int] = dataclasses.field(default_factory=dict)  # reason -> boxes
    examples: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    problems: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    cached: bool = False
    categories: list[list] = dataclasses.field(default_factory=list)  # [id, name], by id

    def summary(self) -> str:
        """One line: counts, dropped boxes per reason, how the sizes were read, time or cache."""
        if self.problems:
            return f"{self.split} {self.ann_file}: " + "; ".join(self.problems)
        dropped = sum(self.dropped.values())
        reasons = ", ".join(
            f"{n:,} {reason} (e.g. {', '.join(self.examples[reason])})"
            for reason, n in self.dropped.items()
        )
        how = "decoded" if self.decoded else "sizes from headers"
        when = "cached" if self.cached else f"checked in {self.seconds:.2f} s"
        return (
            f"{self.split} {self.ann_file}: {_n(self.images, 'image')} ({how}), "
            f"{_n(self.boxes, 'box')}: "
            f"{self.usable:,} usable, {self.crowd:,} crowd (ignored), {dropped:,} dropped"
            + (f" as unusable: {reasons}" if dropped else "")
            + f"; {when}"
        )


def _n(count: int, noun: str) -> str:
    """'1 image', '2,000 images'."""
    return f"{count:,} {noun}" + ("" if count == 1 else "es" if noun.endswith("x") else "s")


def _listed(names: list[str], total: int, what: str, where: str = "") -> str:
    shown = ", ".join(names[:FIRST])
    more = f" and {len(names) - FIRST:,} more" if len(names) > FIRST else ""
    return f"{len(names):,} of {_n(total, 'image')} {what}{where}: {shown}{more}"


def inspect_split(split: str, ann_file: Path, image_dir: Path, decode: bool = False) -> SplitReport:
    """Check one split (no cache, nothing raised): every problem is in ``problems``."""
    start = time.perf_counter()
    report = SplitReport(split, str(ann_file), str(image_dir), decoded=decode)
    try:
        data = read_annotations(ann_file)
    except UserError as exc:
        report.problems.append(str(exc).removeprefix(f"{ann_file}: "))
        return report
    if not image_dir.is_dir():
        report.problems.append(_no_folder(image_dir))
        return report
    try:
        missing = set(missing_image_files(data, image_dir))
    except UserError as exc:
        report.problems.append(str(exc))
        return report
    report.categories = category_list(data)
    images = sorted(data["images"], key=lambda img: img["id"])
    report.images = n = len(images)
    names = [img["file_name"] for img in images]
    declared = np.array(
        [(img.get("height", -1), img.get("width", -1)) for img in images], np.int64
    ).reshape(-1, 2)
    if missing:
        gone = [name for name in names if name in missing]
        report.problems.append(_listed(gone, n, "missing", f" from {image_dir}"))
    present = [i for i, name in enumerate(names) if name not in missing]
    read = read_sizes([os.path.join(image_dir, names[i]) for i in present], decode)
    sizes = declared[:, ::-1].astype(np.float64)  # (w, h); the file's where it can be read
    sizes[sizes < 0] = np.inf
    unreadable, wrong = [], []
    for i, got in zip(present, read):
        if isinstance(got, str):
            unreadable.append(f"{names[i]} ({got})")
            continue
        sizes[i] = got
        if declared_size_differs(tuple(declared[i]), got[::-1]):
            h, w = declared[i]
            wrong.append(f"{names[i]} is {got[0]}x{got[1]}, the file says {w}x{h}")
    if unreadable:
        report.problems.append(_listed(unreadable, n, "unreadable"))
    if wrong:
        report.problems.append(_listed(wrong, n, "not of the size the annotation file gives"))
    _count_boxes(report, data["annotations"], np.array([img["id"] for img in images]), names, sizes)
    report.seconds = time.perf_counter() - start
    return report


def _count_boxes(
    report: SplitReport, anns: list[dict], ids: np.ndarray, names: list[str], sizes: np.ndarray
) -> None:
    """Fill the box counts of ``report``; a split without a usable box is a problem."""
    report.boxes = len(anns)
    xywh = np.array([a["bbox"] for a in anns], np.float32).reshape(-1, 4)
    crowd = np.fromiter((bool(a.get("iscrowd", 0)) for a in anns), bool, len(anns))
    owner = np.searchsorted(ids, np.fromiter((a["image_id"] for a in anns), np.int64, len(anns)))
    relative = in_unit_square(xywh)
    reasons = box_reasons(xywh, sizes[owner], relative)
    report.crowd = int(crowd.sum())
    report.usable = int((~crowd & (reasons == USABLE)).sum())
    for code, reason in REASONS.items():
        hit = np.flatnonzero(~crowd & (reasons == code))
        if len(hit):
            report.dropped[reason] = len(hit)
            report.examples[reason] = [
                f"annotation {anns[k]['id']} in {names[owner[k]]}" for k in hit[:EXAMPLES]
            ]
    if report.usable == 0:
        counts = [f"{n:,} {reason}" for reason, n in report.dropped.items()]
        text = f"no usable box among its {_n(report.boxes, 'box')}"
        text += f" ({', '.join([*counts, f'{report.crowd:,} crowd'])})"
        if not report.boxes:
            text = "no usable box: it has no boxes"
        if relative:
            text += (
                ": every box lies within 0-1, relative coordinates; COCO's bbox is "
                "[x, y, width, height] in pixels"
            )
        report.problems.append(text)


# ----------------------------------------------------------------------------
# The cache


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/pss/data-check`` (default ``~/.cache/pss/data-check``)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pss" / "data-check"


CACHE_VERSION = 2  # raise when a rule changes: older entries are then checked again


def _cache_key(ann_file: Path, image_dir: Path) -> dict[str, Any] | None:
    try:
        ann, folder = ann_file.stat(), image_dir.stat()
    except OSError:
        return None
    return {
        "version": CACHE_VERSION,
        "ann_file": str(ann_file.resolve()),
        "ann_size": ann.st_size,
        "ann_mtime_ns": ann.st_mtime_ns,
        "image_dir": str(image_dir.resolve()),
        "image_dir_mtime_ns": folder.st_mtime_ns,
    }


def _cache_path(folder: Path, key: dict[str, Any]) -> Path:
    name = hashlib.sha256(f"{key['ann_file']}\0{key['image_dir']}".encode()).hexdigest()[:20]
    return folder / f"{name}.json"


def _cached(folder: Path, key: dict[str, Any], decode: bool) -> SplitReport | None:
    try:
        entry = json.loads(_cache_path(folder, key).read_text())
        report = SplitReport(**entry["report"])
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if entry.get("key") != key or report.problems or (decode and not report.decoded):
        return None
    report.cached = True
    return report


def _store(folder: Path, key: dict[str, Any], report: SplitReport) -> None:
    """Write atomically (a temporary file renamed into place); a cache that cannot be
    written is no error."""
    entry = {"key": key, "report": dataclasses.asdict(report)}
    tmp = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        with os.fdopen(fd, "w") as out:
            json.dump(entry, out)
        os.replace(tmp, _cache_path(folder, key))
    except OSError:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def check_split(
    split: str, ann_file: Path, image_dir: Path, decode: bool = False, cache: bool | Path = True
) -> SplitReport:
    """:func:`inspect_split`, answered from the cache when the files have not changed.

    cache: True for :func:`cache_dir`, a folder, or False for none.
    """
    folder = cache_dir() if cache is True else Path(cache) if cache else None
    key = _cache_key(ann_file, image_dir) if folder else None  # taken before reading
    if folder and key:
        hit = _cached(folder, key, decode)
        if hit is not None:
            hit.split, hit.ann_file, hit.image_dir = split, str(ann_file), str(image_dir)
            return hit
    report = inspect_split(split, ann_file, image_dir, decode)
    if folder and key and not report.problems:
        _store(folder, key, report)
    return report


# ----------------------------------------------------------------------------
# Both splits of a config


def split_files(cfg: DataConfig, split: Literal["train", "val"]) -> tuple[Path, Path]:
    """(image folder, annotation file) of ``split``, under ``cfg.root``.

    With ``cfg.synthetic`` set, the shapes dataset is generated into the root
    first if it is not there (its layout: ``train/``, ``val/``,
    ``annotations/train.json``, ``annotations/val.json``).
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    root = Path(cfg.root)
    if cfg.synthetic is not None:
        from pss.data.shapes import ensure_shapes  # lazy: keeps `python -m pss.data.shapes` clean

        ensure_shapes(root, cfg.synthetic)
    train = split == "train"
    images = root / (cfg.train_images if train else cfg.val_images)
    ann_file = root / (cfg.train_annotations if train else cfg.val_annotations)
    if cfg.synthetic is not None and not ann_file.exists():
        raise UserError(
            f"data.synthetic is set but {ann_file} does not exist: the shapes layout is "
            f"{split}/ and annotations/{split}.json, set data.{split}_images={split} and "
            f"data.{split}_annotations=annotations/{split}.json",
            str(root),
        )
    return images, ann_file


@dataclasses.dataclass
class DataReport:
    """The check of both splits; ``str()`` is the summary, one line a split."""

    splits: list[SplitReport]

    @property
    def problems(self) -> list[str]:
        return [f"{s.ann_file}: {p}" for s in self.splits for p in s.problems]

    def __str__(self) -> str:
        return "\n".join(f"data check: {s.summary()}" for s in self.splits)


def check_data(cfg: DataConfig, decode: bool = False, cache: bool | Path = True) -> DataReport:
    """Check both splits of ``cfg``; a UserError listing every problem if any split has one.

    decode: decode every image, not only its header. cache: see :func:`check_split`.
    """
    splits = []
    for split in ("train", "val"):
        images, ann_file = split_files(cfg, split)
        splits.append(check_split(split, ann_file, images, decode, cache))
    train, val = splits
    if train.categories and val.categories:  # both files read
        differ = category_difference(train.categories, val.categories, train.ann_file)
        if differ:
            val.problems.append(differ)
    report = DataReport(splits)
    if report.problems:
        lines = "\n".join(f"  {p}" for p in report.problems)
        raise UserError(
            f"the data check found problems; nothing trains until they are fixed:\n{lines}"
        )
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pss.data.check", description=__doc__.split("\n")[0]
    )
    add_config_arguments(parser)
    parser.add_argument("--decode", action="store_true", help="decode every image, not its header")
    parser.add_argument("--no-cache", action="store_true", help="check again, even if cached")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        report = check_data(cfg.data, decode=args.decode, cache=not args.no_cache)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    print(report)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
