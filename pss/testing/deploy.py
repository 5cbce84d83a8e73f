"""Checkpoints and comparisons for the predict / export / visualize tests.

A random-init detector scores everything near the focal-loss prior (~0.01), so
"ONNX Runtime gives the same detections" would compare near-ties. ``lively``
re-draws the last layer of each head branch so that scores spread over (0, 1)
and boxes have sizes: the top detections then score well above any threshold.
For CondInst it re-draws the controller too, so that masks are neither all near
probability 0.5 nor saturated (either way the 0.5 threshold would compare near-ties).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from pss.config import load_config
from pss.engine.checkpoint import save_checkpoint
from pss.models import Detector
from pss.models.condinst import paste_masks
from pss.testing.configs import SMALL

CATEGORIES = [
    {"id": 7, "name": "circle"},
    {"id": 42, "name": "square"},
    {"id": 1000, "name": "tri"},
]
# Tolerances of the parity tests (boxes in input pixels, scores in [0, 1]).
BOX_ATOL = 1e-2
SCORE_ATOL = 5e-5
MASK_IOU = 0.99  # per instance, masks pasted at the input's pixels


def lively(detector: Detector, seed: int = 0) -> Detector:
    gen = torch.Generator().manual_seed(seed)
    head = detector.head
    fcos = detector.cfg.box_base == "fcos"
    layers = [
        (head.cls_logits, 0.3, -1.0),
        (head.bbox_pred, 0.3, 2.0 if fcos else 0.0),  # FCOS: ~2 strides each side
        (head.centerness, 0.3, 0.0),
    ]
    if head.pss is not None:
        layers.append((head.pss.out, 0.5, 0.0))
    # Masks with their edges spread over a few pixels: saturated ones (p ~ 0 and ~ 1 side
    # by side) put the pixel half-way between two mask pixels at p ~ 0.5, a near-tie.
    if detector.cfg.has_masks:
        layers.append((head.controller, 0.15, 0.0))
    with torch.no_grad():
        for conv, std, bias in layers:
            if conv is None:
                continue
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * std)
            conv.bias.fill_(bias)
    return detector.eval()


def small_deploy_config(name: str, *overrides: str):
    return load_config(
        [],
        [
            f"model.name={name}",
            *SMALL,
            "model.backbone.norm=bn",  # as trained from scratch (smoke configs); cheaper to export
            "model.backbone.frozen_stages=-1",
            "data.test_scale=128",
            "data.max_size=192",
            *overrides,
        ],
    )


def write_checkpoint(path: Path, name: str = "fcos_pss", categories=CATEGORIES) -> Path:
    """A pss.train-style checkpoint of a lively random model (``categories=None``: old format)."""
    cfg = small_deploy_config(name)
    torch.manual_seed(0)
    detector = lively(Detector(cfg.model))
    state = {
        "model": detector.state_dict(),
        "epoch": 1,
        "iteration": 1,
        "fingerprint": cfg.fingerprint(),
        "config": cfg.model_dump(mode="json"),
    }
    if categories is not None:
        state["categories"] = categories
    save_checkpoint(path, state)
    return path


def write_images(
    folder: Path, sizes=((120, 160), (96, 96), (200, 140)), seed: int = 0
) -> list[Path]:
    """PNG files of smooth random colour blobs, one per (h, w)."""
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    paths = []
    for i, (h, w) in enumerate(sizes):
        small = torch.rand(3, max(h // 16, 2), max(w // 16, 2), generator=gen)
        big = torch.nn.functional.interpolate(small[None], size=(h, w), mode="bilinear")[0]
        array = (big.permute(1, 2, 0) * 255).to(torch.uint8).numpy()
        path = folder / f"img{i}.png"
        Image.fromarray(array).save(path)
        paths.append(path)
    return paths


def assert_same_detections(reference: list[dict], boxes, scores, labels) -> dict[str, float]:
    """Graph outputs [B, K, ...] against ``Detector.predict`` detections, image by image.

    Same labels in the same order (and empty slots after them), boxes and scores
    within BOX_ATOL / SCORE_ATOL. Returns the largest differences seen.
    """
    boxes, scores, labels = (torch.as_tensor(t) for t in (boxes, scores, labels))
    worst = {"box": 0.0, "score": 0.0, "detections": 0}
    for b, ref in enumerate(reference):
        n = len(ref["scores"])
        assert torch.equal(labels[b, :n], ref["labels"]), f"image {b}: labels or order differ"
        assert (labels[b, n:] == -1).all() and (scores[b, n:] == 0).all()
        torch.testing.assert_close(scores[b, :n], ref["scores"], atol=SCORE_ATOL, rtol=0)
        torch.testing.assert_close(boxes[b, :n], ref["boxes"], atol=BOX_ATOL, rtol=0)
        if n:
            worst["box"] = max(worst["box"], float((boxes[b, :n] - ref["boxes"]).abs().max()))
            worst["score"] = max(worst["score"], float((scores[b, :n] - ref["scores"]).abs().max()))
        worst["detections"] += n
    return worst


def exporter(root: Path, fixed: tuple[int, int]) -> Callable[[str, str, str], tuple[Path, Path]]:
    """``get(name, mode, shape)`` -> (checkpoint, ONNX file) of a lively ``name`` model
    exported by ``pss.export`` in ``mode`` with input ``fixed`` (shape "fixed") or any
    size (shape "dynamic"), written under ``root`` on first use (an export takes seconds
    to tens of seconds) and shared after."""
    from pss.export import main

    cache: dict[tuple[str, str, str], tuple[Path, Path]] = {}

    def get(name: str, mode: str, shape: str) -> tuple[Path, Path]:
        key = (name, mode, shape)
        if key not in cache:
            ckpt = root / f"{name}.pth"
            if not ckpt.exists():
                write_checkpoint(ckpt, name)
            out = root / f"{name}-{mode}-{shape}.onnx"
            size = ["--dynamic"] if shape == "dynamic" else ["--size", "x".join(map(str, fixed))]
            assert main([str(ckpt), "--out", str(out), "--mode", mode, *size]) == 0
            cache[key] = (ckpt, out)
        return cache[key]

    return get


def run_both(
    ckpt: Path, onnx_path: Path, mode: str, batch_shapes, seed: int = 0
) -> Iterator[tuple[list[dict], list]]:
    """Per (batch, H, W) of random images: PyTorch's detections (``Detector.predict`` of
    the checkpoint) and ONNX Runtime's outputs of the export, on the same padded batch."""
    import onnxruntime as ort

    from pss.deploy.inference import load_model

    detector = load_model(ckpt).detector
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(seed)
    for b, h, w in batch_shapes:
        images = torch.randn(b, 3, h, w, generator=gen)
        with torch.no_grad():
            reference = detector.predict(detector(images), [(h, w)] * b, mode)
        yield reference, session.run(None, {"images": images.numpy()})


