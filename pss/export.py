"""Export a trained checkpoint to ONNX, post-processing included.

    python -m pss.export CHECKPOINT --out model.onnx [--mode e2e|nms] [--size HxW | --dynamic]

The graph is :class:`pss.deploy.graph.DeployedDetector`:

* input ``images``: a normalised batch [B, 3, H, W] (RGB / 255, minus the ImageNet
  mean, over its std; padded with zeros at the bottom / right);
* outputs ``boxes`` [B, K, 4] (x1, y1, x2, y2 in input pixels, clipped to H x W),
  ``scores`` [B, K] and ``labels`` [B, K] (int64): the top K = 100 detections of
  each image by score; empty slots have score 0 and label -1;
* for a CondInst / CondInst_PSS checkpoint, also ``masks`` [B, K, H/4, W/4] (float32):
  each detection's mask probabilities at a quarter of the input (stride 4; sides
  2 ceil(H / 8) x 2 ceil(W / 8)), zero in empty slots. To a file: upsampled x4 (map
  pixel i on input pixel 4i + 2), cropped to the resized image, resized bilinearly to
  the file's pixels, probability > 0.5 (:func:`pss.models.condinst.paste_masks`;
  docs/cli.md spells it out).

``--mode e2e`` (default, needs a *_pss model): the PSS score and a top-k, no NMS
op anywhere in the graph (only the kept detections' masks are computed).
``--mode nms``: the base score and ONNX NonMaxSuppression on the boxes, for
comparison (its batch size is fixed). ``--size HxW``
fixes the input size (default: the config's test size, ``data.test_scale`` x
``data.max_size`` rounded up to ``data.size_divisibility``); ``--dynamic``
accepts any H and W (and, for e2e, any batch size). The model's metadata
carries the mode, the category names and ids and the preprocessing, so
``python -m pss.predict --onnx model.onnx IMAGES...`` needs nothing else.

Uses the torch.export-based exporter (``torch.onnx.export(..., dynamo=True)``);
exporting a ResNet-18 model takes tens of seconds on a CPU.

``--out`` is checked before the checkpoint is loaded: it names a ``.onnx`` file (an
earlier export there is replaced) or an existing folder (``model.onnx`` in it); another
kind of file, or a folder that cannot be written, is refused.

Exit status: 0 written, 2 bad input (one message on stderr; nothing written).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import sys
import tempfile
import warnings
from pathlib import Path

import torch

from pss.deploy.graph import DeployedDetector, output_names
from pss.deploy.inference import (
    META_CATEGORIES,
    META_MODE,
    META_PREPROCESS,
    LoadedModel,
    Preprocess,
    load_model,
    output_file,
)
from pss.errors import EXIT_INVALID, EXIT_OK, UserError
from pss.models.decode import modes_for

EXPORT_MODES = ("e2e", "nms")
INPUT_NAME = "images"
# Traced input side with --dynamic: every level down to P7 (stride 128) is then >= 2.
DYNAMIC_EXAMPLE_SIDE = 320
NMS_OPS = frozenset(
    {"NonMaxSuppression", "BatchedNMS", "BatchedNMSDynamic_TRT", "EfficientNMS_TRT"}
)


def default_size(model: LoadedModel) -> tuple[int, int]:
    """(H, W): test_scale x max_size, each rounded up to size_divisibility."""
    d = model.cfg.data
    div = d.size_divisibility
    return -(-d.test_scale // div) * div, -(-d.max_size // div) * div


def parse_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or min(int(match.group(1)), int(match.group(2))) < 32:
        raise UserError(f"--size must be HxW with H, W >= 32 (e.g. 800x1344), got '{text}'")
    return int(match.group(1)), int(match.group(2))


def export_onnx(
    model: LoadedModel,
    out: str | Path,
    mode: str = "e2e",
    size: tuple[int, int] | None = None,
    dynamic: bool = False,
    batch: int = 1,
) -> Path:
    """Write ``model`` in ``mode`` as an ONNX file (atomically) and return its path.

    ``size``: (H, W) of the example input, the fixed input size unless ``dynamic``.
    ``batch``: the (fixed) batch size; with ``dynamic`` the e2e graph takes any.
    """
    if mode not in EXPORT_MODES:
        raise UserError(f"--mode must be one of {', '.join(EXPORT_MODES)}, got '{mode}'")
    if mode not in modes_for(model.cfg.model.has_pss):
        raise UserError(
            f"--mode {mode} needs a model with a PSS head, but this checkpoint is "
            f"'{model.cfg.model.name}' (export it with --mode nms)",
            model.source,
        )
    graph = DeployedDetector(model.detector, mode).eval()
    height, width = size or default_size(model)
    batch_dynamic = dynamic and mode == "e2e"
    example = torch.zeros(batch, 3, height, width)
    if dynamic:  # a size of 1 in the example (batch, or a P7 side) would be fixed to 1
        side = DYNAMIC_EXAMPLE_SIDE
        example = torch.zeros(2 if batch_dynamic else batch, 3, max(height, side), max(width, side))
    shapes = None
    if dynamic:
        dim = torch.export.Dim.DYNAMIC
        shapes = {INPUT_NAME: {0: dim, 2: dim, 3: dim} if batch_dynamic else {2: dim, 3: dim}}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # exporter chatter about its own internals
        program = torch.onnx.export(
            graph,
            (example,),
            input_names=[INPUT_NAME],
            output_names=list(output_names(model.cfg.model.has_masks)),
            dynamic_shapes=shapes,
            dynamo=True,
            optimize=True,
        )
    cats = [{"id": c.id, "name": c.name} for c in model.categories]
    fixed = None if dynamic else (height, width)
    program.model.metadata_props.update(
        {
            META_MODE: mode,
            META_CATEGORIES: json.dumps(cats),
            META_PREPROCESS: Preprocess.from_config(model.cfg, fixed).to_json(),
            "pss.model": model.cfg.model.name,
            "pss.checkpoint": Path(model.source).name,
        }
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        program.save(tmp, external_data=False)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def op_types(path: str | Path) -> list[str]:
    """Sorted op types of an ONNX model's graph (and of any functions it defines)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    nodes = list(model.graph.node) + [n for f in model.functions for n in f.node]
    return sorted({n.op_type for n in nodes})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pss.export", description=__doc__.split("\n")[1]
    )
    parser.add_argument("checkpoint", help="a checkpoint written by pss.train (last.pth)")
    parser.add_argument(
        "--out", required=True, help="the ONNX file to write (a folder: model.onnx in it)"
    )
    parser.add_argument("--mode", default="e2e", choices=EXPORT_MODES)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--size", help="fixed input size HxW (default: the config's test size)")
    group.add_argument("--dynamic", action="store_true", help="any input H and W")
    args = parser.parse_args(argv)
    try:
        size = parse_size(args.size) if args.size else None
        target = output_file(args.out, "model.onnx", (".onnx",))  # before any work
        model = load_model(args.checkpoint)
        out = export_onnx(model, target, args.mode, size, args.dynamic)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    shape = "dynamic" if args.dynamic else "x".join(map(str, size or default_size(model)))
    print(f"wrote {out} ({args.mode}, input {shape}); ops: {', '.join(op_types(out))}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
