"""What the PSS head costs on GFocalV2 (docs/benchmarks.md): GFocalV2_PSS against GFocalV2.

Measured side by side in one process on the same input (uniform noise, normalised like
our pipeline) padded to a multiple of 32 (800x1333 -> 800x1344), the same weights where
the models share them, the same batch and thread count; A/B interleaved, medians
(benchmarks/side_by_side.py). Printed, with targets as for FCOS (bench_head.py):

1. FLOPs of the network forward, GFocalV2_PSS / GFocalV2 (FlopCounterMode), with
   GFocalV2 / ATSS for reference (GFocalV2's head: 68 box channels and the DGQP).
2. Forward time GFocalV2_PSS / GFocalV2: within 0.02 of the FLOP ratio.
Post-processing is GFocalV2's as ATSS's but for the box decoding (the integral of the
chosen locations' distributions): bench_head.py measures e2e against nms.

    .venv/bin/python benchmarks/bench_gfocal.py                      # 800x1333, batch 1
    .venv/bin/python benchmarks/bench_gfocal.py --quick --threads 1 --json /tmp/gfl.json
"""

from __future__ import annotations

import argparse
import json
import platform
from dataclasses import dataclass
from pathlib import Path

import torch
from bench_head import FORWARD_TOL, NUM_CLASSES, QUICK_SIZE, build_ours, count_flops, padded

from pss.data.transforms import PIXEL_MEAN, PIXEL_STD
from pss.models import Detector
from side_by_side import Clock, Report, interleaved, med

BACKBONES = ("resnet18", "resnet50", "resnet101")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default=None, help="input HxW (default 800x1333, like the paper)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--backbone", default="resnet50", choices=BACKBONES)
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5; quick 1)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument("--quick", action="store_true", help=f"{QUICK_SIZE}, 1 round: a smoke run")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.size = args.size or (QUICK_SIZE if args.quick else "800x1333")
    try:
        h, w = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        p.error(f"--size must look like 800x1333, got '{args.size}'")
    if h < 64 or w < 64:
        p.error(f"--size {args.size}: both sides must be at least 64")
    args.hw = (h, w)
    args.repeats = args.repeats or (1 if args.quick else 5)
    if args.batch < 1 or args.repeats < 1 or args.warmup < 0:
        p.error("--batch and --repeats must be >= 1, --warmup >= 0")
    return args


@dataclass
class HeadCost:
    """What :func:`head_cost` measured, and what it ran, for a benchmark that goes on."""

    results: dict
    images: torch.Tensor
    pss: Detector
    clock: Clock
    report: Report


def head_cost(args: argparse.Namespace, base: str, reference: str, title: str) -> HeadCost:
    """The PSS head's cost on ``base`` (a model name; ``title`` as printed): FLOPs of
    ``base``, ``base``_pss and ``reference`` (printed as base / reference), and the forward
    time of ``base``_pss against ``base`` (their ratio against the FLOP ratio)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device("cpu")
    phw = padded(args.hw)
    print(
        f"bench {base}: torch {torch.__version__}, cpu ({platform.machine()}), threads "
        f"{torch.get_num_threads()}; input {args.hw[0]}x{args.hw[1]} padded to "
        f"{phw[0]}x{phw[1]}, batch {args.batch}, backbone {args.backbone}, {NUM_CLASSES} "
        f"classes; {args.repeats} timed round(s) after {args.warmup} warm-up, medians"
    )
    mean = torch.tensor(PIXEL_MEAN)[:, None, None]
    std = torch.tensor(PIXEL_STD)[:, None, None]
    images = (torch.rand(args.batch, 3, *phw) - mean) / std

    pss_name = f"{base}_pss"
    ref = build_ours(reference, args.backbone, device).eval()
    model = build_ours(base, args.backbone, device).eval()
    pss = build_ours(pss_name, args.backbone, device).eval()
    pss.load_state_dict(model.state_dict(), strict=False)  # same weights where shared
    with torch.no_grad():
        flops = {name: count_flops(lambda m=m: m(images)) for name, m in
                 ((reference, ref), (base, model), (pss_name, pss))}  # fmt: skip
    flop_ratio = flops[pss_name] / flops[base]
    print(
        f"\n{'FLOPs, network forward':<36} {base:>9} {flops[base] / 1e9:9.1f} G   "
        f"{'+pss':>9} {flops[pss_name] / 1e9:9.1f} G   ratio {flop_ratio:6.3f}  "
        f"({title} / {reference.upper()} {flops[base] / flops[reference]:.3f})"
    )

    clock, report = Clock(device), Report()

    def no_grad(fn):
        def run():
            with torch.no_grad():
                return fn()

        return run

    print("\n-- forward: eval mode, no_grad, network only")
    t = interleaved(
        clock,
        {base: no_grad(lambda: model(images)), pss_name: no_grad(lambda: pss(images))},
        args.repeats,
        args.warmup,
    )
    report.line(
        "forward_ratio",
        f"forward {title}_PSS / {title}",
        (base, "+pss"),
        (t[base], t[pss_name]),
        f"{flop_ratio:.3f}+-{FORWARD_TOL}",
        lambda r: abs(r - flop_ratio) <= FORWARD_TOL,
    )
    results = {
        "threads": torch.get_num_threads(),
        "size": list(args.hw),
        "batch": args.batch,
        "backbone": args.backbone,
        "flops": flops,
        "flop_ratio": flop_ratio,
        "times_s": {"forward": {k: med(v) for k, v in t.items()}},
    }
    return HeadCost(results, images, pss, clock, report)


def finish(args: argparse.Namespace, cost: HeadCost) -> dict:
    """The results with each report line's ratio; written to ``--json`` when asked."""
    results = {**cost.results, "lines": cost.report.lines}
    for key, line in cost.report.lines.items():
        results[key] = line["ratio"]
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return results


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    return finish(args, head_cost(args, "gfocalv2", "atss", "GFocalV2"))


if __name__ == "__main__":
    main()
