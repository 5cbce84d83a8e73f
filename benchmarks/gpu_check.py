"""What only a GPU can show, in one command: ``make gpu-check``.

On CUDA (the real check, one GPU). The figures (steps 1-4) need no tracking stack
(no MLflow: nothing they import loads it), so they run on a lent GPU machine that
has only the repository and torch:

1. Peak GPU memory per image of an R50 FCOS_PSS training step (80 classes,
   ``train.amp`` default, 800x1333 padded to 800x1344) at batch 2 and 4
   (``torch.cuda.max_memory_allocated``), and the memory one more image costs.
2. ``benchmarks/bench_head.py --device cuda`` at 800x1333, batch 2, in float32 and
   with AMP as ``train.amp`` defaults to it (bfloat16 where the GPU has it, else
   float16): its ratios and PASS/MISS lines, among them our FCOS training step
   against torchvision's (<= 1.0) and e2e / nms post-processing (<= 0.5).
3. Precision and memory order: the R50 FCOS_PSS forward (eval, no grad) and
   training step (forward, losses, backward, clip, SGD) at 800x1333, batch 2, in
   float32, float16 (with a GradScaler) and bfloat16, each contiguous and
   channels-last; A/B interleaved, medians. Targets: float16 no slower than
   float32 (<= 1.0); channels-last is reported against contiguous for each dtype
   (``train.channels_last`` stays off unless it helps).
4. The one-to-one matching: host synchronisations of ``one_to_one_targets`` and
   of the whole PSS loss per step (``torch.cuda.set_sync_debug_mode``; targets,
   whatever the batch: one for the matching, two for the PSS loss with it), and
   their milliseconds, at batch 2 and 8.

With the tracking stack (MLflow), and unless ``--figures-only``:

5. A short AMP training of the smoke config (``fcos_pss_r50_3x.yaml`` +
   ``smoke/overlay.yaml``, as ``sweeps/run.py sweeps/table5.yaml --smoke`` trains
   it) with ``train.amp=fp16``: one epoch of 20 iterations, evaluated; the losses
   and metrics must be finite and the GradScaler in use.
6. DDP with NCCL at world size 1: ``torchrun --nproc_per_node 1 -m pss.train``
   of the smoke config (5 iterations), which must join an NCCL group.

``--reduced`` runs the same steps on the CPU at tiny sizes, so that the script
cannot rot on machines without a GPU (``tests/test_gpu_check.py``):
``bench_head.py --quick`` (AMP: bfloat16), float32 and bfloat16 only (float16's
GradScaler needs CUDA), no synchronisation count (a CPU has no device to wait
for; marked "cpu"), the resident-memory high-water mark (VmHWM) instead of GPU
memory, gloo instead of NCCL.

Everything it writes goes to ``--workdir`` (default ``outputs/gpu_check``),
MLflow runs of steps 5-6 to a store there. Exit status 0 when every step it ran
finished (the short training with finite losses and metrics), 1 otherwise (the
failing step is named); a PASS/MISS verdict is a figure, not a failure.

    make gpu-check
    .venv/bin/python benchmarks/gpu_check.py --figures-only --json /tmp/gpu_check.json
    .venv/bin/python benchmarks/gpu_check.py --reduced --workdir /tmp/gpu-check

On a lent GPU machine whose python3 has torch and torchvision but not pydantic (what
pss.config needs besides them), carry pydantic's wheels for CPython 3.12 (an ignored
``.whl/`` folder: pydantic, pydantic-core, annotated-types, typing-inspection,
typing-extensions) and run, from the repository's root::

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl &&
    PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py \
        --figures-only --workdir /tmp/gpu-check --json "$OUT/gpu_check.json"
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import math
import os
import re
import socket
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from side_by_side import Clock, Report, interleaved, med

REPO = Path(__file__).resolve().parent.parent
SMOKE = [REPO / "experiments" / "fcos_pss_r50_3x.yaml", REPO / "experiments/smoke/overlay.yaml"]
MIB = 2**20
DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
HALF_MAX = 1.0  # float16 / float32 time
# Host synchronisations a step, whatever the batch: the matching's copy of its scores;
# with the PSS loss's one (the count of served objects per image).
SYNC_TARGETS = {"matching": 1, "pss_loss": 2}
CHANNELS_LAST_GAIN = 0.97  # channels-last helps when it takes at most this share of the time


@dataclass
class Setting:
    """What each step runs with: the real check on CUDA, or the reduced one on a CPU."""

    device: torch.device
    amp: str  # train.amp of the short training (step 5)
    bench_args: list[str]  # bench_head.py arguments (the AMP run adds --amp)
    bench_amp: str  # bench_head.py's --amp value
    model: list[str]  # the model of steps 2-4 (config overrides)
    size: tuple[int, int]  # its input, padded to a multiple of 32
    rounds: int  # timed rounds of step 2 (after 2 warm-up rounds)
    dtypes: tuple[str, ...]  # step 2's precisions
    matching_batches: tuple[int, ...]
    memory_amp: str  # train.amp of step 4
    train_overrides: list[str]  # on top of the smoke config
    ddp_overrides: list[str] = field(default_factory=list)


def setting(reduced: bool, workdir: Path) -> Setting:
    r50 = ["model.name=fcos_pss", "model.backbone.name=resnet50", "model.num_classes=80"]
    if not reduced:
        from pss.config import load_config

        smoke_root = REPO / load_config(SMOKE).data.root  # the sweep's, from the repository
        return Setting(
            device=torch.device("cuda"),
            amp="fp16",
            bench_args=["--device", "cuda", "--batch", "2", "--size", "800x1333"],
            bench_amp="auto",
            model=r50,
            size=(800, 1344),
            rounds=10,
            dtypes=("fp32", "fp16", "bf16") if torch.cuda.is_bf16_supported() else ("fp32", "fp16"),
            matching_batches=(2, 8),
            memory_amp="true",
            train_overrides=[
                f"data.root={smoke_root}",
                "data.num_workers=4",
                "train.amp=fp16",
                "train.epochs=1",
                "train.iters_per_epoch=20",
            ],
            ddp_overrides=[
                f"data.root={smoke_root}",
                "train.amp=fp16",
                "train.epochs=1",
                "train.iters_per_epoch=5",
            ],
        )
    # 96 px, not less: on a 64 px image P6 is 1x1, and torch 2.14.1's oneDNN bfloat16
    # backward of P7's stride-2 conv on a 1x1 input returns garbage weight gradients
    # (docs/method.md, Mixed precision).
    tiny = [
        "model.head.channels=32",
        "model.head.num_convs=1",
        f"data.root={workdir / 'shapes-96'}",
        "data.synthetic={train: 8, val: 2, size: 96, seed: 0}",
        "data.train_scales=[96]",
        "data.max_size=144",
        "data.test_scale=96",
        "train.batch_size=2",
        "train.epochs=1",
        "train.iters_per_epoch=2",
        "train.warmup_iters=1",
        "train.log_interval=1",
    ]
    return Setting(
        device=torch.device("cpu"),
        amp="bf16",
        bench_args=["--quick", "--threads", "1"],
        bench_amp="bf16",
        model=[
            "model.name=fcos_pss",
            "model.backbone.name=resnet18",
            "model.num_classes=3",
            "model.head.channels=32",
            "model.head.num_convs=1",
        ],
        size=(96, 96),
        rounds=1,
        dtypes=("fp32", "bf16"),
        matching_batches=(2,),
        memory_amp="bf16",
        train_overrides=[*tiny, "train.amp=bf16"],
        ddp_overrides=[*tiny, "train.amp=false"],
    )


def build_detector(s: Setting, amp: str = "false"):
    """The model of steps 2-4 on the device, in train mode, with its config."""
    from pss.config import load_config
    from pss.models import Detector

    cfg = load_config([], [*s.model, f"train.amp={amp}"])
    return Detector(cfg.model).to(s.device).train(), cfg


def batch_inputs(s: Setting, cfg, batch: int, seed: int = 0):
    """Normalised-looking images [batch, 3, H, W] and 7 random boxes per image."""
    from pss.testing.score_maps import synthetic_targets

    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, *s.size, generator=generator).to(s.device)
    targets = synthetic_targets(s.size, batch, 7, cfg.model.num_classes, s.device, seed)
    return images, targets


# ----------------------------------------------------------------------------- steps


def step_bench_head(s: Setting, workdir: Path) -> dict:
    """bench_head.py in float32 and with AMP (in this process); its ratio lines."""
    import bench_head

    out = {}
    for name, extra in (("fp32", []), ("amp", ["--amp", s.bench_amp])):
        result = workdir / f"bench_head_{name}.json"
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            numbers = bench_head.main([*s.bench_args, *extra, "--json", str(result)])
        lines = [line.strip() for line in printed.getvalue().splitlines() if " target " in line]
        print(f"  {name} (amp {numbers['amp']}):")
        for line in lines:
            print(f"    {line}")
        out[name] = {k: v for k, v in numbers.items() if k.endswith("_ratio")}
        out[name]["amp"] = numbers["amp"]
        _free(s.device)
    return out


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def step_precision(s: Setting, workdir: Path) -> dict:
    """Forward and training step of one model in each dtype, contiguous and channels-last."""
    from pss.engine.step import build_optimizer, forward_losses, optimizer_step, to_memory_format

    plain, cfg = build_detector(s)
    nhwc, _ = build_detector(s)
    nhwc.load_state_dict(plain.state_dict())
    to_memory_format(nhwc, True)
    models = {"contiguous": plain, "channels_last": nhwc}
    optimizers = {k: build_optimizer(cfg, m) for k, m in models.items()}
    images, targets = batch_inputs(s, cfg, 2)
    scalers = {
        k: torch.amp.GradScaler("cuda") if s.device.type == "cuda" else None for k in models
    }

    def forward(order: str, dtype: torch.dtype | None) -> Callable[[], object]:
        def run():
            with torch.no_grad(), torch.autocast(s.device.type, dtype, enabled=dtype is not None):
                return models[order](images)

        return run

    def train_step(order: str, dtype: torch.dtype | None) -> Callable[[], object]:
        scaler = scalers[order] if dtype == torch.float16 else None

        def run():
            loss, _ = forward_losses(models[order], models[order], images, targets, dtype)
            optimizer_step(loss, optimizers[order], scaler, cfg.train.grad_clip)

        return run

    clock = Clock(s.device)
    figures: dict = {"batch": 2, "size": list(s.size), "times_ms": {}}
    report = Report()
    for what, make, train_mode in (("forward", forward, False), ("train_step", train_step, True)):
        for m in models.values():
            m.train(train_mode)
        fns = {
            f"{dtype}/{order}": make(order, DTYPES[dtype]) for dtype in s.dtypes for order in models
        }
        t = interleaved(clock, fns, s.rounds, warmup=2)
        figures["times_ms"][what] = {k: med(v) * 1e3 for k, v in t.items()}
        print(f"  {what} (batch 2, {s.size[0]}x{s.size[1]}), ms: " + ", ".join(
            f"{k} {v:.2f}" for k, v in figures["times_ms"][what].items()
        ))  # fmt: skip
        for dtype in s.dtypes[1:]:
            base = t["fp32/contiguous"]
            half_target = dtype == "fp16"
            report.line(
                f"{what}_{dtype}_over_fp32",
                f"{what} {dtype} / fp32",
                ("fp32", dtype),
                (base, t[f"{dtype}/contiguous"]),
                f"<= {HALF_MAX}" if half_target else "info",
                (lambda r: r <= HALF_MAX) if half_target else None,
            )
        for dtype in s.dtypes:
            report.line(
                f"{what}_{dtype}_channels_last",
                f"{what} {dtype} channels-last / contig",
                ("contig", "nhwc"),
                (t[f"{dtype}/contiguous"], t[f"{dtype}/channels_last"]),
                "info",
                None,
            )
    figures["ratios"] = {k: v["ratio"] for k, v in report.lines.items()}
    default = _default_amp(s)
    helps = all(
        figures["ratios"][f"{what}_{default}_channels_last"] <= CHANNELS_LAST_GAIN
        for what in ("forward", "train_step")
    )
    figures["channels_last_helps_default_amp"] = helps
    print(
        f"  channels-last at train.amp's default here ({default}): "
        f"{'helps' if helps else 'does not help'} (forward and step at most "
        f"{CHANNELS_LAST_GAIN} of contiguous's time)"
        + (" [cpu: no GPU figure]" if s.device.type == "cpu" else "")
    )
    _free(s.device)
    return figures


def _default_amp(s: Setting) -> str:
    """The dtype name ``train.amp: true`` gives on this setting's device (fp32 on a CPU)."""
    from pss.engine.step import autocast_dtype

    dtype = autocast_dtype(True, s.device)
    return next(name for name, d in DTYPES.items() if d == dtype)


