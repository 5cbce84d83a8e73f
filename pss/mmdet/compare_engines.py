"""Both engines trained side by side, step by step: do they go to the same place?

    python -m pss.mmdet.compare_engines experiments/fcos_pss_r50_3x.yaml \\
        experiments/smoke/overlay.yaml --steps 20 [--set KEY=VALUE ...]

Three trainings of one config start from the same weights and take the same batches,
our loader's (its order, its resize and flip decisions):

* **ours**: :func:`pss.engine.train.build_loop` and :func:`~pss.engine.train.train_step`,
  our optimizer, schedule and clipping;
* **mmdet**: the model of the translated config (:func:`pss.mmdet.translate.mmdet_config`)
  with our weights copied in, mmengine's optimizer wrapper (its clipping) and parameter
  schedulers built from that config, stepped as mmengine's ``ParamSchedulerHook``
  steps them (iteration-based ones after every step, epoch-based ones after an epoch),
  mmengine's ``train_step`` without its data preprocessor (both models take our tensors;
  CondInst's masks go over as bitmaps padded to the batch);
* **noise**: ours again, every weight moved by one float32 rounding (relative 2^-23)
  and each batch's images in reverse order (the same sums, added in another order, as
  two engines add them): how far float rounding alone takes two trainings apart in
  these steps. It is the yardstick: a part agrees when its difference stays within
  ``NOISE_FACTOR`` times the noise run's largest difference so far (at least ``FLOOR``).
  Trainings are chaotic: within a few steps at a full learning rate the noise run is as
  far from ours as any other training, so the comparison is sharp in its first steps
  (a warm-up) and blunt after.

Each step prints the learning rate and every loss on both sides and the largest relative
difference of the weights after it. The batch's images and boxes also go through mmdet's
own pipeline (loading, resizing to the same shorter side, flipping as ours did) and its
data preprocessor: the pixels must agree to float rounding (``PIXELS``), the boxes within
``BOX_PX`` (mmdet scales boxes by the per-axis ratios of the rounded size, ours by one
scale: docs/mmdet.md), CondInst's masks within ``MASK_PX`` (mmdet resizes them by nearest
neighbour). Exit 0 when every part agrees at every step, 1 otherwise (naming
the first step and part that do not), 2 bad input.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import logging
import math
import sys
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from pss.config import ExperimentConfig, add_config_arguments, load_config
from pss.data.transforms import resized_shape
from pss.engine.train import Loop, build_loop, train_step
from pss.errors import EXIT_FAILED, EXIT_INVALID, EXIT_OK, UserError
from pss.mmdet.train import LOSS_NAMES
from pss.mmdet.translate import mmdet_config

NOISE_FACTOR = 10.0  # a part may differ by this many times float noise's own difference
FLOOR = 1e-5  # relative; below it, every difference is float rounding (losses: 5e-7 at one step)
LR_RTOL = 1e-6  # the schedules are the same function: only float64 rounding apart
PIXELS = 1e-4  # normalised units: (x/255 - m)/s against (x - 255 m)/(255 s) in float32
BOX_PX = 0.5  # per-axis ratios of the rounded size against one scale: < 0.5 px apart
# Masks resized by mmdet (OpenCV nearest, BitmapMasks.rescale) and by ours (bilinear,
# pixel centres aligned, >= 0.5) part at the objects' edges by less than a source pixel:
# below 2 px of the resized image at scales below 2 (8-neighbour steps: 2 at 1.17, seen).
MASK_PX = 2


@dataclass
class MmdetTraining:
    """The translated config's model, optimizer wrapper and schedulers (mmengine's)."""

    cfg: Any  # mmengine Config
    model: torch.nn.Module
    wrapper: Any  # mmengine OptimWrapper
    schedulers: list[Any]
    names: dict[str, str]  # our weight name -> mmdet's

    def lr(self) -> float:
        return float(self.wrapper.get_lr()["lr"][0])

    def step(self, images: Tensor, targets: list[dict[str, Any]]) -> dict[str, float]:
        """mmengine's ``BaseModel.train_step`` on our tensors; iteration schedulers step."""
        samples = _data_samples(images, targets)
        with self.wrapper.optim_context(self.model):  # as BaseModel.train_step
            losses = self.model.loss(images, samples)
        loss, log_vars = self.model.parse_losses(losses)
        self.wrapper.update_params(loss)
        for scheduler in self.schedulers:
            if not scheduler.by_epoch:
                scheduler.step()
        return {
            LOSS_NAMES.get(k, k): float(torch.as_tensor(v).detach())
            for k, v in log_vars.items()
        }

    def end_epoch(self) -> None:
        for scheduler in self.schedulers:
            if scheduler.by_epoch:
                scheduler.step()

    def weights(self) -> dict[str, Tensor]:
        state = self.model.state_dict()
        return {ours: state[theirs] for ours, theirs in self.names.items()}


