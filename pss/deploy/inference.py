"""Running a trained model on image files: a checkpoint in PyTorch, or its ONNX export.

    model = load_model("outputs/run/last.pth")            # detector, config, categories
    runner = TorchRunner(model, "e2e")                     # or OnnxRunner("model.onnx")
    for path in list_images(["photos/", "extra.jpg"]):    # files and folders, checked
        det = runner(read_image(path))                    # boxes in the file's pixels

Both runners resize and normalise an image exactly as evaluation does
(shorter side ``data.test_scale``, longer side at most ``data.max_size``,
ImageNet mean / std), pad it at the bottom / right (to a multiple of
``data.size_divisibility``, or to the fixed input size of an ONNX export) and
run :class:`pss.deploy.graph.DeployedDetector`, in PyTorch or in ONNX Runtime, so
they give the same detections. Every problem with an input is one
:class:`~pss.errors.UserError` naming the file. An instance segmentation model
(CondInst; its checkpoint or its export) also gives ``masks`` [K, h, w] (bool, the
file's pixels): the graph's mask probabilities pasted by
:func:`pss.models.condinst.paste_masks`.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from pss.config import ExperimentConfig, config_from_dict
from pss.data.transforms import Normalize, resized_shape
from pss.deploy.graph import DeployedDetector
from pss.engine.checkpoint import load_checkpoint, load_model_weights
from pss.errors import UserError
from pss.models import Detector
from pss.models.condinst import paste_masks
from pss.models.decode import EMPTY_LABEL, Detections, unpad

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# Keys of the metadata an ONNX export carries (pss.export writes them, OnnxRunner reads them).
META_MODE, META_CATEGORIES, META_PREPROCESS = "pss.mode", "pss.categories", "pss.preprocess"


@dataclass
class Category:
    id: int  # the dataset's category id (what COCO results files hold)
    name: str


@dataclass
class LoadedModel:
    """A detector in eval mode with what it was trained on."""

    detector: Detector
    cfg: ExperimentConfig
    categories: list[Category]  # index = label
    source: str


def load_model(path: str | Path) -> LoadedModel:
    """Build the detector of a training checkpoint and load its weights (CPU, eval mode).

    Category names come from the checkpoint; checkpoints written before they
    were saved get 'class N' (and id N), with a note on stderr.
    """
    src = str(path)
    state = load_checkpoint(path)
    if not isinstance(state.get("config"), dict):
        raise UserError("checkpoint holds no config (not written by pss.train)", src)
    cfg = config_from_dict(state["config"], src)
    cfg.model.backbone.weights = None  # the checkpoint has them: never fetch pretrained ones
    detector = Detector(cfg.model)
    load_model_weights(detector, state["model"], src)
    detector.eval()
    num_classes = cfg.model.num_classes
    cats = state.get("categories")
    if cats is None:
        print(
            f"note: {src} holds no category names (written before they were saved): "
            f"labels are shown as 'class N' and written as category id N",
            file=sys.stderr,
        )
        categories = [Category(i, f"class {i}") for i in range(num_classes)]
    else:
        categories = [Category(int(c["id"]), str(c["name"])) for c in cats]
    if len(categories) != num_classes:
        raise UserError(
            f"checkpoint names {len(categories)} categories but its model has "
            f"num_classes={num_classes}",
            src,
        )
    return LoadedModel(detector, cfg, categories, src)


# ----------------------------------------------------------------------------- images


def list_images(inputs: list[str | Path]) -> list[Path]:
    """Image files named directly or found in folders (sorted, not recursive).

    A missing path, a file that is not an image (by suffix) or a folder
    without images is a UserError.
    """
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files = sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise UserError(
                    f"no image files ({', '.join(IMAGE_SUFFIXES)}) in folder", str(item)
                )
            found += files
        elif not item.exists():
            raise UserError("no such file or folder", str(item))
        elif item.suffix.lower() not in IMAGE_SUFFIXES:
            raise UserError(
                f"not an image file (expected one of {', '.join(IMAGE_SUFFIXES)})", str(item)
            )
        else:
            found.append(item)
    return found


class ImageTooLarge(UserError):
    """An image over Pillow's size limit (``Image.MAX_IMAGE_PIXELS``): commands skip it."""


def read_image(path: str | Path) -> Image.Image:
    """An RGB PIL image; an unreadable or corrupt file is a UserError naming it, one over
    Pillow's size limit (a possible decompression bomb) an :class:`ImageTooLarge`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as file:
                return file.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLarge(
            f"larger than Pillow's limit of {Image.MAX_IMAGE_PIXELS} pixels; skipped", str(path)
        ) from None
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise UserError(f"cannot read image: {exc}", str(path)) from None


def output_folder(out: str | Path) -> Path:
    """``--out DIR`` checked before any work: not a file, and DIR (or the folder it will be
    made in) and its parent writable. Files an earlier call wrote in DIR are replaced."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError("is a file; --out names a folder (made if missing)", str(out))
    _writable(out.parent, out)
    if out.is_dir():
        _writable(out, out)
    return out


def output_file(out: str | Path, default_name: str, suffixes: tuple[str, ...]) -> Path:
    """``--out FILE`` checked before any work; an existing folder means ``folder/default_name``.

    The file's folder (or where it will be made) must be writable; an existing file is
    replaced only if it is of the kind written (``suffixes``, e.g. an earlier call's
    output): anything else is refused rather than overwritten.
    """
    out = Path(out)
    if out.is_dir():
        out = out / default_name
    if out.suffix.lower() not in suffixes:
        what = "an existing file that is not" if out.exists() else "not"
        raise UserError(
            f"{what} a {'/'.join(suffixes)} file; --out names one (or a folder)", str(out)
        )
    if out.exists() and not out.is_file():
        raise UserError("exists and is not a file; --out names a file or a folder", str(out))
    _writable(out.parent, out)
    return out


