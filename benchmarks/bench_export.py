"""The exported graphs in ONNX Runtime: e2e (no NMS op) against nms (NonMaxSuppression).

Side by side in one process on the same inputs: FCOS_PSS, ResNet-50, 80 classes,
random init, one image of 800x1333 padded to 800x1344, batch 1, CPU, the same
thread count for ONNX Runtime and PyTorch; contenders interleaved, medians
(benchmarks/side_by_side.py). Printed, with targets:

1. Latency of the whole exported graph (network + post-processing), e2e / nms:
   within 0.03 of the graphs' FLOP ratio (the nms graph has no PSS head: the
   export drops the unused branch; FLOPs of the networks, FlopCounterMode). With
   one thread timed as that thread's CPU time, so that other processes on a
   shared machine do not count. A random-init network scores every location
   near the prior, so these graphs' NMS sees few candidates: this flatters nms.
2. Post-processing alone, e2e / nms: <= 0.5 (the paper: 1.49 vs 2.91 ms). Two
   graphs exported from the head outputs (cls, reg, ctr, pss in; boxes, scores,
   labels out), run on trained-looking score maps (pss/testing/score_maps.py:
   15 objects with their one-to-many duplicates, 30 false positives).
3. Share of post-processing in each graph, on those maps: post / (network +
   post), the network timed as its own exported graph.
4. PyTorch eager for reference: the network, and ``Detector.predict`` e2e / nms
   on the same maps.

The exports take minutes on a 2-core CPU (three ResNet-50 graphs).

    .venv/bin/python benchmarks/bench_export.py                 # 800x1333, 1 thread
    .venv/bin/python benchmarks/bench_export.py --quick         # ResNet-18 at 256x320, 1 round
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from pss.config import load_config
from pss.deploy.inference import Category, LoadedModel
from pss.export import export_onnx, op_types
from pss.models import Detector
from pss.models.backbone import Backbone
from pss.models.boxes import make_priors
from pss.models.decode import detect
from pss.models.heads import HeadOutputs
from pss.testing.score_maps import realistic_outputs
from side_by_side import Clock, Report, fmt_time, interleaved, med

NUM_CLASSES = 80
OBJECTS, CLUTTER = 15, 30  # per image in the trained-looking score maps (as bench_head)
FULL_MAX, POST_MAX, FLOP_TOL = 1.0, 0.5, 0.03
HEAD_OUTPUTS = ("cls", "reg", "ctr", "pss")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default=None, help="input HxW (default 800x1333)")
    p.add_argument("--backbone", default=None, help="default resnet50 (--quick: resnet18)")
    p.add_argument("--threads", type=int, default=1, help="ORT and torch threads (default 1)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 9)")
    p.add_argument("--post-repeats", type=int, default=None, help="post rounds (default 50)")
    p.add_argument("--quick", action="store_true", help="resnet18, 256x320, 1 round")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.size = args.size or ("256x320" if args.quick else "800x1333")
    args.backbone = args.backbone or ("resnet18" if args.quick else "resnet50")
    args.repeats = args.repeats or (1 if args.quick else 9)
    args.post_repeats = args.post_repeats or (3 if args.quick else 50)
    try:
        h, w = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        p.error(f"--size must look like 800x1333, got '{args.size}'")
    args.padded = (math.ceil(h / 32) * 32, math.ceil(w / 32) * 32)
    return args


class Network(nn.Module):
    """Backbone + head only: images -> the head outputs as a tuple of tensors."""

    def __init__(self, detector: Detector) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        out = self.detector(images)
        return out.cls, out.reg, out.ctr, out.pss


class PostOnly(nn.Module):
    """The deployed post-processing (pss.deploy.graph's) on head outputs of fixed level sizes."""

    def __init__(self, detector: Detector, mode: str, sizes, hw: tuple[int, int]) -> None:
        super().__init__()
        self.cfg, self.mode = detector.cfg, mode
        self.sizes, self.hw = list(sizes), hw

    def forward(self, cls: Tensor, reg: Tensor, ctr: Tensor, pss: Tensor):
        out = HeadOutputs(cls, reg, ctr, pss, self.sizes)
        priors = make_priors(out.sizes, Backbone.strides, out.cls.device)
        return detect(self.cfg, out, priors, self.mode, [self.hw], exportable=True)


def network_flops(cfg, images: Tensor) -> dict[str, int]:
    """FLOPs of the e2e graph's network (FCOS_PSS) and the nms graph's (no PSS head)."""
    flops = {}
    for mode, name in (("e2e", cfg.model.name), ("nms", cfg.model.name.removesuffix("_pss"))):
        model = Detector(cfg.model.model_copy(update={"name": name})).eval()
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(images)
        flops[mode] = counter.get_total_flops()
    return flops


def export_module(module: nn.Module, args: tuple, names: tuple[str, ...], path: Path) -> Path:
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module.eval(), args, input_names=list(names), dynamo=True)
    program.save(str(path), external_data=False)
    return path


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def runner(sess: ort.InferenceSession, feeds: dict[str, np.ndarray]):
    wanted = {i.name for i in sess.get_inputs()}  # an unused input (pss for nms) is dropped
    feed = {k: v for k, v in feeds.items() if k in wanted}
    return lambda: sess.run(None, feed)


