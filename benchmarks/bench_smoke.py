"""Where a smoke training step spends its time, and what `make demo` should take.

    python benchmarks/bench_smoke.py [--before OLD_OVERLAY] [--steps 20] [--parallel 2]

Builds the Table 5 smoke model (base experiment + experiments/smoke/overlay.yaml,
as ``sweeps/run.py sweeps/table5.yaml --smoke`` does; fcos_pss and atss_pss) and
times training steps part by part on one thread: data (load, augment, collate),
backbone (trunk + FPN) forward, head forward, assignment (one-to-many and the
one-to-one selection), losses (the rest of the loss), backward, optimizer
(clipping + SGD). ``--before`` profiles another overlay in the same process,
alternating with this one step by step, and prints both side by side. Then one
evaluation on the smoke validation set (forward, post-processing of each mode,
COCOeval), the shapes generator's time per image, a job's start-up, and the
demo's expected time: the cells' work spread over ``--parallel`` single-thread jobs.

Times are per-thread CPU seconds (side_by_side's ``Clock(cpu_time=True)``), what a part
costs on one core, less sensitive than wall time to what else runs; the load average is
printed. A job's start-up is wall time (a fresh process).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import torch

from pss.config import ExperimentConfig, load_config
from pss.data import build_dataset, build_loader, render
from pss.engine.evaluate import evaluate
from pss.engine.train import build_model, build_optimizer
from pss.models.decode import modes_for
from side_by_side import Clock

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "experiments" / "fcos_pss_r50_3x.yaml"
OVERLAY = ROOT / "experiments" / "smoke" / "overlay.yaml"
CELLS = {"fcos_pss": 3, "atss_pss": 3}  # Table 5: three PSS depths of each
PARTS = ("data", "backbone", "head", "assignment", "losses", "backward", "optimizer")
TARGET_DEMO_S = 600.0  # issue 13: the whole Table 5 smoke sweep, after set-up
MIN_VAL_IMAGES = 100  # so that one image moves mAP by less than a point


class Stepper:
    """One config's model, optimizer and loader; ``step()`` times one training step."""

    def __init__(self, cfg: ExperimentConfig) -> None:
        t = cfg.train
        dataset = build_dataset(cfg.data, "train", seed=t.seed)
        torch.manual_seed(t.seed)
        self.detector = build_model(cfg, torch.device("cpu")).train()
        self.optimizer = build_optimizer(cfg, self.detector)
        self.grad_clip = t.grad_clip
        loader = build_loader(
            dataset, t.batch_size, 0, True, t.seed, False, cfg.data.size_divisibility, epoch=1
        )
        self.batches = iter(loader)
        self.clock = Clock(cpu_time=True)
        for name in ("one_to_many", "select_one_to_one"):  # the assignment, inside the loss
            self._time_method(name)

    def _time_method(self, name: str) -> None:
        method = getattr(self.detector, name)

        def timed(*args, **kwargs):
            with self.clock.part("assignment"):
                return method(*args, **kwargs)

        setattr(self.detector, name, timed)

    def step(self) -> dict[str, float]:
        """CPU seconds of each part of one step."""
        clock, detector = self.clock, self.detector
        with clock.part("data"):
            images, targets = next(self.batches)
        with clock.part("backbone"):
            feats = detector.backbone(images)
        with clock.part("head"):
            out = detector.head(feats)
        with clock.part("loss"):
            losses = detector.losses(out, targets)
        with clock.part("backward"):
            self.optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
        with clock.part("optimizer"):
            if self.grad_clip:
                torch.nn.utils.clip_grad_norm_(detector.parameters(), self.grad_clip)
            self.optimizer.step()
        row = {name: clock.take(name) for name in PARTS if name not in ("losses",)}
        row["losses"] = clock.take("loss") - row["assignment"]
        return row


def profile_steps(configs: dict[str, ExperimentConfig], steps: int, warmup: int):
    """Mean CPU seconds per step of each part, per config, the configs stepping in turn."""
    steppers = {label: Stepper(cfg) for label, cfg in configs.items()}
    totals = {label: dict.fromkeys(PARTS, 0.0) for label in configs}
    for i in range(warmup + steps):
        for label, stepper in steppers.items():
            row = stepper.step()
            if i >= warmup:
                for part in PARTS:
                    totals[label][part] += row[part] / steps
    return totals


def profile_eval(cfg: ExperimentConfig) -> tuple[dict[str, float], int]:
    """CPU seconds of one evaluation of an untrained model, by part; and the image count."""
    val_set = build_dataset(cfg.data, "val", seed=cfg.train.seed)
    loader = build_loader(
        val_set, cfg.eval.batch_size, 0, False, 0, False, cfg.data.size_divisibility
    )
    detector = build_model(cfg, torch.device("cpu"))
    modes = list(modes_for(cfg.model.has_pss, cfg.eval.modes))
    clock = Clock(cpu_time=True)
    with clock.part("evaluation"):
        metrics = evaluate(detector, loader, val_set, modes, torch.device("cpu"))
    total = clock.take("evaluation")
    n = len(val_set)
    parts = {"forward": metrics["forward_ms"] * n / 1000}
    for mode in modes:
        parts[f"post-processing {mode}"] = metrics[f"postprocess_ms_{mode}"] * n / 1000
    parts["COCOeval and the rest"] = total - sum(parts.values())
    parts["total"] = total
    return parts, n