def build_mmdet_training(cfg: ExperimentConfig, loop: Loop) -> MmdetTraining:
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import PARAM_SCHEDULERS

    from pss.mmdet.config import build_model
    from pss.mmdet.config import load_config as load_mmdet_config
    from pss.mmdet.convert import PREDICTOR_PREFIX, copy_weights, mmdet_key

    files, options = mmdet_config(cfg, classes=loop.train_set.class_names)
    mcfg = load_mmdet_config(files, options)
    model = build_model(mcfg)
    zeroed = copy_weights(loop.detector, model)
    if zeroed:
        raise UserError(f"mmdet's model has weights ours has not: {zeroed[:3]}")
    model.train()
    wrapper = build_optim_wrapper(model, mcfg.optim_wrapper)
    schedulers = [
        PARAM_SCHEDULERS.build(dict(s), default_args={"optimizer": wrapper})
        for s in mcfg.param_scheduler
    ]
    prefix = PREDICTOR_PREFIX[cfg.model.base]
    names = {
        k: mmdet_key(k, prefix)
        for k in loop.detector.state_dict()
        if not k.endswith("num_batches_tracked")
    }
    return MmdetTraining(mcfg, model, wrapper, schedulers, names)


def _data_samples(images: Tensor, targets: list[dict[str, Any]]) -> list[Any]:
    """mmdet's DetDataSamples of our batch (shapes, scale, flip and boxes as ours)."""
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    batch_shape = tuple(images.shape[-2:])
    samples = []
    for t in targets:
        sample = DetDataSample(
            metainfo={
                "img_id": int(t["image_id"]),
                "img_shape": tuple(t["size"]),
                "ori_shape": tuple(t["orig_size"]),
                "pad_shape": batch_shape,
                "batch_input_shape": batch_shape,
                "scale_factor": (float(t["scale"]), float(t["scale"])),
                "flip": bool(t["flipped"]),
                "flip_direction": "horizontal" if t["flipped"] else None,
            }
        )
        sample.gt_instances = InstanceData(
            bboxes=t["boxes"].clone().float(), labels=t["labels"].clone()
        )
        if "masks" in t:  # CondInst: padded to the batch, as mmdet's data preprocessor does
            sample.gt_instances.masks = _padded_masks(t["masks"], batch_shape)
        samples.append(sample)
    return samples


def _padded_masks(masks: Tensor, shape: tuple[int, int]) -> Any:
    """mmdet's BitmapMasks of one image's masks [M, h, w] (0 / 1), zero padded to ``shape``."""
    from mmdet.structures.mask import BitmapMasks

    padded = masks.new_zeros((len(masks), *shape), dtype=torch.uint8)
    padded[:, : masks.shape[1], : masks.shape[2]] = masks.to(torch.uint8)
    return BitmapMasks(padded.numpy(), *shape)


# --------------------------------------------------------------------------- the data


class MmdetPipeline:
    """mmdet's translated training pipeline, its random decisions replaced by ours."""

    def __init__(self, cfg: ExperimentConfig, training: MmdetTraining) -> None:
        from mmdet.registry import DATASETS, TRANSFORMS
        from mmdet.utils import register_all_modules

        register_all_modules()
        dataset_cfg = copy.deepcopy(training.cfg.train_dataloader.dataset)
        steps = list(dataset_cfg.pipeline)
        dataset_cfg.pipeline = []
        dataset_cfg.filter_cfg = None  # every image, as ours
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools' progress lines
            self.dataset = DATASETS.build(dataset_cfg)
        self.index = {
            int(self.dataset.get_data_info(i)["img_id"]): i for i in range(len(self.dataset))
        }
        self.steps = steps
        self.cfg = cfg
        self.transforms = TRANSFORMS
        self.preprocessor = training.model.data_preprocessor

    def batch(self, targets: list[dict[str, Any]]) -> dict[str, Any]:
        """mmdet's preprocessed batch (``inputs`` [B, 3, H, W], ``data_samples``)."""
        from mmcv.transforms import Compose

        items = []
        for t in targets:
            pipeline = Compose([self.transforms.build(s) for s in self._forced(t)])
            info = copy.deepcopy(self.dataset.get_data_info(self.index[int(t["image_id"])]))
            items.append(pipeline(info))
        data = {
            "inputs": [i["inputs"] for i in items],
            "data_samples": [i["data_samples"] for i in items],
        }
        return self.preprocessor(data, training=True)

    def _forced(self, t: dict[str, Any]) -> list[dict[str, Any]]:
        """The pipeline with the resize to our shorter side and our flip decision."""
        d = self.cfg.data
        height, width = (int(v) for v in t["orig_size"])
        short = next(
            s
            for s in d.train_scales
            if resized_shape(height, width, s, d.max_size)[:2] == tuple(t["size"])
        )
        steps = []
        for step in self.steps:
            step = dict(step)
            if step["type"] == "RandomChoiceResize":
                step.pop("scales"), step.pop("resize_type", None)
                step = {**step, "type": "Resize", "scale": (d.max_size, short)}
            elif step["type"] == "RandomFlip":
                step["prob"] = 1.0 if t["flipped"] else 0.0
            steps.append(step)
        return steps


