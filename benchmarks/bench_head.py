"""What the PSS head costs, and how our FCOS compares with torchvision's (docs/benchmarks.md).

Measured side by side in one process on the same inputs: one image tensor
(uniform noise, normalised like our pipeline; torchvision's transform
normalises the same raw tensor itself) padded to a multiple of 32 (800x1333 ->
800x1344), the same synthetic targets, batch and thread count; contenders
interleaved, medians (benchmarks/side_by_side.py). Printed, with targets:

1. FLOPs of the network forward, FCOS_PSS / FCOS (FlopCounterMode).
2. Forward time FCOS_PSS / FCOS: within 0.02 of the FLOP ratio.
3. Training step (forward, losses, backward, clip, SGD) FCOS_PSS / FCOS:
   within 0.05 of the FLOP ratio.
4. Post-processing e2e / nms (``model.predict``) on trained-looking score maps
   (pss/testing/score_maps.py): <= 0.5; again on a crowded image (info).
5. Ours / torchvision's FCOS on the same backbone (forward: the network part;
   training step: torchvision's full step): <= 1.0 with the same frozen
   BatchNorm and frozen stages; torchvision as built (trainable BN) for info.

Part timings (backbone+FPN, head, losses, assignment, post-processing parts)
are printed beside the ratios. On a shared CPU prefer ``--threads 1``.

    .venv/bin/python benchmarks/bench_head.py                      # 800x1333, batch 1
    .venv/bin/python benchmarks/bench_head.py --size 512x512 --repeats 5
    .venv/bin/python benchmarks/bench_head.py --device cuda --amp --batch 2   # AMP as train.amp
    .venv/bin/python benchmarks/bench_head.py --device cuda --amp fp16 --channels-last
    .venv/bin/python benchmarks/bench_head.py --quick --json /tmp/bench.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.detection import FCOS, fcos_resnet50_fpn
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from pss.config import load_config
from pss.data.transforms import PIXEL_MEAN, PIXEL_STD
from pss.engine.step import amp_dtype, optimizer_step, to_memory_format
from pss.models import Detector, decode
from pss.models.heads import HeadOutputs
from pss.testing.score_maps import (
    SCORE_THRESH,
    realistic_outputs,
    synthetic_targets,
    to_device,
)
from side_by_side import Clock, Report, interleaved, med

NUM_CLASSES = 80
OBJECTS = 15  # objects per image in the realistic score maps
CLUTTER = 30  # scattered false positives per image just above the threshold
TRAIN_BOXES = 7  # ground-truth boxes per image in the training step
FORWARD_TOL, TRAIN_TOL, POST_MAX, TV_MAX = 0.02, 0.05, 0.5, 1.0
QUICK_SIZE = "128x128"
BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")
AMP_NAMES = {None: "off", torch.float16: "fp16", torch.bfloat16: "bf16"}


# ----------------------------------------------------------------------------- set-up


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default=None, help="input HxW (default 800x1333, like the paper)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--backbone", default="resnet50", choices=BACKBONES)
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5; quick 1)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument(
        "--post-repeats", type=int, default=None, help="post-processing rounds (default 50)"
    )
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument(
        "--amp",
        nargs="?",
        const="auto",
        default=None,
        choices=("auto", "fp16", "bf16"),
        help="autocast: fp16 (with a GradScaler, CUDA), bf16, or auto (train.amp's default: "
        "bf16 where the GPU has it, else fp16); --amp alone is auto",
    )
    p.add_argument(
        "--channels-last", action="store_true", help="every model in channels-last memory order"
    )
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
    if args.repeats is None:
        args.repeats = 1 if args.quick else 5
    if args.post_repeats is None:
        args.post_repeats = 3 if args.quick else 50
    if args.batch < 1 or args.repeats < 1 or args.post_repeats < 1 or args.warmup < 0:
        p.error("--batch, --repeats and --post-repeats must be >= 1, --warmup >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    if args.amp in ("auto", "fp16") and args.device != "cuda":
        p.error(f"--amp {args.amp} needs --device cuda (a CPU takes --amp bf16)")
    if args.amp is not None:  # the engine's rule (pss.engine.step.amp_dtype)
        bf16 = args.device == "cuda" and torch.cuda.is_bf16_supported()
        args.amp = amp_dtype(True if args.amp == "auto" else args.amp, args.device, bf16)
    return args


def padded(hw: tuple[int, int], divisor: int = 32) -> tuple[int, int]:
    return tuple(math.ceil(v / divisor) * divisor for v in hw)  # type: ignore[return-value]


def build_ours(name: str, backbone: str, device: torch.device) -> Detector:
    cfg = load_config(
        [],
        [
            f"model.name={name}",
            f"model.backbone.name={backbone}",
            f"model.num_classes={NUM_CLASSES}",
        ],
    )
    return Detector(cfg.model).to(device)


def freeze_like_ours(tv: FCOS) -> FCOS:
    """BatchNorm -> FrozenBatchNorm2d in the backbone; stem and C2 frozen (as ours)."""

    def swap(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, nn.BatchNorm2d):
                frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
                for key in ("weight", "bias", "running_mean", "running_var"):
                    getattr(frozen, key).copy_(getattr(child, key).detach())
                setattr(module, name, frozen)
            else:
                swap(child)

    swap(tv.backbone.body)
    for name in ("conv1", "layer1"):
        tv.backbone.body.get_submodule(name).requires_grad_(False)
    return tv


def build_torchvision(backbone: str, frozen: bool, hw: tuple[int, int], device) -> FCOS:
    """torchvision's FCOS, built offline; its transform set to keep the input size."""
    if backbone == "resnet50":
        tv = fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=NUM_CLASSES)
    else:  # what fcos_resnet50_fpn does, on another ResNet
        body = resnet_fpn_backbone(
            backbone_name=backbone,
            weights=None,
            norm_layer=nn.BatchNorm2d,
            trainable_layers=5,
            returned_layers=[2, 3, 4],
            extra_blocks=LastLevelP6P7(256, 256),
        )
        tv = FCOS(body, NUM_CLASSES)
    if frozen:
        freeze_like_ours(tv)
    tv.transform.min_size = (hw[0],)
    tv.transform.max_size = max(hw)
    return tv.to(device)