def _count_syncs(device: torch.device, fn: Callable[[], object]) -> int | None:
    """Host synchronisations ``fn`` makes on a CUDA device (None on a CPU)."""
    if device.type != "cuda":
        fn()
        return None
    torch.cuda.synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchronizing" in str(w.message) for w in caught)


def step_matching(s: Setting, workdir: Path) -> dict:
    """Host synchronisations and time of the one-to-one matching and of the PSS loss."""
    from pss.models import selector

    model, cfg = build_detector(s)
    clock = Clock(s.device)
    figures = {}
    for batch in s.matching_batches:
        images, targets = batch_inputs(s, cfg, batch, seed=batch)
        with torch.no_grad():
            out = model(images)
            priors = model.priors(out)
            gt_index = torch.stack([model.one_to_many(priors, t) for t in targets])
            pos_b, pos_i = torch.nonzero(gt_index >= 0, as_tuple=True)
            omega = (pos_b, pos_i, gt_index[pos_b, pos_i])
            log_p, boxes = model.log_prob(out), model.decode(out)

        def matching(log_p=log_p, boxes=boxes, targets=targets, omega=omega):
            return selector.one_to_one_targets(log_p, boxes, targets, omega, cfg.model.assign)

        def pss_loss(out=out, targets=targets, log_p=log_p):
            chosen = matching()
            return selector.pss_losses(log_p, chosen, targets, cfg.model.loss)

        def losses(out=out, targets=targets):
            return model.losses(out, targets)

        matching()  # warm-up
        syncs = {name: _count_syncs(s.device, fn) for name, fn in
                 (("matching", matching), ("pss_loss", pss_loss), ("losses", losses))}  # fmt: skip
        t = interleaved(clock, {"matching": matching, "losses": losses}, max(s.rounds, 5), 1)
        ms = {k: med(v) * 1e3 for k, v in t.items()}
        pairs = int(omega[0].numel())
        figures[batch] = {"syncs": syncs, "ms": ms, "candidate_pairs": pairs}
        shown = ", ".join(f"{k} {'cpu' if v is None else v}" for k, v in syncs.items())
        verdicts = ", ".join(
            f"{k} <= {most}: "
            + ("cpu" if syncs[k] is None else ("PASS" if syncs[k] <= most else "MISS"))
            for k, most in SYNC_TARGETS.items()
        )
        print(
            f"  batch {batch} ({pairs} candidate pairs): host synchronisations: {shown} "
            f"(targets {verdicts}); matching {ms['matching']:.2f} ms, all losses "
            f"{ms['losses']:.2f} ms"
        )
    _free(s.device)
    return figures