def data_differences(
    pipeline: MmdetPipeline, images: Tensor, targets: list[dict[str, Any]]
) -> dict[str, float]:
    """Largest |difference| of the normalised pixels and of the boxes (px), ours vs mmdet's,
    and with masks (CondInst) the largest 1 - IoU of an object's mask."""
    theirs = pipeline.batch(targets)
    inputs = theirs["inputs"].float()
    pixels = float("inf")
    if inputs.shape == images.shape:
        pixels = float((inputs - images).abs().max())
    boxes = 0.0
    for t, sample in zip(targets, theirs["data_samples"]):
        their_boxes = sample.gt_instances.bboxes
        their_boxes = getattr(their_boxes, "tensor", their_boxes)
        if their_boxes.shape != t["boxes"].shape:
            return {"pixels": pixels, "boxes": float("inf")}
        if len(their_boxes):
            boxes = max(boxes, float((their_boxes - t["boxes"]).abs().max()))
    found = {"pixels": pixels, "boxes": boxes}
    if all("masks" in t for t in targets):
        samples = theirs["data_samples"]
        found["masks"] = max(_mask_gap(t["masks"], s) for t, s in zip(targets, samples))
    return found


def _mask_gap(ours: Tensor, sample: Any) -> float:
    """How far (px) one image's masks [M, h, w] and the mmdet sample's (padded to the
    batch) are apart at most: 0 the same, k every pixel of each within k px (8-neighbour
    steps) of the other, up to MASK_PX + 1; inf a different number of masks."""
    h, w = ours.shape[-2:]
    theirs = sample.gt_instances.masks.to_tensor(dtype=torch.float32, device=ours.device)
    if theirs.shape[0] != ours.shape[0]:
        return math.inf
    a, b = ours.float()[None], theirs[None, :, :h, :w]
    for k in range(MASK_PX + 1):
        if not ((a > grown(b, k)).any() or (b > grown(a, k)).any()):
            return float(k)
    return float(MASK_PX + 1)


def grown(masks: Tensor, k: int) -> Tensor:
    """Masks [1, M, h, w] (0 / 1) grown by k px (8-neighbour steps)."""
    return F.max_pool2d(masks, 2 * k + 1, stride=1, padding=k) if k else masks


# --------------------------------------------------------------------------- comparing


def relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), 1e-12)


def weight_difference(ours: dict[str, Tensor], theirs: dict[str, Tensor]) -> tuple[float, str]:
    """||a - b|| / ||a|| over all weights (and norm statistics) together, and the tensor
    with the largest share of the difference. (Per tensor, one that starts at zero, a
    BatchNorm bias, say, would make any difference look large.)"""
    total = squared = 0.0
    worst, name = -1.0, ""
    for key, a in ours.items():
        diff = float((a.float() - theirs[key].float()).norm() ** 2)
        squared += diff
        total += float(a.float().norm() ** 2)
        if diff > worst:
            worst, name = diff, key
    return (squared / max(total, 1e-24)) ** 0.5, name


def _our_weights(loop: Loop) -> dict[str, Tensor]:
    return {k: v for k, v in loop.detector.state_dict().items() if v.is_floating_point()}


@torch.no_grad()
def perturb_(loop: Loop, seed: int = 0) -> None:
    """Every weight moved by one float32 rounding, up or down at random (the noise run)."""
    g = torch.Generator().manual_seed(seed)
    for p in loop.detector.parameters():
        sign = torch.randint(0, 2, p.shape, generator=g).float() * 2 - 1
        p.mul_(1 + sign * 2.0**-23)


@dataclass
class Verdict:
    """The first part of the first step beyond its tolerance (None: all agree)."""

    noise: dict[str, float] = field(default_factory=dict)  # part -> largest noise so far
    first: str | None = None

    def check(self, step: int, part: str, diff: float, noise: float, fixed: float | None) -> str:
        """'' when ``part`` agrees at this step, else its name; remembers the first failure.

        diff: the engines' difference; noise: the noise run's; fixed: a tolerance of
        its own (the data, the schedule) instead of NOISE_FACTOR x the noise so far."""
        self.noise[part] = max(self.noise.get(part, 0.0), noise)
        allowed = fixed if fixed is not None else max(NOISE_FACTOR * self.noise[part], FLOOR)
        if diff <= allowed:
            return ""
        if self.first is None:
            self.first = f"step {step}: {part} apart by {diff:.3g} (allowed {allowed:.3g})"
        return part


