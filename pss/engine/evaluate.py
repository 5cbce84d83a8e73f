"""COCO evaluation of one model in several inference modes, with timings.

For every batch the network forward runs once; each mode ("e2e", "nms",
"raw") then post-processes the same outputs. Forward and post-processing are
timed separately (synchronised on CUDA) and reported in ms per image. The
detections go through pycocotools' COCOeval (bbox) and come back in percent:

    mAP, AP50, AP75, APs, APm, APl, mAR (= AR@100)

An instance segmentation model's masks (pasted at each file's pixels, RLE) go through
COCOeval with iouType "segm" as well: the same family as mAP_segm, AP50_segm, ...
(:func:`pss.contract.segm_name`), beside the box metrics in every mode.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections.abc import Iterable
from pathlib import Path

import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tqdm import tqdm

from pss import dist
from pss.contract import ACCURACY, FORWARD_MS, POSTPROCESS_MS, metric_name, segm_name
from pss.models import Detector
from pss.models.condinst import paste_masks, segm_rows
from pss.models.decode import coco_rows

# COCOeval.stats index of each metric we report.
# Where each accuracy metric sits in COCOeval.stats (mAR is AR@100, all areas).
STATS = dict(zip(ACCURACY, (0, 8, 1, 2, 3, 4, 5)))
WARMUP_BATCHES = 2  # not timed


def untimed_batches(loader) -> int:
    """How many batches at the start are left out of the timings: ``WARMUP_BATCHES``, or
    none when the loader has no more batches than that (so that tiny sets still time)."""
    return WARMUP_BATCHES if len(loader) > WARMUP_BATCHES else 0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def coco_metrics(
    coco_gt: COCO, detections: list[dict], image_ids: list[int], iou_type: str = "bbox"
) -> dict[str, float]:
    """COCOeval metrics in percent (all 0 when there is no detection); ``iou_type``
    "bbox" (boxes) or "segm" (masks: ``segmentation`` RLEs). ``detections`` stay as they
    are (``loadRes`` adds fields to what it gets: copies of them)."""
    if not detections:
        return {name: 0.0 for name in STATS}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes([dict(d) for d in detections])
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        evaluator.params.imgIds = sorted(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    # -1 marks "no ground truth in this size range": report 0 rather than -100.
    return {name: max(float(evaluator.stats[i]), 0.0) * 100 for name, i in STATS.items()}


def evaluated_once(ids_per_rank: list[list[int]], num_images: int) -> list[int]:
    """All evaluated image ids, sorted, after checking that the ranks saw each image once.

    An image missing or seen twice is a sampler bug (e.g. torch's DistributedSampler
    pads with repeats), which would silently change the metrics.
    """
    all_ids = sorted(i for ids in ids_per_rank for i in ids)
    repeated = sorted({a for a, b in zip(all_ids, all_ids[1:]) if a == b})
    if repeated or len(all_ids) != num_images:
        raise RuntimeError(
            f"evaluated {len(all_ids)} images of {num_images}"
            + (f", some more than once: {repeated[:5]}" if repeated else "")
        )
    return all_ids


@torch.no_grad()
def evaluate(
    model: Detector,
    loader: Iterable,
    dataset,
    modes: list[str],
    device: torch.device,
    out_dir: Path | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Evaluate ``model`` (unwrapped, in eval mode) on ``loader``.

    Returns flat metrics: ``{metric}_{mode}`` for each mode (mAP_e2e, AP50_nms, ...),
    ``forward_ms`` and ``postprocess_ms_{mode}``; for a model with masks also
    ``{metric}_segm_{mode}`` (mAP_segm_e2e, ...). With ``out_dir`` (rank 0), the
    detections of each mode are written as COCO results json there (masks:
    ``segmentations_{mode}.json``).
    """
    was_training = model.training
    model.eval()
    masks = model.cfg.has_masks
    detections: dict[str, list[dict]] = {m: [] for m in modes}
    segmentations: dict[str, list[dict]] = {m: [] for m in modes}
    forward_s, post_s = 0.0, dict.fromkeys(modes, 0.0)
    timed_images, image_ids = 0, []
    untimed = untimed_batches(loader)
    batches = tqdm(loader, desc="eval", leave=False, disable=not progress, dynamic_ncols=True)
    for step, (images, targets) in enumerate(batches):
        images = images.to(device, non_blocking=True)
        sizes = [tuple(t["size"]) for t in targets]
        timed = step >= untimed
        _sync(device)
        start = time.perf_counter()
        out = model(images)
        _sync(device)
        forward = time.perf_counter() - start
        for mode in modes:
            start = time.perf_counter()
            dets = model.predict(out, sizes, mode)
            _sync(device)
            if timed:
                post_s[mode] += time.perf_counter() - start
            for det, t in zip(dets, targets):
                image_id, scale = int(t["image_id"]), float(t["scale"])
                detections[mode] += coco_rows(det, image_id, dataset.cat_ids, scale)
                if masks:
                    pasted = paste_masks(det["masks"], t["size"], t["orig_size"])
                    segmentations[mode] += segm_rows(
                        pasted, det["scores"], det["labels"], image_id, dataset.cat_ids
                    )
        if timed:
            forward_s += forward
            timed_images += len(targets)
        image_ids += [int(t["image_id"]) for t in targets]

    gathered = dist.all_gather_objects(
        (detections, image_ids, forward_s, post_s, timed_images, segmentations)
    )
    model.train(was_training)
    if not dist.is_main():
        return {}
    all_ids = evaluated_once([g[1] for g in gathered], len(dataset))
    n_timed = max(sum(g[4] for g in gathered), 1)
    metrics: dict[str, float] = {FORWARD_MS: 1000 * sum(g[2] for g in gathered) / n_timed}
    for mode in modes:
        dets = _in_image_order(g[0][mode] for g in gathered)
        for name, value in coco_metrics(dataset.coco, dets, all_ids).items():
            metrics[metric_name(name, mode)] = value
        if masks:
            segms = _in_image_order(g[5][mode] for g in gathered)
            for name, value in coco_metrics(dataset.coco, segms, all_ids, "segm").items():
                metrics[metric_name(segm_name(name), mode)] = value
        post_ms = 1000 * sum(g[3][mode] for g in gathered) / n_timed
        metrics[metric_name(POSTPROCESS_MS, mode)] = post_ms
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / f"detections_{mode}.json").write_text(json.dumps(dets))
            if masks:
                (out_dir / f"segmentations_{mode}.json").write_text(json.dumps(segms))
    if out_dir is not None:
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    return metrics


def _in_image_order(per_rank: Iterable[list[dict]]) -> list[dict]:
    """The ranks' results sorted by image id; stable: each image's detections keep their
    order, as on one process."""
    return sorted((d for rows in per_rank for d in rows), key=lambda d: d["image_id"])