def step_amp_training(s: Setting, workdir: Path) -> dict:
    """The smoke config trained with ``train.amp``; losses, metrics and the scaler."""
    from mlflow.tracking import MlflowClient

    from pss.config import load_config
    from pss.engine.checkpoint import load_checkpoint
    from pss.engine.train import RunInfo, train
    from pss.tracking.logger import search_runs

    out_dir = workdir / "train-amp"
    cfg = load_config(SMOKE, [*s.train_overrides, f"output_dir={out_dir}"])
    start = time.perf_counter()
    metrics = train(cfg, run=RunInfo(experiment="gpu-check", run_name=f"amp-{s.amp}"))
    seconds = time.perf_counter() - start
    run = next(r for r in search_runs("gpu-check") if r.info.run_name == f"amp-{s.amp}")
    losses = [m.value for m in MlflowClient().get_metric_history(run.info.run_id, "loss")]
    scaler = load_checkpoint(out_dir / "last.pth")["scaler"]
    figures = {
        "amp": s.amp,
        "seconds": seconds,
        "iterations": cfg.train.iters_per_epoch,
        "loss_first_last": [losses[0], losses[-1]],
        "mAP_e2e": metrics["mAP_e2e"],
        "mAP_nms": metrics["mAP_nms"],
        "grad_scaler_scale": scaler["scale"] if scaler else None,
    }
    print(
        f"  train.amp={s.amp}: {cfg.train.iters_per_epoch} iterations in {seconds:.1f} s, loss "
        f"{losses[0]:.3f} -> {losses[-1]:.3f}, mAP e2e {metrics['mAP_e2e']:.1f} nms "
        f"{metrics['mAP_nms']:.1f}, GradScaler scale {figures['grad_scaler_scale']}"
    )
    if not all(math.isfinite(v) for v in [*losses, *metrics.values()]):
        raise RuntimeError(f"non-finite losses or metrics: {losses}, {metrics}")
    if (s.amp == "fp16") != (scaler is not None):
        raise RuntimeError(f"train.amp={s.amp} but the checkpoint's scaler is {scaler}")
    return figures