def _row(step: str, who: str, cells: list[str], tail: list[str] = ()) -> str:
    """One line of the per-step table: 8 + 6 characters, 11 a column, then ``tail``."""
    return (f"{step:<8}{who:<6}" + "".join(f"{c:<11}" for c in cells) + "  ".join(tail)).rstrip()


def compare(cfg: ExperimentConfig, steps: int, out=sys.stdout) -> bool:
    """Train ``steps`` steps on both engines (and the noise run); True when they agree."""
    ours = build_loop(cfg, None)
    noise = build_loop(cfg.model_copy(deep=True), None)
    perturb_(noise)
    theirs = build_mmdet_training(cfg, ours)
    pipeline = MmdetPipeline(cfg, theirs)
    verdict = Verdict()
    step = 0
    epoch = 1
    while step < steps:
        loader = ours.train_loader(epoch)
        for k, (images, targets) in enumerate(loader):
            if k >= ours.iters or step >= steps:
                break
            data = data_differences(pipeline, images, targets)
            lrs = (ours.scheduler.get_last_lr()[0], theirs.lr())
            ours_losses = train_step(ours, epoch, images, targets)
            noise_losses = train_step(noise, epoch, images.flip(0), targets[::-1])
            their_losses = theirs.step(images, targets)
            parts = list(ours_losses)
            if step == 0:
                print(_row("", "", ["lr", *parts], ["weights (float noise)"]), file=out)
            rows = {"ours": [f"{lrs[0]:.4g}"], "mmdet": [f"{lrs[1]:.4g}"], "apart": []}
            tail: list[str] = []
            apart = [verdict.check(step, "lr", relative(*lrs), 0.0, LR_RTOL)]
            rows["apart"].append(f"{relative(*lrs):.1g}")
            for part in parts:
                a, b = ours_losses[part], their_losses.get(part, math.nan)
                diff = relative(a, b) if not math.isnan(b) else math.inf
                noise_diff = relative(a, noise_losses[part])
                apart.append(verdict.check(step, part, diff, noise_diff, None))
                rows["ours"].append(f"{a:.5f}")
                rows["mmdet"].append(f"{b:.5f}")
                rows["apart"].append(f"{diff:.1g}")
            ours_w = _our_weights(ours)
            worst, _ = weight_difference(ours_w, theirs.weights())
            noise_w, _ = weight_difference(ours_w, _our_weights(noise))
            apart.append(verdict.check(step, "weights", worst, noise_w, None))
            tail.append(f"{worst:.1g} ({noise_w:.1g})")
            apart.append(verdict.check(step, "data: pixels", data["pixels"], 0.0, PIXELS))
            apart.append(verdict.check(step, "data: boxes", data["boxes"], 0.0, BOX_PX))
            tail.append(f"data: pixels {data['pixels']:.1g}, boxes {data['boxes']:.1g} px")
            if "masks" in data:
                apart.append(verdict.check(step, "data: masks", data["masks"], 0.0, MASK_PX))
                tail[-1] += f", masks {data['masks']:.0f} px"
            failed = [a for a in apart if a]
            if failed:
                tail.append("<- apart: " + ", ".join(failed))
            for who, cells in rows.items():
                label = f"step {step}" if who == "ours" else ""
                print(_row(label, who, cells, tail if who == "apart" else []), file=out)
            out.flush()
            step += 1
        if step < steps:
            theirs.end_epoch()
            epoch += 1
    worst, name = weight_difference(_our_weights(ours), theirs.weights())
    noise_w, _ = weight_difference(_our_weights(ours), _our_weights(noise))
    print(
        f"after {steps} steps: the weights apart by {worst:.3g} of their norm (most in "
        f"{name}); float noise alone: {noise_w:.3g}",
        file=out,
    )
    if verdict.first is None:
        print("the engines agree (within float noise at every step)", file=out)
        return True
    print(f"the engines part at {verdict.first}", file=out)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pss.mmdet.compare_engines", description=__doc__.split("\n")[0]
    )
    add_config_arguments(parser)
    parser.add_argument("--steps", type=int, default=20, help="training steps (default 20)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        if args.steps < 1:
            raise UserError(f"--steps must be at least 1 (got {args.steps})")
        cfg = load_config(args.config, args.overrides)
        cfg.data.num_workers = 0
        agree = compare(cfg, args.steps)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    return EXIT_OK if agree else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
