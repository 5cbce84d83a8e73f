"""Draw what PSS removes: raw / nms / e2e detections of one checkpoint, side by side.

    python -m pss.visualize CHECKPOINT IMAGE... [--out modes.png|DIR] [--score-thresh T]

One row per image, one column per inference mode: ``raw`` (base score, no
NMS: the duplicate boxes), ``nms`` (base score + NMS) and ``e2e`` (PSS score, no
NMS; only for *_pss checkpoints), every box labelled with its class and score (a
CondInst checkpoint's masks filled semi-transparent and outlined).
IMAGE may be a folder (its images, sorted). See :func:`pss.deploy.draw.draw_modes`.
``--out``: a PNG (or JPEG) file, replaced if there, or an existing folder (``modes.png``
in it), checked before the checkpoint is loaded. An image over Pillow's size limit is
skipped with one line on stderr.

Exit status: 0 written, 2 bad input (one message on stderr).
"""

from __future__ import annotations

import argparse
import sys

from pss.deploy.draw import MODE_TITLES, SCORE_THRESH, check_score_thresh, draw_modes
from pss.deploy.inference import list_images, load_model, output_file
from pss.errors import EXIT_INVALID, EXIT_OK, UserError
from pss.models.decode import modes_for


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pss.visualize", description=__doc__.split("\n")[1]
    )
    parser.add_argument("checkpoint", help="a checkpoint written by pss.train (last.pth)")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders")
    parser.add_argument(
        "--out", default="modes.png", help="PNG to write, or a folder (default: modes.png)"
    )
    parser.add_argument(
        "--score-thresh",
        type=float,
        default=SCORE_THRESH,
        help=f"draw detections scoring above this (default {SCORE_THRESH})",
    )
    args = parser.parse_args(argv)
    try:
        check_score_thresh(args.score_thresh)
        out = output_file(args.out, "modes.png", (".png", ".jpg", ".jpeg"))
        images = list_images(args.images)
        model = load_model(args.checkpoint)
        figure = draw_modes(model, images, out, args.score_thresh)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    shown = modes_for(model.cfg.model.has_pss, MODE_TITLES)
    modes = " / ".join(shown) + ("" if "e2e" in shown else " (no PSS head: no e2e)")
    print(f"wrote {out}: {len(images)} images x {modes}, {figure.width}x{figure.height} px")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