# ------------------------------------------------------------------------- measuring


def count_flops(fn: Callable[[], object]) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


# ------------------------------------------------------------ post-processing parts


def postprocess_parts(model: Detector, out: HeadOutputs) -> dict[str, Callable[[], object]]:
    """The nms mode's work in two parts: decoding every box, then scoring every
    (location, class) pair and selecting (threshold, per-level top-k, class-aware NMS)."""
    counts = model.priors(out).counts

    def nms_boxes():
        return model.decode(out), decode.score_factor("nms", out.cls, out.ctr, out.pss)

    boxes, factor = nms_boxes()

    def nms_select():
        decode.nms_pairs(out.cls, factor, boxes, counts, model.cfg.inference)

    return {"nms_boxes": nms_boxes, "nms_select": nms_select}


def autocast(device: torch.device, amp: torch.dtype | None):
    if amp is not None:
        return torch.autocast(device.type, dtype=amp)
    return contextlib.nullcontext()


def make_step(
    loss_fn: Callable[[], Tensor], model: nn.Module, lr: float, amp: torch.dtype | None
) -> Callable[[], None]:
    """One optimiser step as the engine takes it (pss.engine.train.optimizer_step):
    backward, clipping at norm 35, SGD."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
    return lambda: optimizer_step(loss_fn(), opt, scaler, grad_clip=35.0)


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    clock = Clock(device)
    hw, phw, batch, amp = args.hw, padded(args.hw), args.batch, args.amp
    rounds, warmup = args.repeats, args.warmup
    part_rounds = max(3, rounds)  # the cheaper breakdown timings
    what = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine()
    print(
        f"bench_head: torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"device {device.type} ({what}), threads {torch.get_num_threads()} (interop "
        f"{torch.get_num_interop_threads()}), amp {AMP_NAMES[amp]}, memory order "
        f"{'channels-last' if args.channels_last else 'contiguous'}"
    )
    print(
        f"input {hw[0]}x{hw[1]} padded to {phw[0]}x{phw[1]} (to a multiple of 32, as both data "
        f"pipelines pad), batch {batch}, backbone {args.backbone}, {NUM_CLASSES} classes; "
        f"{rounds} timed round(s) after {warmup} warm-up, A/B interleaved, medians"
    )

    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if device.type == "cpu" and torch.get_num_threads() > 1 and load > cores - 1:
        print(
            f"note: load average {load:.1f} on {cores} cores before starting: other processes "
            "compete for the cores, and a multi-threaded torch op waits for its slowest thread, "
            "so timings get noisy (--threads 1 is steadier on a shared machine)"
        )

    raw = torch.rand(batch, 3, *phw, device=device)  # an "image" in [0, 1]
    mean = torch.tensor(PIXEL_MEAN, device=device)[:, None, None]
    std = torch.tensor(PIXEL_STD, device=device)[:, None, None]
    images = (raw - mean) / std  # what our data pipeline feeds the model
    raw_list = list(raw)  # what torchvision's transform takes (it normalises itself)
    targets = synthetic_targets(hw, batch, TRAIN_BOXES, NUM_CLASSES, device, args.seed)
    lr = 0.01 * batch / 16

    fcos = build_ours("fcos", args.backbone, device)
    pss = build_ours("fcos_pss", args.backbone, device)
    pss.load_state_dict(fcos.state_dict(), strict=False)  # same weights where shared
    tv_bn = build_torchvision(args.backbone, False, phw, device)
    tv_fz = build_torchvision(args.backbone, True, phw, device)
    models = (fcos, pss, tv_bn, tv_fz)
    for m in models:
        to_memory_format(m, args.channels_last)
    if args.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    report = Report()
    results: dict = {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "device": device.type,
        "threads": torch.get_num_threads(),
        "size": list(hw),
        "padded_size": list(phw),
        "batch": batch,
        "backbone": args.backbone,
        "amp": AMP_NAMES[amp],
        "channels_last": args.channels_last,
        "repeats": rounds,
    }

    def no_grad(fn: Callable[[], object]) -> Callable[[], object]:
        def run():
            with torch.no_grad(), autocast(device, amp):
                return fn()

        return run

    def tv_net(tv: FCOS) -> Callable[[], object]:
        return lambda: tv.head(list(tv.backbone(images).values()))

    # ---------------------------------------------------------------- FLOPs
    for m in models:
        m.eval()
    with torch.no_grad(), autocast(device, amp):
        flops = {
            "fcos": count_flops(lambda: fcos(images)),
            "fcos_pss": count_flops(lambda: pss(images)),
            "torchvision": count_flops(tv_net(tv_fz)),
        }
        feats = fcos.backbone(images)
        tv_feats = list(tv_fz.backbone(images).values())
        body_flops = count_flops(lambda: fcos.backbone(images))
        head_flops = count_flops(lambda: fcos.head(feats))
        pss_flops = count_flops(lambda: pss.head(feats)) - head_flops
        sizes = fcos(images).sizes
    flop_ratio = flops["fcos_pss"] / flops["fcos"]
    pss_share = pss_flops / flops["fcos"]
    print(
        f"\n{'FLOPs, network forward':<36} {'fcos':>9} {flops['fcos'] / 1e9:9.1f} G   "
        f"{'fcos_pss':>9} {flops['fcos_pss'] / 1e9:9.1f} G   ratio {flop_ratio:6.3f}  "
        f"(the PSS head: +{pss_share:.1%}; torchvision FCOS {flops['torchvision'] / 1e9:.1f} G)"
    )
    results.update(flops=flops, flop_ratio=flop_ratio)

    # ---------------------------------------------------------- forward time
    print("\n-- forward: eval mode, no_grad, network only")
    t = interleaved(
        clock,
        {
            "fcos": no_grad(lambda: fcos(images)),
            "fcos_pss": no_grad(lambda: pss(images)),
            "tv_bn": no_grad(tv_net(tv_bn)),
            "tv_frozen": no_grad(tv_net(tv_fz)),
        },
        rounds,
        warmup,
    )
    report.line(
        "forward_ratio",
        "forward FCOS_PSS / FCOS",
        ("fcos", "fcos_pss"),
        (t["fcos"], t["fcos_pss"]),
        f"{flop_ratio:.3f}+-{FORWARD_TOL}",
        lambda r: abs(r - flop_ratio) <= FORWARD_TOL,
    )
    report.line(
        "tv_forward_ratio",
        "forward ours / tv (FrozenBN)",
        ("tv", "ours"),
        (t["tv_frozen"], t["fcos"]),
        f"<= {TV_MAX}",
        lambda r: r <= TV_MAX,
    )
    report.line(
        "tv_forward_ratio_bn",
        "forward ours / tv (BN as built)",
        ("tv", "ours"),
        (t["tv_bn"], t["fcos"]),
        "info",
        None,
    )
    results["times_s"] = {"forward": {k: med(v) for k, v in t.items()}}
    fwd_fcos = med(t["fcos"])
    # Where the time goes: backbone + FPN and head apart, on the same features.
    parts = interleaved(
        clock,
        {
            "body": no_grad(lambda: fcos.backbone(images)),
            "tv_body": no_grad(lambda: tv_fz.backbone(images)),
            "head": no_grad(lambda: fcos.head(feats)),
            "pss_head": no_grad(lambda: pss.head(feats)),
            "tv_head": no_grad(lambda: tv_fz.head(tv_feats)),
        },
        part_rounds,
        1,
    )
    part = {k: med(v) for k, v in parts.items()}
    extra_ms = (part["pss_head"] - part["head"]) * 1e3
    rate_all = flops["fcos"] / fwd_fcos / 1e9
    rate_pss = pss_flops / max(part["pss_head"] - part["head"], 1e-9) / 1e9
    rate_body = body_flops / part["body"] / 1e9
    rate_head = head_flops / part["head"] / 1e9
    print(
        f"   parts: backbone+FPN ours {part['body'] * 1e3:.1f} ms ({rate_body:.0f} GFLOP/s), tv "
        f"{part['tv_body'] * 1e3:.1f} ms; head ours {part['head'] * 1e3:.1f} ms ({rate_head:.0f}"
        f" GFLOP/s), with PSS {part['pss_head'] * 1e3:.1f} ms, tv {part['tv_head'] * 1e3:.1f} ms"
        f"\n   the PSS head adds {extra_ms:.1f} ms = {extra_ms / 1e3 / fwd_fcos:.1%} of the FCOS "
        f"forward for +{pss_share:.1%} FLOPs ({rate_pss:.0f} GFLOP/s there, {rate_all:.0f} "
        "GFLOP/s over the whole network)"
    )
    results.update(gflops_backbone=rate_body, gflops_head=rate_head)
    results["forward_parts_s"] = part

    # -------------------------------------------------------- training step
    for m in models:
        m.train()

    def ours_loss(model: Detector) -> Callable[[], Tensor]:
        def run() -> Tensor:
            with autocast(device, amp):
                out = model(images)
            return model.losses(out, targets)["loss"]

        return run

    def tv_loss(tv: FCOS) -> Callable[[], Tensor]:
        def run() -> Tensor:
            with autocast(device, amp):
                losses = tv(raw_list, targets)
            return sum(losses.values())

        return run

    steps = {
        "fcos": make_step(ours_loss(fcos), fcos, lr, amp),
        "fcos_pss": make_step(ours_loss(pss), pss, lr, amp),
        "tv_bn": make_step(tv_loss(tv_bn), tv_bn, lr, amp),
        "tv_frozen": make_step(tv_loss(tv_fz), tv_fz, lr, amp),
    }
    train_flops = {k: count_flops(steps[k]) for k in ("fcos", "fcos_pss")}
    train_flop_ratio = train_flops["fcos_pss"] / train_flops["fcos"]
    results.update(train_flops=train_flops, train_flop_ratio=train_flop_ratio)
    print(
        f"\n-- training step: train mode, forward + losses + backward + clip + SGD, "
        f"{TRAIN_BOXES} boxes per image\n   (training FLOPs fcos "
        f"{train_flops['fcos'] / 1e9:.1f} G, fcos_pss {train_flops['fcos_pss'] / 1e9:.1f} G, "
        f"ratio {train_flop_ratio:.3f}: no gradient flows back out of the PSS head)"
    )
    t = interleaved(clock, steps, rounds, warmup)
    report.line(
        "train_ratio",
        "train step FCOS_PSS / FCOS",
        ("fcos", "fcos_pss"),
        (t["fcos"], t["fcos_pss"]),
        f"{flop_ratio:.3f}+-{TRAIN_TOL}",
        lambda r: abs(r - flop_ratio) <= TRAIN_TOL,
    )
    report.line(
        "tv_train_ratio",
        "train step ours / tv (FrozenBN)",
        ("tv", "ours"),
        (t["tv_frozen"], t["fcos"]),
        f"<= {TV_MAX}",
        lambda r: r <= TV_MAX,
    )
    report.line(
        "tv_train_ratio_bn",
        "train step ours / tv (BN as built)",
        ("tv", "ours"),
        (t["tv_bn"], t["fcos"]),
        "info",
        None,
    )
    results["times_s"]["train_step"] = {k: med(v) for k, v in t.items()}
    step_extra_ms = (med(t["fcos_pss"]) - med(t["fcos"])) * 1e3
    loss_ms = train_parts(fcos, pss, tv_fz, images, raw_list, targets, clock, part_rounds, amp)
    results["train_parts_s"] = {k: v / 1e3 for k, v in loss_ms.items()}
    print(
        f"   losses() alone (no backward): fcos {loss_ms['losses']:.1f} ms, fcos_pss "
        f"{loss_ms['pss_losses']:.1f} ms (its one-to-one assignment {loss_ms['assignment']:.1f}"
        f" ms), torchvision {loss_ms['tv_losses']:.1f} ms; torchvision's transform "
        f"{loss_ms['tv_transform']:.1f} ms\n   the PSS step costs {step_extra_ms:.0f} ms more "
        f"than the FCOS step"
    )

    # ------------------------------------------------------ post-processing
    pss.eval()
    image_sizes = [hw] * batch
    post: dict[str, dict[str, float]] = {}
    post_times: dict[str, dict[str, float]] = {}
    for key, objects, clutter in (
        ("postprocess_ratio", OBJECTS, CLUTTER),
        ("postprocess_ratio_crowded", 4 * OBJECTS, 4 * CLUTTER),
    ):
        out_cpu, stats = realistic_outputs(
            sizes, hw, batch, NUM_CLASSES, args.seed, objects, clutter
        )
        out = to_device(out_cpu, device)
        per_level = ", ".join(
            f"P{i + 3} {k:.0f}" for i, k in enumerate(stats["nms_candidates_per_level"])
        )
        dets = {mode: pss.predict(out, image_sizes, mode) for mode in ("e2e", "nms")}
        kept = {
            mode: sum(int((d["scores"] > SCORE_THRESH).sum()) for d in ds) / batch
            for mode, ds in dets.items()
        }
        stats.update(detections_above_thresh=kept)
        results[key.replace("ratio", "inputs")] = stats
        if key == "postprocess_ratio":
            print(
                f"\n-- post-processing: model.predict(out, sizes, mode) on trained-looking "
                f"score maps (pss/testing/score_maps.py), {args.post_repeats} rounds"
            )
        print(
            f"   {objects} objects + {clutter} false positives per image: (location, class) "
            f"pairs with base score > {SCORE_THRESH} (NMS candidates)\n   {per_level}; total "
            f"{stats['nms_candidates']:.0f} of {stats['pairs_per_image']} pairs; "
            f"detections > {SCORE_THRESH}: nms {kept['nms']:.0f}, e2e {kept['e2e']:.0f}"
        )
        fns = {
            "nms": lambda out=out: pss.predict(out, image_sizes, "nms"),
            "e2e": lambda out=out: pss.predict(out, image_sizes, "e2e"),
            **postprocess_parts(pss, out),
        }
        t = interleaved(clock, fns, args.post_repeats, max(warmup, 2))
        crowded = key != "postprocess_ratio"
        report.line(
            key,
            "post-proc e2e / nms" + (" (crowded)" if crowded else ""),
            ("nms", "e2e"),
            (t["nms"], t["e2e"]),
            f"<= {POST_MAX}",
            None if crowded else (lambda r: r <= POST_MAX),
        )
        part = {k: med(t[k]) * 1e3 for k in ("nms_boxes", "nms_select")}
        post[key] = part
        post_times[key] = {k: med(v) for k, v in t.items()}
        print(
            f"   nms parts: decode every box {part['nms_boxes']:.2f} ms, score every pair "
            f"+ threshold + top-k + NMS {part['nms_select']:.2f} ms"
        )
    results["times_s"]["postprocess"] = post_times
    results["postprocess_parts_s"] = {
        k: {p: v / 1e3 for p, v in d.items()} for k, d in post.items()
    }

    # ---------------------------------------------------------------- summary
    results["lines"] = report.lines
    for key, line in report.lines.items():
        results[key] = line["ratio"]
    results.update(
        pss_head_extra_s=extra_ms / 1e3,
        gflops_network=rate_all,
        gflops_pss_head=rate_pss,
        train_step_extra_s=step_extra_ms / 1e3,
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return results


def train_parts(
    fcos: Detector,
    pss: Detector,
    tv: FCOS,
    images: Tensor,
    raw_list: list[Tensor],
    targets: list[dict],
    clock: Clock,
    rounds: int,
    amp: torch.dtype | None,
) -> dict[str, float]:
    """ms of the losses alone (no backward) on fixed head outputs, and of torchvision's transform.

    The outputs keep their graph through the head only (backbone features are
    computed without one) so that this fits in memory next to the models.
    """
    device = images.device
    with torch.no_grad(), autocast(device, amp):
        feats = fcos.backbone(images)
        image_list, tv_targets = tv.transform(raw_list, targets)
        tv_feats = list(tv.backbone(image_list.tensors).values())
    with autocast(device, amp):
        out_f, out_p = fcos.head(feats), pss.head(feats)
        tv_out = tv.head(tv_feats)
        anchors = tv.anchor_generator(image_list, tv_feats)
    per_level = [f.shape[2] * f.shape[3] for f in tv_feats]
    with torch.no_grad():  # what pss_losses hands to the one-to-one assignment
        priors = pss.priors(out_p)
        gt_index = torch.stack([pss.one_to_many(priors, t) for t in targets])
        pos_b, pos_i = torch.nonzero(gt_index >= 0, as_tuple=True)
        select_args = (
            pss.log_prob(out_p),
            pss.decode(out_p),
            targets,
            pos_b,
            pos_i,
            gt_index[pos_b, pos_i],
        )
    times = interleaved(
        clock,
        {
            "losses": lambda: fcos.losses(out_f, targets),
            "pss_losses": lambda: pss.losses(out_p, targets),
            "assignment": lambda: pss.select_one_to_one(*select_args),
            "tv_losses": lambda: tv.compute_loss(tv_targets, tv_out, anchors, per_level),
            "tv_transform": lambda: tv.transform(raw_list, targets),
        },
        rounds,
        1,
    )
    return {k: med(v) * 1e3 for k, v in times.items()}


if __name__ == "__main__":
    main()