def same_detections(ort_out: list[np.ndarray], torch_det: dict[str, Tensor]) -> bool:
    n = len(torch_det["scores"])
    boxes, scores, labels = (torch.from_numpy(o[0]) for o in ort_out)
    return (
        torch.equal(labels[:n], torch_det["labels"])
        and bool((labels[n:] == -1).all())
        and torch.allclose(scores[:n], torch_det["scores"], atol=1e-5, rtol=0)
        and torch.allclose(boxes[:n], torch_det["boxes"], atol=1e-2, rtol=0)
    )


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = load_config(
        [],
        [
            "model.name=fcos_pss",
            f"model.backbone.name={args.backbone}",
            f"model.num_classes={NUM_CLASSES}",
        ],
    )
    detector = Detector(cfg.model).eval()
    hw = args.padded
    images = torch.randn(1, 3, *hw)
    print(
        f"FCOS_PSS {args.backbone}, {NUM_CLASSES} classes, input {args.size} padded to "
        f"{hw[0]}x{hw[1]}, batch 1, {args.threads} thread(s), onnxruntime {ort.__version__}, "
        f"torch {torch.__version__}"
    )
    with torch.no_grad():
        out = detector(images)
    maps, stats = realistic_outputs(out.sizes, hw, 1, NUM_CLASSES, args.seed, OBJECTS, CLUTTER)
    print(
        f"score maps: {stats['pairs_per_image']} pairs, {stats['nms_candidates']:.0f} above "
        f"0.05 for nms, {stats['e2e_pairs_above_thresh']:.0f} for e2e"
    )

    loaded = LoadedModel(
        detector, cfg, [Category(i, str(i)) for i in range(NUM_CLASSES)], "random-init"
    )
    feeds = {name: getattr(maps, name).numpy() for name in HEAD_OUTPUTS}
    with tempfile.TemporaryDirectory() as tmp:
        files = {
            mode: export_onnx(loaded, Path(tmp) / f"{mode}.onnx", mode, hw)
            for mode in ("e2e", "nms")
        }
        network_file = export_module(
            Network(detector), (images,), ("images",), Path(tmp) / "net.onnx"
        )
        post_args = tuple(getattr(maps, name) for name in HEAD_OUTPUTS)
        post_files = {
            mode: export_module(
                PostOnly(detector, mode, out.sizes, hw),
                post_args,
                HEAD_OUTPUTS,
                Path(tmp) / f"post_{mode}.onnx",
            )  # fmt: skip
            for mode in ("e2e", "nms")
        }
        ops = {mode: op_types(path) for mode, path in files.items()}
        sessions = {mode: session(path, args.threads) for mode, path in files.items()}
        net_session = session(network_file, args.threads)
        post_sessions = {mode: session(path, args.threads) for mode, path in post_files.items()}

    print("* the nms graph has no PSS head: its output is unused there, so the export drops it")
    print(f"e2e graph ops: {' '.join(ops['e2e'])}")
    print(f"nms graph NMS op: {'NonMaxSuppression' in ops['nms']}, e2e graph NMS op: "
          f"{'NonMaxSuppression' in ops['e2e']}")  # fmt: skip
    with torch.no_grad():
        reference = {m: detector.predict(maps, [hw], m)[0] for m in ("e2e", "nms")}
    for mode, sess in post_sessions.items():
        same = same_detections(runner(sess, feeds)(), reference[mode])
        print(f"post-processing graph {mode}: same detections as Detector.predict: {same}")

    clock = Clock(torch.device("cpu"))
    # One ORT thread runs in the calling thread: its CPU time is the graph's.
    full_clock = Clock(torch.device("cpu"), cpu_time=args.threads == 1)
    report = Report()
    image_feed = {"images": images.numpy()}
    full = interleaved(
        full_clock,
        {m: runner(s, image_feed) for m, s in sessions.items()},
        args.repeats,
        warmup=1,
    )
    flops = network_flops(cfg, images)
    flop_ratio = flops["e2e"] / flops["nms"]
    print(f"FLOPs of the networks: e2e graph {flops['e2e'] / 1e9:.1f} G, nms graph "
          f"{flops['nms'] / 1e9:.1f} G (no PSS head): ratio {flop_ratio:.3f}; whole graphs "
          f"timed in {'CPU' if args.threads == 1 else 'wall'} seconds")  # fmt: skip
    report.line("ort_full", "ORT whole graph, random init*", ("nms", "e2e"),
                (full["nms"], full["e2e"]), f"{flop_ratio:.3f}+-{FLOP_TOL}",
                lambda r: abs(r - flop_ratio) <= FLOP_TOL)  # fmt: skip
    post = interleaved(
        clock,
        {m: runner(s, feeds) for m, s in post_sessions.items()},
        args.post_repeats,
        warmup=3,
    )
    report.line("ort_post", "ORT post-processing (trained-like)", ("nms", "e2e"),
                (post["nms"], post["e2e"]), f"<= {POST_MAX}", lambda r: r <= POST_MAX)  # fmt: skip
    network = interleaved(clock, {"net": runner(net_session, image_feed)}, args.repeats, 1)
    net = med(network["net"])
    shares = {}
    for mode in ("e2e", "nms"):
        total = net + med(post[mode])
        shares[mode] = med(post[mode]) / total
        print(
            f"{mode} graph on trained-like maps: network {fmt_time(net)} + post "
            f"{fmt_time(med(post[mode]))} = {fmt_time(total)}; post-processing share "
            f"{100 * shares[mode]:.2f} %"
        )
    report.line("ort_total", "ORT same network + post (trained-like)", ("nms", "e2e"),
                ([net + t for t in post["nms"][: args.repeats]],
                 [net + t for t in post["e2e"][: args.repeats]]),
                f"<= {FULL_MAX}", lambda r: r <= FULL_MAX)  # fmt: skip

    with torch.no_grad():
        eager_net = interleaved(clock, {"net": lambda: detector(images)}, args.repeats, 1)
        eager_post = interleaved(
            clock,
            {m: (lambda m=m: detector.predict(maps, [hw], m)) for m in ("nms", "e2e")},
            args.post_repeats,
            warmup=3,
        )
    print(f"PyTorch eager network: {fmt_time(med(eager_net['net']))}; ORT network: {fmt_time(net)}")
    report.line("eager_post", "PyTorch eager predict (trained-like)", ("nms", "e2e"),
                (eager_post["nms"], eager_post["e2e"]), "info", None)  # fmt: skip
    return {
        "lines": report.lines,
        "flops": flops,
        "flop_ratio": flop_ratio,
        "shares": shares,
        "ops_e2e": ops["e2e"],
        "stats": stats,
    }


if __name__ == "__main__":
    main()
