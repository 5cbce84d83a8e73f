"""What only a GPU can show, in one command: ``make gpu-check``.

On CUDA (the real check, one GPU):

1. ``benchmarks/bench_head.py --device cuda`` at 800x1333, batch 2, without
   and with ``--amp`` (float16 autocast and a GradScaler): its ratios and
   PASS/MISS lines.
2. A short AMP training of the smoke sweep's config (``fcos_pss_r50_3x.yaml``
   + ``smoke/overlay.yaml``, as ``sweeps/run.py sweeps/table5.yaml --smoke``
   trains it) with ``train.amp=fp16``: one epoch of 20 iterations, evaluated;
   the losses and metrics must be finite and the GradScaler in use.
3. Peak GPU memory per image of an R50 FCOS_PSS training step (80 classes,
   float16 AMP, 800x1333 padded to 800x1344) at batch 2 and 4
   (``torch.cuda.max_memory_allocated``), and the memory one more image costs.
4. DDP with NCCL at world size 1: ``torchrun --nproc_per_node 1 -m pss.train``
   of the smoke config (5 iterations), which must join an NCCL group.

``--reduced`` runs the same four steps on the CPU at tiny sizes, so that the
script cannot rot on machines without a GPU (``tests/test_gpu_check.py``):
``bench_head.py --quick`` (no AMP variant: it needs CUDA), bfloat16 autocast
instead of float16, the resident-memory high-water mark (VmHWM) instead of
GPU memory, gloo instead of NCCL.

Everything it writes goes to ``--workdir`` (default ``outputs/gpu_check``),
its MLflow runs to a store there. Exit status 0 when every step ran and its
numbers are finite, 1 otherwise (the failing step is named).

    make gpu-check
    .venv/bin/python benchmarks/gpu_check.py --reduced --workdir /tmp/gpu-check
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import socket
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
SMOKE = [REPO / "experiments" / "fcos_pss_r50_3x.yaml", REPO / "experiments/smoke/overlay.yaml"]
MIB = 2**20


@dataclass
class Setting:
    """What each step runs with: the real check on CUDA, or the reduced one on a CPU."""

    device: torch.device
    amp: str  # train.amp of the training steps
    bench_args: list[str]  # bench_head.py arguments (the AMP variant adds --amp)
    bench_amp: bool
    train_overrides: list[str]  # on top of the smoke config
    memory_model: list[str]  # the model whose training step's memory is measured
    memory_size: tuple[int, int]
    ddp_overrides: list[str] = field(default_factory=list)


def setting(reduced: bool, workdir: Path) -> Setting:
    if not reduced:
        from pss.config import load_config

        smoke_root = REPO / load_config(SMOKE).data.root  # the sweep's, from the repository
        return Setting(
            device=torch.device("cuda"),
            amp="fp16",
            bench_args=["--device", "cuda", "--batch", "2", "--size", "800x1333"],
            bench_amp=True,
            train_overrides=[
                f"data.root={smoke_root}",
                "data.num_workers=4",
                "train.amp=fp16",
                "train.epochs=1",
                "train.iters_per_epoch=20",
            ],
            memory_model=["model.backbone.name=resnet50", "model.num_classes=80"],
            memory_size=(800, 1344),
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
        bench_amp=False,
        train_overrides=[*tiny, "train.amp=bf16"],
        memory_model=[
            "model.backbone.name=resnet18",
            "model.num_classes=3",
            "model.head.channels=32",
            "model.head.num_convs=1",
        ],
        memory_size=(96, 96),
        ddp_overrides=[*tiny, "train.amp=false"],
    )


# ----------------------------------------------------------------------------- steps


def step_bench_head(s: Setting, workdir: Path) -> dict:
    """bench_head.py without and with AMP; its ratios and verdict lines."""
    out = {}
    for amp in (False, True):
        if amp and not s.bench_amp:
            print("  --amp: not run (bench_head's AMP is float16 with a GradScaler: CUDA only)")
            continue
        name = "amp" if amp else "fp32"
        result = workdir / f"bench_head_{name}.json"
        cmd = [sys.executable, str(REPO / "benchmarks/bench_head.py"), *s.bench_args]
        cmd += ["--json", str(result), *(["--amp"] if amp else [])]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"bench_head.py {name} failed:\n{proc.stderr[-3000:]}")
        lines = proc.stdout.splitlines()
        verdicts = [line.strip() for line in lines if "PASS" in line or "MISS" in line]
        print(f"  {name}:")
        for line in verdicts:
            print(f"    {line}")
        numbers = json.loads(result.read_text())
        out[name] = {k: v for k, v in numbers.items() if k.endswith("_ratio")}
    return out


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
    from pss.config import load_config
    from pss.engine.train import autocast_dtype, build_optimizer, forward_losses, optimizer_step
    from pss.models import Detector

    cfg = load_config([], ["model.name=fcos_pss", *s.memory_model, f"train.amp={s.amp}"])
    model = Detector(cfg.model).to(s.device).train()
    optimizer = build_optimizer(cfg, model)
    amp = autocast_dtype(cfg.train.amp, s.device)
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
    height, width = s.memory_size
    generator = torch.Generator().manual_seed(0)
    figures = {}
    for batch in (2, 4):
        images = torch.randn(batch, 3, height, width, generator=generator).to(s.device)
        targets = []
        for _ in range(batch):
            xy = torch.rand(7, 2, generator=generator) * torch.tensor([width / 2, height / 2])
            wh = 16 + torch.rand(7, 2, generator=generator) * torch.tensor([width, height]) / 3
            boxes = torch.cat([xy, xy + wh], 1)
            labels = torch.randint(0, cfg.model.num_classes, (7,), generator=generator)
            targets.append({"boxes": boxes.to(s.device), "labels": labels.to(s.device)})
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
    print(f"  one more image costs {extra:.0f} MiB (input {height}x{width}, amp {s.amp})")
    return {"batches": figures, "mib_per_extra_image": extra}


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


STEPS = {
    "bench_head.py without and with AMP": step_bench_head,
    "short AMP training of the smoke config": step_amp_training,
    "peak memory per image at batch 2 and 4": step_peak_memory,
    "DDP at world size 1": step_ddp_world_one,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reduced", action="store_true", help="tiny sizes on the CPU (tests)")
    p.add_argument("--workdir", type=Path, default=REPO / "outputs" / "gpu_check")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args(argv)
    if not args.reduced and not torch.cuda.is_available():
        p.error("no CUDA device: the GPU check needs one (--reduced runs its CPU form)")
    args.workdir = args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{args.workdir / 'mlflow.db'}"
    os.chdir(args.workdir)  # MLflow's artifacts (./mlruns) land there too
    s = setting(args.reduced, args.workdir)
    where = torch.cuda.get_device_name() if s.device.type == "cuda" else "CPU (reduced form)"
    print(f"gpu_check on {where}: torch {torch.__version__}, amp {s.amp}")
    figures, failed = {}, []
    for n, (name, step) in enumerate(STEPS.items(), 1):
        print(f"{n}. {name}")
        try:
            figures[name] = step(s, args.workdir)
        except Exception:  # noqa: BLE001 - report the step, go on with the next
            failed.append(name)
            print("  FAILED\n" + traceback.format_exc(), file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
    print("all steps ran" if not failed else f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
