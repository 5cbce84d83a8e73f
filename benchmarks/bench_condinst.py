"""What the PSS head costs on CondInst, and what e2e saves in its mask post-processing
(issue 24, point 7; docs/benchmarks.md).

Side by side in one process, the same input (uniform noise, normalised like our
pipeline, padded to a multiple of 32), the same weights where the models share them,
A/B interleaved, medians (benchmarks/side_by_side.py):

1. FLOPs of the network forward, CondInst_PSS / CondInst (and CondInst / FCOS: the
   controller and the mask branch), and the forward time ratio against the FLOP ratio
   (bench_gfocal.head_cost, the same measurement as for GFocalV2).
2. Mask post-processing, e2e against nms, of one CondInst_PSS network's outputs with
   trained-looking score maps (pss/testing/score_maps.py, crowded: 60 objects and 120
   false positives an image, hundreds of candidate pairs above the NMS threshold):
   ``Detector.predict`` (decoding, box NMS for nms, the chosen instances' dynamic mask
   heads) and pasting every instance's mask at the image's pixels
   (``condinst.paste_masks``). Printed for information: e2e always pastes 100 masks, nms
   as many as NMS keeps.

    .venv/bin/python benchmarks/bench_condinst.py                    # 800x1333, batch 1
    .venv/bin/python benchmarks/bench_condinst.py --quick --threads 1 --json /tmp/ci.json
"""

from __future__ import annotations

from dataclasses import replace

import torch
from bench_gfocal import finish, head_cost, parse_args
from bench_head import CLUTTER, NUM_CLASSES, OBJECTS

from pss.models.condinst import paste_masks
from pss.testing.score_maps import realistic_outputs
from side_by_side import interleaved, med

CROWD = 4  # objects and false positives x this: the crowded scene of bench_head


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    cost = head_cost(args, "condinst", "fcos", "CondInst")
    pss, hw = cost.pss, args.hw
    with torch.no_grad():
        net = pss(cost.images)  # the controller's parameters and the mask branch's map
    maps, stats = realistic_outputs(
        net.sizes, hw, args.batch, NUM_CLASSES, args.seed, CROWD * OBJECTS, CROWD * CLUTTER
    )
    out = replace(maps, params=net.params, mask_feats=net.mask_feats)
    sizes = [hw] * args.batch

    def masks_of(mode: str):
        def run() -> int:
            with torch.no_grad():
                dets = pss.predict(out, sizes, mode)
                return sum(len(paste_masks(d["masks"], hw)) for d in dets)

        return run

    counts = {mode: masks_of(mode)() / args.batch for mode in ("e2e", "nms")}
    candidates = sum(stats["nms_candidates_per_level"])
    print(
        f"\n-- mask post-processing: predict + paste at {hw[0]}x{hw[1]}, "
        f"{CROWD * OBJECTS} objects + {CROWD * CLUTTER} false positives an image, "
        f"{candidates:.0f} candidate pairs above the NMS threshold; masks an image: "
        f"e2e {counts['e2e']:.0f}, nms {counts['nms']:.0f}"
    )
    t = interleaved(
        cost.clock, {"nms": masks_of("nms"), "e2e": masks_of("e2e")}, args.repeats, args.warmup
    )
    cost.report.line(
        "mask_postprocess_ratio",
        "mask post-processing e2e / nms",
        ("nms", "e2e"),
        (t["nms"], t["e2e"]),
        "info",
        None,
    )
    cost.results["times_s"]["mask_postprocess"] = {k: med(v) for k, v in t.items()}
    cost.results["masks_per_image"] = counts
    cost.results["nms_candidates"] = candidates
    return finish(args, cost)


if __name__ == "__main__":
    main()
