"""Run a trained model on image files or folders: COCO-format results and drawn PNGs.

    python -m pss.predict CHECKPOINT INPUT... --out DIR [--mode e2e|nms|raw] [--score-thresh T]
    python -m pss.predict --onnx model.onnx INPUT... --out DIR [--score-thresh T]

INPUT: image files and folders (their images, sorted; not recursive). DIR gets

* ``detections.json``: COCO results (image_id, category_id, bbox [x, y, w, h] in
  the file's pixels, score) of every detection scoring above T;
* ``segmentations.json`` (CondInst checkpoints and their exports): COCO segmentation
  results of the same detections, each mask as compressed RLE in the file's pixels;
* ``images.json``: ``{"images": [{id, file_name, width, height}], "categories":
  [{id, name}]}``, what the image and category ids of the results refer to;
* ``<image name>.png``: the image with its boxes (and masks), class names and scores (the name
  without its suffix; where two images would share one, e.g. ``x.jpg`` and ``x.png``,
  the later gets ``x_<id>.png``; ``images.json`` gives each image's ``drawing``).

DIR is checked before any work: a file there, or a folder that cannot be written,
is refused; DIR is made if missing, and files of an earlier call in it are replaced.
An image over Pillow's size limit is skipped with one line on stderr.

``--mode``: ``e2e`` (default for *_pss models; PSS score, no NMS), ``nms`` (default
otherwise) or ``raw`` (no NMS on the base score: the duplicates). Class names
and ids come from the checkpoint. ``--onnx`` runs an export of ``pss.export``
in ONNX Runtime instead of PyTorch (its mode, classes and preprocessing are in
the file) and writes the same results. A progress bar shows on a terminal.

Exit status: 0 done, 2 bad input (missing checkpoint, a file that is not an
image, an unreadable image, ...): one message on stderr, and DIR is left as it was.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

from pss.contract import MODES, primary_mode
from pss.deploy.draw import SCORE_THRESH, check_score_thresh, draw_detections
from pss.deploy.inference import (
    ImageTooLarge,
    OnnxRunner,
    TorchRunner,
    list_images,
    load_model,
    output_folder,
    read_image,
)
from pss.errors import EXIT_INVALID, EXIT_OK, UserError
from pss.models.condinst import segm_rows
from pss.models.decode import check_mode, coco_rows

CHECKPOINT_SUFFIXES = (".pth", ".pt")


def make_runner(model_path: str, onnx: str | None, mode: str | None) -> TorchRunner | OnnxRunner:
    if onnx is not None:
        runner = OnnxRunner(onnx)
        if mode is not None and mode != runner.mode:
            raise UserError(
                f"this model was exported with --mode {runner.mode}; for --mode {mode} export "
                f"the checkpoint again with --mode {mode}",
                onnx,
            )
        return runner
    model = load_model(model_path)
    mode = mode or primary_mode(model.cfg.model.name)
    check_mode(mode, model.cfg.model.has_pss, model.cfg.model.name, model_path)
    return TorchRunner(model, mode)


def predict(
    runner: TorchRunner | OnnxRunner,
    inputs: list[str],
    out: str | Path,
    score_thresh: float = SCORE_THRESH,
    draw: bool = True,
    progress: bool = False,
) -> dict[str, int]:
    """Run ``runner`` on every image of ``inputs`` and write DIR's files; returns counts.

    Everything is written to a temporary folder beside ``out`` and moved in at
    the end, so a bad image half-way leaves ``out`` untouched.
    """
    images = list_images(inputs)
    out = output_folder(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        results, entries, names = [], [], set()
        segmentations: list[dict] | None = None  # a list once a detection has masks
        category_ids = [c.id for c in runner.categories]
        bar = tqdm(images, desc=f"predict ({runner.mode})", unit="img", disable=not progress)
        image_id = 0
        for path in bar:
            try:
                image = read_image(path)
            except ImageTooLarge as exc:
                print(f"warning: {exc}", file=sys.stderr)
                continue
            image_id += 1
            det = runner(image)
            results += coco_rows(det, image_id, category_ids, score_thresh=score_thresh)
            if "masks" in det:  # instance segmentation: the same detections' masks
                keep = det["scores"] > score_thresh
                segmentations = (segmentations or []) + segm_rows(
                    det["masks"][keep], det["scores"][keep], det["labels"][keep], image_id,
                    category_ids,
                )
            entry = {
                "id": image_id,
                "file_name": str(path),
                "width": image.width,
                "height": image.height,
            }
            if draw:
                entry["drawing"] = drawing_name(path, image_id, names)
                draw_detections(image, det, runner.categories, score_thresh).save(
                    tmp / entry["drawing"]
                )
            entries.append(entry)
        if not entries:
            raise UserError("no image could be read (every one was skipped)", str(inputs[0]))
        categories = [{"id": c.id, "name": c.name} for c in runner.categories]
        (tmp / "detections.json").write_text(json.dumps(results))
        if segmentations is not None:
            (tmp / "segmentations.json").write_text(json.dumps(segmentations))
        (tmp / "images.json").write_text(
            json.dumps({"images": entries, "categories": categories}, indent=1)
        )
        out.mkdir(exist_ok=True)
        if segmentations is None:  # no masks: none of an earlier call's stays beside these
            (out / "segmentations.json").unlink(missing_ok=True)
        for file in sorted(tmp.iterdir()):
            os.replace(file, out / file.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"images": len(entries), "detections": len(results)}


def drawing_name(path: Path, image_id: int, taken: set[str]) -> str:
    """``<stem>.png``, or ``<stem>_<image_id>.png`` (then ``_2``...) where that name is
    ``taken`` (``x.jpg`` and ``x.png``, or two folders' ``x.jpg``); added to ``taken``."""
    name, n = f"{path.stem}.png", 1
    while name in taken:
        name = f"{path.stem}_{image_id}{'' if n == 1 else f'_{n}'}.png"
        n += 1
    taken.add(name)
    return name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pss.predict",
        description=__doc__.split("\n")[1],
        usage="%(prog)s [CHECKPOINT] INPUT... --out DIR [--mode MODE] [--score-thresh T] "
        "[--onnx MODEL.onnx]",
    )
    parser.add_argument("paths", nargs="+", metavar="CHECKPOINT INPUT", help=argparse.SUPPRESS)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--mode", choices=MODES, help="inference mode (default: e2e if PSS)")
    parser.add_argument(
        "--score-thresh",
        type=float,
        default=SCORE_THRESH,
        help=f"keep detections scoring above this (default {SCORE_THRESH})",
    )
    parser.add_argument("--onnx", metavar="MODEL.onnx", help="run this ONNX export instead")
    parser.add_argument("--no-draw", action="store_true", help="write no PNGs")
    args = parser.parse_args(argv)
    paths = list(args.paths)
    checkpoint = ""
    if args.onnx is None or Path(paths[0]).suffix in CHECKPOINT_SUFFIXES:
        checkpoint = paths.pop(0)
    if not paths:
        parser.error("give at least one image file or folder after the checkpoint")
    try:
        check_score_thresh(args.score_thresh)
        output_folder(args.out)  # before the model is loaded
        runner = make_runner(checkpoint, args.onnx, args.mode)
        counts = predict(
            runner, paths, args.out, args.score_thresh, not args.no_draw, sys.stderr.isatty()
        )
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    backend = f"ONNX Runtime ({args.onnx})" if args.onnx else "PyTorch"
    print(
        f"{counts['images']} images, {counts['detections']} detections above "
        f"{args.score_thresh:g} ({runner.mode}, {backend}) -> {args.out}/detections.json"
        + ("" if args.no_draw else f" and {counts['images']} PNGs")
    )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