def _writable(folder: Path, out: Path) -> None:
    """UserError naming ``out`` unless files can be made in ``folder`` (or, where it does
    not exist yet, in its nearest existing parent, which must be a folder)."""
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot be made: {existing} is a file, not a folder", str(out))
    try:  # a file made and removed: permissions, read-only mounts, root included
        fd, probe = tempfile.mkstemp(prefix=".pss-probe-", dir=existing)
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise UserError(f"cannot be written: {why} in {existing}", str(out)) from None
    os.close(fd)
    os.unlink(probe)


@dataclass
class Preprocess:
    """How an image becomes the network's input (the evaluation transform, then padding).

    ``fixed``: (H, W) of an input that must be exactly that size (an ONNX export
    with a fixed size); the image is shrunk further if needed to fit in it.
    """

    test_scale: int
    max_size: int
    size_divisibility: int
    fixed: tuple[int, int] | None = None

    @classmethod
    def from_config(cls, cfg: ExperimentConfig, fixed: tuple[int, int] | None = None):
        d = cfg.data
        return cls(d.test_scale, d.max_size, d.size_divisibility, fixed)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Preprocess:
        fields = json.loads(text)
        fixed = fields.pop("fixed")
        return cls(**fields, fixed=tuple(fixed) if fixed else None)

    def __call__(self, image: Image.Image) -> tuple[Tensor, float]:
        """(batch [1, 3, H, W] holding the resized image at the top left, resized / file size)."""
        width, height = image.size
        new_h, new_w, scale = resized_shape(height, width, self.test_scale, self.max_size)
        if self.fixed and (new_h > self.fixed[0] or new_w > self.fixed[1]):
            scale = min(self.fixed[0] / height, self.fixed[1] / width)
            new_h, new_w = max(1, int(height * scale)), max(1, int(width * scale))
        if (new_h, new_w) != (height, width):
            image = image.resize((new_w, new_h), Image.BILINEAR)
        tensor, _ = Normalize()(image, {}, None)
        if self.fixed:
            pad_h, pad_w = self.fixed
        else:
            div = self.size_divisibility
            pad_h, pad_w = -(-new_h // div) * div, -(-new_w // div) * div
        batch = F.pad(tensor, (0, pad_w - new_w, 0, pad_h - new_h))[None]
        return batch, scale


def to_file_pixels(det: Detections, scale: float, file_size: tuple[int, int]) -> Detections:
    """One image's detections in input pixels -> in the file's pixels, clipped to its (h, w)."""
    h, w = file_size
    boxes = det["boxes"] / scale
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    return {**det, "boxes": boxes}


def file_detections(
    outputs: Sequence[Tensor], batch: Tensor, scale: float, file_size: tuple[int, int]
) -> Detections:
    """The graph's outputs on a one-image ``batch`` [1, 3, H, W] (the file resized by
    ``scale``, at its top left) -> its detections in the file's pixels (h, w): boxes,
    scores, labels, and with a fourth output (mask probabilities [1, K, H4, W4]) the
    filled slots' masks [n, h, w] (bool)."""
    boxes, scores, labels, *masks = outputs
    det = unpad(boxes, scores, labels)[0]
    if masks:
        resized = tuple(min(round(n * scale), p) for n, p in zip(file_size, batch.shape[-2:]))
        filled = masks[0][0][labels[0] != EMPTY_LABEL]
        det = {**det, "masks": paste_masks(filled, resized, file_size)}
    return to_file_pixels(det, scale, file_size)


# ----------------------------------------------------------------------------- runners


class TorchRunner:
    """A checkpoint's detector in PyTorch: ``runner(image) -> Detections`` in file pixels."""

    def __init__(self, model: LoadedModel, mode: str) -> None:
        self.graph = DeployedDetector(model.detector, mode).eval()
        self.preprocess = Preprocess.from_config(model.cfg)
        self.categories = model.categories
        self.mode = mode

    @torch.no_grad()
    def __call__(self, image: Image.Image) -> Detections:
        batch, scale = self.preprocess(image)
        return file_detections(self.graph(batch), batch, scale, image.size[::-1])


class OnnxRunner:
    """An ONNX export of ``pss.export`` in ONNX Runtime (CPU), same interface as TorchRunner.

    Mode, categories and preprocessing come from the model's metadata.
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        src = str(path)
        if not Path(path).is_file():
            raise UserError("ONNX model not found", src)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(src, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - any unreadable model
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"cannot load ONNX model ({first})", src) from None
        meta: dict[str, Any] = self.session.get_modelmeta().custom_metadata_map
        if any(k not in meta for k in (META_MODE, META_CATEGORIES, META_PREPROCESS)):
            raise UserError("ONNX model has no pss metadata (not written by pss.export)", src)
        self.mode = meta[META_MODE]
        self.categories = [Category(**c) for c in json.loads(meta[META_CATEGORIES])]
        self.preprocess = Preprocess.from_json(meta[META_PREPROCESS])
        self.input_name = self.session.get_inputs()[0].name

    def run(self, batch: Tensor) -> tuple[Tensor, ...]:
        """The graph on a normalised batch [B, 3, H, W]: boxes, scores, labels (and a
        CondInst export's masks) as tensors."""
        outputs = self.session.run(None, {self.input_name: batch.numpy()})
        return tuple(torch.from_numpy(o) for o in outputs)

    def __call__(self, image: Image.Image) -> Detections:
        batch, scale = self.preprocess(image)
        return file_detections(self.run(batch), batch, scale, image.size[::-1])