def _reset_peak(device: torch.device) -> int:
    """Start a peak measurement; returns the memory in use now (bytes)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    return _status("VmRSS")


def _peak(device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    return _status("VmHWM")


def _status(key: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{key}:\s+(\d+)", text).group(1)) * 1024


def step_peak_memory(s: Setting, workdir: Path) -> dict:
    """Peak memory of one AMP training step per image, at batch 2 and 4."""
    from pss.engine.step import autocast_dtype, build_optimizer, forward_losses, optimizer_step

    model, cfg = build_detector(s, s.memory_amp)
    optimizer = build_optimizer(cfg, model)
    amp = autocast_dtype(cfg.train.amp, s.device)
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
    figures = {}
    for batch in (2, 4):
        images, targets = batch_inputs(s, cfg, batch)
        rounds = 2 if s.device.type == "cuda" else 1  # the first one warms the allocator up
        for _ in range(rounds):
            before = _reset_peak(s.device)
            loss, _ = forward_losses(model, model, images, targets, amp)
            optimizer_step(loss, optimizer, scaler, cfg.train.grad_clip)
            del loss
            peak = _peak(s.device)
        figures[batch] = {
            "peak_mib": peak / MIB,
            "step_mib_per_image": (peak - before) / batch / MIB,
        }
    extra = (figures[4]["peak_mib"] - figures[2]["peak_mib"]) / 2
    what = "GPU memory allocated" if s.device.type == "cuda" else "resident memory (VmHWM)"
    for batch, f in figures.items():
        print(
            f"  batch {batch}: peak {what} {f['peak_mib']:.0f} MiB, the step's own "
            f"{f['step_mib_per_image']:.0f} MiB per image"
        )
    dtype = next(n for n, d in DTYPES.items() if d == amp)
    print(f"  one more image costs {extra:.0f} MiB (input {s.size[0]}x{s.size[1]}, {dtype})")
    _free(s.device)
    return {"batches": figures, "mib_per_extra_image": extra, "amp": dtype}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def step_ddp_world_one(s: Setting, workdir: Path) -> dict:
    """``torchrun --nproc_per_node 1 -m pss.train``: the DDP path with one process."""
    backend = "nccl" if s.device.type == "cuda" else "gloo"
    out_dir = workdir / "ddp"
    sets = [f"--set={o}" for o in [*s.ddp_overrides, f"output_dir={out_dir}"]]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1",
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
        "-m", "pss.train", *map(str, SMOKE), *sets, "--experiment", "gpu-check-ddp",
    ]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    joined = f"joined a {backend} process group: rank 0 of 1"
    if proc.returncode != 0 or joined not in proc.stderr:
        raise RuntimeError(
            f"torchrun exited {proc.returncode}; expected '{joined}' in its log:\n"
            f"{proc.stderr[-3000:]}"
        )
    print(f"  {joined}; trained and evaluated in {seconds:.1f} s; it printed:")
    for line in proc.stdout.strip().splitlines():
        print(f"    {line.strip()}")
    return {"backend": backend, "seconds": seconds, "stdout": proc.stdout}


FIGURES = {  # memory first: on a CPU the others' freed memory stays resident
    "peak memory per image at batch 2 and 4": step_peak_memory,
    "bench_head.py in float32 and with AMP": step_bench_head,
    "precision and memory order": step_precision,
    "one-to-one matching host synchronisations": step_matching,
}
TRACKED = {  # these train through pss.engine.train, which logs to MLflow
    "short AMP training of the smoke config": step_amp_training,
    "DDP at world size 1": step_ddp_world_one,
}


def tracking_available() -> bool:
    """Whether MLflow can be imported here (looked up, not imported)."""
    try:
        return importlib.util.find_spec("mlflow") is not None
    except (ImportError, ValueError):  # ValueError: a None stand-in in sys.modules
        return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reduced", action="store_true", help="tiny sizes on the CPU (tests)")
    p.add_argument(
        "--figures-only",
        action="store_true",
        help="steps 1-4 only: nothing that needs the tracking stack (MLflow)",
    )
    p.add_argument("--workdir", type=Path, default=REPO / "outputs" / "gpu_check")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args(argv)
    if not args.reduced and not torch.cuda.is_available():
        p.error("no CUDA device: the GPU check needs one (--reduced runs its CPU form)")
    args.workdir = args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    s = setting(args.reduced, args.workdir)
    where = torch.cuda.get_device_name() if s.device.type == "cuda" else "CPU (reduced form)"
    print(f"gpu_check on {where}: torch {torch.__version__}, train.amp default {_default_amp(s)}")
    steps = dict(FIGURES)
    if args.figures_only:
        skipped = "--figures-only"
    elif not tracking_available():
        skipped = "MLflow is not installed here"
    else:
        skipped = None
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{args.workdir / 'mlflow.db'}"
        os.chdir(args.workdir)  # MLflow's artifacts (./mlruns) land there too
        steps.update(TRACKED)
    figures, failed = {}, []
    for n, (name, step) in enumerate(steps.items(), 1):
        print(f"{n}. {name}", flush=True)
        try:
            figures[name] = step(s, args.workdir)
        except Exception:  # noqa: BLE001 - report the step, go on with the next
            failed.append(name)
            print("  FAILED\n" + traceback.format_exc(), file=sys.stderr)
    if skipped:
        print(f"not run ({skipped}): {', '.join(TRACKED)}")
    print(f"mlflow imported: {'yes' if sys.modules.get('mlflow') is not None else 'no'}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2, default=str))
    print("all steps ran" if not failed else f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