def mask_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU [K] of bool masks a, b [K, h, w], pair by pair (1 where both are empty)."""
    inter = (a & b).flatten(1).sum(1)
    union = (a | b).flatten(1).sum(1)
    return torch.where(union > 0, inter / union.clamp(min=1), 1.0)


def assert_same_masks(
    reference: list[dict], masks, size: tuple[int, int]
) -> dict[str, float | int]:
    """Graph masks [B, K, H4, W4] (probabilities) against ``Detector.predict``'s, image by
    image, both pasted at an image of ``size`` (h, w) in the input: every filled slot's
    IoU >= :data:`MASK_IOU`, every empty slot's mask zero. Returns the smallest IoU, the
    largest probability difference and the number of masks neither empty nor full."""
    masks = torch.as_tensor(masks)
    worst = {"iou": 1.0, "prob": 0.0, "partial": 0}
    for b, ref in enumerate(reference):
        n = len(ref["scores"])
        assert (masks[b, n:] == 0).all(), f"image {b}: an empty slot has a mask"
        if not n:
            continue
        want, got = paste_masks(ref["masks"], size), paste_masks(masks[b, :n], size)
        iou = mask_iou(want, got)
        assert (iou >= MASK_IOU).all(), f"image {b}: mask IoU {iou.min():.4f} < {MASK_IOU}"
        area = want.flatten(1).float().mean(1)
        worst["iou"] = min(worst["iou"], float(iou.min()))
        worst["prob"] = max(worst["prob"], float((masks[b, :n] - ref["masks"]).abs().max()))
        worst["partial"] += int(((area > 0) & (area < 1)).sum())
    return worst