def render_seconds(size: int, images: int = 20) -> float:
    """CPU seconds the shapes generator takes per image of ``size`` px."""
    seconds = Clock(cpu_time=True)(lambda: [render(0, "train", i, size) for i in range(images)])
    return seconds / images


def startup_seconds() -> float:
    """Wall seconds for a fresh process to import what a sweep job imports."""
    code = "import pss.engine.train, pss.sweep.worker"
    return Clock()(lambda: subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT))


def evaluations(cfg: ExperimentConfig) -> int:
    t = cfg.train
    return sum(e % cfg.eval.interval == 0 or e == t.epochs for e in range(1, t.epochs + 1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--overlay", type=Path, default=OVERLAY, help="the smoke overlay")
    parser.add_argument("--before", type=Path, help="another overlay, profiled side by side")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per config")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--parallel", type=int, default=2, help="single-thread jobs at once")
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.chdir(ROOT)
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("CPU ms per training step, one thread (Table 5 smoke cells)")
    cell_s = {}
    for name in CELLS:
        configs = {"now": load_config([BASE, args.overlay], [f"model.name={name}"])}
        if args.before is not None:
            configs = {"before": load_config([BASE, args.before], [f"model.name={name}"])} | configs
        profile = profile_steps(configs, args.steps, args.warmup)
        labels = list(configs)
        print(f"\n{name}: " + "; ".join(f"{k}: {_describe(configs[k])}" for k in labels))
        print(f"{'part':<12}" + "".join(f"{k + ' ms':>12}" for k in labels))
        for part in PARTS:
            print(f"{part:<12}" + "".join(f"{1000 * profile[k][part]:12.1f}" for k in labels))
        steps = {k: sum(profile[k].values()) for k in labels}
        print(f"{'step':<12}" + "".join(f"{1000 * steps[k]:12.1f}" for k in labels))
        if args.before is not None:
            print(f"step now / before: {steps['now'] / steps['before']:.3f}")
        cfg = configs["now"]
        parts, n_val = profile_eval(cfg)
        print(f"one evaluation (cpu s), {n_val} images, modes {', '.join(cfg.eval.modes)}:")
        for part, seconds in parts.items():
            print(f"  {part:<24} {seconds:6.2f}")
        t = cfg.train
        n_steps = t.epochs * t.iters_per_epoch
        train_s, eval_s = n_steps * steps["now"], evaluations(cfg) * parts["total"]
        cell_s[name] = train_s + eval_s
        print(
            f"cell: {n_steps} steps x {1000 * steps['now']:.0f} ms = {train_s:.0f} s, "
            f"{evaluations(cfg)} evaluations = {eval_s:.0f} s; {cell_s[name]:.0f} cpu s"
        )
    cfg = load_config([BASE, args.overlay])
    synthetic = cfg.data.synthetic
    per_image = render_seconds(synthetic.size)
    generate_s = per_image * (synthetic.train + synthetic.val)
    start_s = startup_seconds()
    jobs = sum(CELLS.values())
    work = sum(cell_s[name] * count for name, count in CELLS.items()) + jobs * start_s
    demo = work / args.parallel + generate_s  # the first jobs all generate the data at once
    print(
        f"\nshapes generator: {1000 * per_image:.1f} ms per {synthetic.size} px image, "
        f"{synthetic.train} + {synthetic.val} images = {generate_s:.0f} s"
    )
    print(f"job start-up (imports, wall): {start_s:.1f} s")
    print(
        f"demo: ({sum(cell_s[n] * c for n, c in CELLS.items()):.0f} + {jobs} x {start_s:.1f}) "
        f"/ {args.parallel} + {generate_s:.0f} = {demo:.0f} s expected on a quiet machine; "
        f"target <= {TARGET_DEMO_S:.0f} s: {'met' if demo <= TARGET_DEMO_S else 'MISSED'}"
    )
    print(
        f"validation images: {synthetic.val}; target >= {MIN_VAL_IMAGES}: "
        f"{'met' if synthetic.val >= MIN_VAL_IMAGES else 'MISSED'}"
    )
    return 0


def _describe(cfg: ExperimentConfig) -> str:
    return (
        f"{cfg.model.backbone.name}, {cfg.data.synthetic.size} px data trained at "
        f"{cfg.data.train_scales}, batch {cfg.train.batch_size}, head {cfg.model.head.channels}"
    )


if __name__ == "__main__":
    sys.exit(main())
