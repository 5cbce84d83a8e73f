"""COCO-size data: annotation loading, loader-worker memory, loader throughput.

Writes a COCO-size annotation file (default 118,287 images and about 860k
boxes, like instances_train2017.json) with distributions close to COCO's:
image sizes (longer side 640 for most images; 4:3, 3:2, 16:9 and square,
landscape and portrait; 12 distinct sizes), boxes per image (mean 7.3, about
1 % of images without any, at most 93), box areas (41 % small, 34 % medium,
24 % large), person in 30 % of the boxes, 1 % crowd boxes (RLE), polygon
segmentations (their text drawn from a pool: only their parsing cost
matters) and COCO's image fields. Image files are symbolic links to one real
JPEG per distinct size (a photograph from matplotlib's sample data, resized).

Then, each measurement in a fresh process (so peak memory is its own):

1. Load and validate: ``CocoDetection(...)`` (what training pays: read,
   validate, check the image files, build the per-image arrays) against plain
   ``pycocotools.coco.COCO(file)`` on the same file, interleaved, median of
   ``--rounds``. Target: at most 1.5x. Peak and retained resident memory.
2. Loader workers: ``build_loader`` with 4 workers, batch 2, training
   transforms at 800x1333, for 2,000 samples; each worker's private memory
   (USS, from /proc/PID/smaps_rollup) after the first batch and at the end.
   Target: after a warm-up of the first fifth of the samples (the allocator's
   arenas for decoded images fill up), no worker grows by more than 64 MiB
   (the annotations are numpy arrays, which the workers read without writing:
   no copy-on-read). With ``--with-dicts`` the same run with torchvision's
   ``CocoDetection`` (per-image lists of pycocotools dicts) is printed beside
   it for comparison.
3. The data check at the door (``pss.data.check``, what ``pss.train`` and each
   sweep cell pay before the first step): image sizes from the headers,
   uncached (the first cell) and cached (the others), and with every image
   decoded (``--decode``; ``--no-decode`` skips it).
4. Loader throughput in images/s over those samples, beside the training
   step of R50 FCOS_PSS at batch 2 on this CPU, on the loader's own batches
   (a batch mixing a landscape and a portrait image pads to 1088x1088).

Everything runs on this machine's CPU; its load average is printed with the
figures (a shared machine makes both the loader and the model slower).

    .venv/bin/python benchmarks/bench_data.py
    .venv/bin/python benchmarks/bench_data.py --images 2000 --samples 200 --rounds 1 --no-step
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SITE = Path(np.__file__).parents[1]
PHOTO = SITE / "matplotlib" / "mpl-data" / "sample_data" / "grace_hopper.jpg"
COCO_IMAGES, COCO_BOXES = 118_287, 860_001  # instances_train2017.json
LOAD_RATIO_MAX = 1.5
WORKER_GROWTH_MAX_MIB = 64
MIB = 2**20

# (width, height, share): COCO's common sizes (longer side 640), landscape and portrait.
SIZES = [
    (640, 480, 0.30), (640, 427, 0.20), (640, 426, 0.06), (640, 428, 0.04), (640, 360, 0.05),
    (640, 640, 0.03), (500, 375, 0.04), (480, 640, 0.12), (427, 640, 0.10), (426, 640, 0.03),
    (360, 640, 0.01), (375, 500, 0.02),
]
# COCO's 80 category ids (1..90 with gaps).
CAT_IDS = [i for i in range(1, 91) if i not in {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}]


# ----------------------------------------------------------------------------- the file


def box_counts(rng: np.random.Generator, n: int, total: int) -> np.ndarray:
    """Boxes per image: ~1 % empty, else 1 + negative binomial; mean total / n, max 93."""
    mean_busy = total / (n * 0.991) - 1
    r = 0.9
    counts = 1 + rng.negative_binomial(r, r / (r + mean_busy), size=n)
    counts = np.minimum(counts, 93)
    counts[rng.random(n) < 0.009] = 0
    return counts


def polygon_pool(rng: np.random.Generator, size: int = 2000) -> list[str]:
    """Polygon texts of 6-40 vertices with 2-decimal coordinates, like COCO's."""
    pool = []
    for _ in range(size):
        k = int(rng.integers(6, 41))
        coords = rng.uniform(0, 640, size=2 * k)
        pool.append("[[" + ",".join(f"{v:.2f}" for v in coords) + "]]")
    return pool


def write_coco_like(
    path: Path, num_images: int, num_boxes: int, seed: int = 0
) -> tuple[dict, np.ndarray]:
    """Write the annotation file; its counts and distribution figures, each image's size."""
    rng = np.random.default_rng(seed)
    shares = np.array([s for _, _, s in SIZES])
    size_idx = rng.choice(len(SIZES), size=num_images, p=shares / shares.sum())
    counts = box_counts(rng, num_images, num_boxes)
    total = int(counts.sum())
    image_of_box = np.repeat(np.arange(num_images), counts)
    widths = np.array([w for w, _, _ in SIZES])[size_idx][image_of_box]
    heights = np.array([h for _, h, _ in SIZES])[size_idx][image_of_box]
    # sqrt(area) log-normal: 41 % under 32 px (small), 24 % over 96 px (large)
    side = np.exp(rng.normal(3.74, 1.16, size=total))
    aspect = np.exp(rng.normal(0, 0.6, size=total))
    bw = np.clip(side * np.sqrt(aspect), 1, widths - 1)
    bh = np.clip(side / np.sqrt(aspect), 1, heights - 1)
    x = rng.uniform(0, widths - bw)
    y = rng.uniform(0, heights - bh)
    weights = 1 / np.arange(1, len(CAT_IDS)) ** 0.8
    cat_p = np.concatenate([[0.3], 0.7 * weights / weights.sum()])
    cats = np.array(CAT_IDS)[rng.choice(len(CAT_IDS), size=total, p=cat_p)]
    crowd = rng.random(total) < 0.01
    pool = polygon_pool(rng)
    pick = rng.integers(0, len(pool), size=total)

    with path.open("w") as out:
        out.write('{"info": {"description": "COCO-size benchmark file", "version": "1.0"}, ')
        out.write('"licenses": [{"id": 1, "name": "benchmark", "url": ""}], "images": [')
        for i in range(num_images):
            w, h, _ = SIZES[size_idx[i]]
            out.write(
                ("," if i else "")
                + json.dumps(
                    {
                        "license": 1,
                        "file_name": file_name(i),
                        "coco_url": f"http://images.cocodataset.org/train2017/{file_name(i)}",
                        "height": h,
                        "width": w,
                        "date_captured": "2013-11-14 11:18:45",
                        "flickr_url": "http://farm.staticflickr.com/x.jpg",
                        "id": i + 1,
                    }
                )
            )
        out.write('], "annotations": [')
        for k in range(total):
            bbox = f"[{x[k]:.2f},{y[k]:.2f},{bw[k]:.2f},{bh[k]:.2f}]"
            area = f"{bw[k] * bh[k] * 0.7:.2f}"
            if crowd[k]:
                rle = f"[{int(x[k])},{int(bw[k] * bh[k])}]"
                seg = f'{{"counts": {rle}, "size": [{heights[k]},{widths[k]}]}}'
            else:
                seg = pool[pick[k]]
            out.write(
                ("," if k else "")
                + f'{{"segmentation": {seg}, "area": {area}, "iscrowd": {int(crowd[k])}, '
                f'"image_id": {image_of_box[k] + 1}, "bbox": {bbox}, '
                f'"category_id": {cats[k]}, "id": {k + 1}}}'
            )
        out.write('], "categories": [')
        out.write(
            ",".join(
                json.dumps({"supercategory": "thing", "id": c, "name": f"class{c}"})
                for c in CAT_IDS
            )
        )
        out.write("]}")
    area = bw * bh
    return {
        "images": num_images,
        "boxes": total,
        "boxes_per_image_mean": total / num_images,
        "boxes_per_image_median": float(np.median(counts)),
        "boxes_per_image_max": int(counts.max()),
        "images_without_boxes": float((counts == 0).mean()),
        "small": float((area < 32**2).mean()),
        "medium": float(((area >= 32**2) & (area < 96**2)).mean()),
        "large": float((area >= 96**2).mean()),
        "file_mib": path.stat().st_size / MIB,
    }, size_idx


def file_name(i: int) -> str:
    return f"{i + 1:012d}.jpg"


def link_images(image_dir: Path, size_idx: np.ndarray) -> None:
    """One real JPEG per distinct size under ``image_dir/_real``; every file name a link."""
    from PIL import Image

    real = image_dir / "_real"
    real.mkdir(parents=True, exist_ok=True)
    with Image.open(PHOTO) as photo:
        photo = photo.convert("RGB")
        for w, h, _ in SIZES:
            photo.resize((w, h), Image.BILINEAR).save(real / f"{w}x{h}.jpg", quality=90)
    for i, k in enumerate(size_idx):
        w, h, _ = SIZES[k]
        link = image_dir / file_name(i)
        if not link.is_symlink():
            link.symlink_to(Path("_real") / f"{w}x{h}.jpg")


def prepare(workdir: Path, num_images: int, num_boxes: int) -> tuple[Path, Path, dict]:
    """The annotation file and image links, reused when already written with these counts."""
    workdir.mkdir(parents=True, exist_ok=True)
    ann, images, stats_file = (
        workdir / "annotations.json",
        workdir / "images",
        workdir / "stats.json",
    )
    wanted = {"images": num_images, "target_boxes": num_boxes}
    if stats_file.is_file() and json.loads(stats_file.read_text()).get("wanted") == wanted:
        return ann, images, json.loads(stats_file.read_text())
    start = time.perf_counter()
    stats, size_idx = write_coco_like(ann, num_images, num_boxes)
    images.mkdir(exist_ok=True)
    link_images(images, size_idx)
    stats["wanted"] = wanted
    stats["written_s"] = time.perf_counter() - start
    stats_file.write_text(json.dumps(stats))
    return ann, images, stats


# ----------------------------------------------------------------------------- /proc


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS / VmHWM of a process, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def private_memory(pid: int) -> dict[str, int]:
    """RSS, PSS and USS (private clean + dirty) of a process, in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, value = line.partition(":")
        parts = value.split()
        if parts and parts[-1] == "kB":
            fields[key] = int(parts[0]) * 1024
    uss = fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
    return {"rss": fields.get("Rss", 0), "pss": fields.get("Pss", 0), "uss": uss}


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return sorted(found)


# ----------------------------------------------------------------------------- children


def child_load(kind: str, ann: str, images: str) -> dict:
    """Load the file the way ``kind`` does; time, peak and retained memory."""
    import gc

    from pycocotools.coco import COCO

    from pss.data.coco import CocoDetection  # imports (torch, ...) before the clock

    before = proc_status()["VmRSS"]
    start = time.perf_counter()
    if kind == "pycocotools":
        with contextlib.redirect_stdout(io.StringIO()):
            kept = COCO(ann)
    else:
        kept = CocoDetection(images, ann, None, train=True)
    seconds = time.perf_counter() - start
    gc.collect()
    status = proc_status()
    assert kept is not None
    return {
        "seconds": seconds,
        "peak_mib": (status["VmHWM"] - before) / MIB,
        "kept_mib": (status["VmRSS"] - before) / MIB,
    }


def child_check(ann: str, images: str, cache: str, decode: bool) -> dict:
    """The data check of one split: uncached (writes the cache), cached, fully decoded."""
    import shutil

    from pss.data.check import check_split, reader_processes

    shutil.rmtree(cache, ignore_errors=True)
    runs = [("headers", False, Path(cache)), ("cached", False, Path(cache))]
    result = {}
    for name, full, where in runs + ([("decoded", True, False)] if decode else []):
        start = time.perf_counter()
        report = check_split("train", Path(ann), Path(images), decode=full, cache=where)
        result[name] = {"seconds": time.perf_counter() - start, "cached": report.cached}
        assert not report.problems, report.problems
    result["processes"] = reader_processes(report.images)
    return result


def child_workers(kind: str, ann: str, images: str, samples: int, workers: int, step: bool):
    """Iterate a 4-worker loader; worker memory at the first batch and at the end."""
    import torch

    from pss.config import DataConfig
    from pss.data import CocoDetection, build_loader
    from pss.data.transforms import build_transforms

    cfg = DataConfig(train_scales=[800], max_size=1333)
    if kind == "pss":
        data = CocoDetection(images, ann, build_transforms(cfg, train=True), train=True)
        loader = build_loader(data, 2, workers, True, 0, False, 32, epoch=0)
    else:  # torchvision's CocoDetection: per-image lists of pycocotools dicts
        from torchvision.datasets import CocoDetection as TorchvisionCoco

        with contextlib.redirect_stdout(io.StringIO()):
            data = TorchvisionCoco(images, ann)
        loader = torch.utils.data.DataLoader(
            data, batch_size=2, shuffle=True, num_workers=workers, collate_fn=_count_boxes
        )
    batches = iter(loader)
    kept = [next(batches)]
    pids = children(os.getpid())
    memory = {"first": {pid: private_memory(pid) for pid in pids}}
    warm_at = max(samples // 5, 2)
    seen, start = 2, time.perf_counter()
    for batch in batches:
        seen += 2
        if len(kept) < 3 and kind == "pss":
            kept.append(batch)
        if seen >= warm_at and "warm" not in memory:
            memory["warm"] = {pid: private_memory(pid) for pid in pids}
        if seen >= samples:
            break
    seconds = time.perf_counter() - start
    memory["end"] = {pid: private_memory(pid) for pid in pids}
    result = {
        "workers": [{"pid": pid, **{m: memory[m][pid] for m in memory}} for pid in pids],
        "warm_at": warm_at,
        "samples": seen,
        "images_per_s": (seen - 2) / seconds,
        "main_rss_mib": proc_status()["VmRSS"] / MIB,
    }
    del batches
    if step and kind == "pss":
        result["step"] = train_step_seconds(kept)
    return result


def _count_boxes(batch):
    return sum(len(anns) for _, anns in batch)


def train_step_seconds(batches: list) -> dict:
    """R50 FCOS_PSS (80 classes, the paper's config) training steps on the loader's batches."""
    import torch

    from pss.config import load_config
    from pss.engine.step import build_optimizer, forward_losses, optimizer_step
    from pss.models import Detector

    cfg = load_config([], ["model.name=fcos_pss", "model.backbone.name=resnet50"])
    model = Detector(cfg.model).train()
    optimizer = build_optimizer(cfg, model)
    times = []
    for images, targets in batches:
        targets = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
        start = time.perf_counter()
        loss, _ = forward_losses(model, model, images, targets, None)
        optimizer_step(loss, optimizer, None, cfg.train.grad_clip)
        times.append(time.perf_counter() - start)
    timed = times[1:] or times  # the first step warms up
    return {
        "seconds": statistics.median(timed),
        "steps": len(timed),
        "input": list(batches[0][0].shape),
        "threads": torch.get_num_threads(),
    }


def run_child(*args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child {args[0]} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- report


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=COCO_IMAGES)
    p.add_argument("--boxes", type=int, default=None, help="default: COCO's boxes per image")
    p.add_argument("--samples", type=int, default=2000, help="loader samples (all workers)")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--rounds", type=int, default=2, help="load rounds per side (median)")
    p.add_argument("--no-step", action="store_true", help="skip the R50 training step")
    p.add_argument("--no-decode", action="store_true", help="skip the data check's full decode")
    p.add_argument(
        "--with-dicts",
        action="store_true",
        help="also run torchvision's CocoDetection (keeps ~2.3 GiB of dicts for COCO)",
    )
    p.add_argument("--workdir", type=Path, default=REPO / "outputs" / "bench_data")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        if kind == "load":
            print(json.dumps(child_load(*rest)))
        elif kind == "check":
            ann, images, cache, decode = rest
            print(json.dumps(child_check(ann, images, cache, decode == "1")))
        else:
            what, ann, images, samples, workers, step = rest
            res = child_workers(what, ann, images, int(samples), int(workers), step == "1")
            print(json.dumps(res))
        return 0

    boxes = args.boxes or round(args.images * COCO_BOXES / COCO_IMAGES)
    ann, images, stats = prepare(args.workdir / f"coco-{args.images}", args.images, boxes)
    load = os.getloadavg()
    available = int(re.search(r"MemAvailable:\s+(\d+)", Path("/proc/meminfo").read_text())[1])
    print(
        f"bench_data: {platform.machine()}, {os.cpu_count()} cores, python "
        f"{platform.python_version()}; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} "
        f"(a shared CPU: other jobs run beside this one), {available / 2**20:.1f} GiB available"
    )
    print(
        f"file: {stats['images']} images, {stats['boxes']} boxes ({stats['file_mib']:.0f} MiB); "
        f"boxes/image mean {stats['boxes_per_image_mean']:.2f}, median "
        f"{stats['boxes_per_image_median']:.0f}, max {stats['boxes_per_image_max']}, "
        f"{100 * stats['images_without_boxes']:.1f} % empty; small/medium/large "
        f"{100 * stats['small']:.0f}/{100 * stats['medium']:.0f}/{100 * stats['large']:.0f} %"
    )

    rounds = {"pss": [], "pycocotools": []}
    for r in range(args.rounds):
        order = ("pss", "pycocotools") if r % 2 == 0 else ("pycocotools", "pss")
        for kind in order:
            rounds[kind].append(run_child("load", kind, str(ann), str(images)))
    med = {
        kind: {key: statistics.median(x[key] for x in runs) for key in runs[0]}
        for kind, runs in rounds.items()
    }
    ratio = med["pss"]["seconds"] / med["pycocotools"]["seconds"]
    print(
        f"load+validate: CocoDetection {med['pss']['seconds']:.2f} s, pycocotools.COCO "
        f"{med['pycocotools']['seconds']:.2f} s, ratio {ratio:.2f} (target <= "
        f"{LOAD_RATIO_MAX}) {verdict(ratio <= LOAD_RATIO_MAX)}"
    )
    print(
        f"memory: peak CocoDetection {med['pss']['peak_mib']:.0f} MiB, pycocotools "
        f"{med['pycocotools']['peak_mib']:.0f} MiB; kept after loading "
        f"{med['pss']['kept_mib']:.0f} MiB vs {med['pycocotools']['kept_mib']:.0f} MiB"
    )

    cache = str(args.workdir / "check-cache")
    check = run_child("check", str(ann), str(images), cache, "0" if args.no_decode else "1")
    n = stats["images"]
    print(
        f"data check ({check['processes']} process{'es' * (check['processes'] > 1)}): "
        f"sizes from headers "
        f"{check['headers']['seconds']:.2f} s ({n / check['headers']['seconds']:,.0f} images/s), "
        f"cached {check['cached']['seconds'] * 1000:.1f} ms"
        + (
            f", every image decoded {check['decoded']['seconds']:.1f} s "
            f"({n / check['decoded']['seconds']:,.0f} images/s)"
            if "decoded" in check
            else ""
        )
    )

    results = {"file": stats, "load": med, "load_ratio": ratio, "load_rounds": rounds}
    results["check"] = check
    for kind in ("pss", "torchvision") if args.with_dicts else ("pss",):
        step = "0" if args.no_step or kind != "pss" else "1"
        res = run_child(
            "workers", kind, str(ann), str(images), str(args.samples), str(args.workers), step
        )
        results[f"workers_{kind}"] = res
        growth = [(w["end"]["uss"] - w["warm"]["uss"]) / MIB for w in res["workers"]]
        label = "CocoDetection" if kind == "pss" else "torchvision CocoDetection (dicts)"
        print(
            f"workers, {label}: private memory (USS) after the first batch, after "
            f"{res['warm_at']} samples and after {res['samples']}"
        )
        for w, g in zip(res["workers"], growth):
            print(
                f"  worker {w['pid']}: USS {w['first']['uss'] / MIB:.0f} -> "
                f"{w['warm']['uss'] / MIB:.0f} -> {w['end']['uss'] / MIB:.0f} MiB (+{g:.0f} "
                f"after warm-up), RSS {w['end']['rss'] / MIB:.0f} MiB"
            )
        if kind == "pss":
            worst = max(growth) if growth else math.nan
            results["worker_growth_max_mib"] = worst
            print(
                f"  largest growth after warm-up {worst:.0f} MiB (target <= "
                f"{WORKER_GROWTH_MAX_MIB} MiB) "
                f"{verdict(worst <= WORKER_GROWTH_MAX_MIB)}"
            )
            print(
                f"loader: {res['images_per_s']:.1f} images/s at 800x1333 with "
                f"{args.workers} workers on {os.cpu_count()} cores "
                f"({res['images_per_s'] / os.cpu_count():.1f} per core)"
            )
            if "step" in res:
                s = res["step"]
                print(
                    f"model: R50 FCOS_PSS training step, batch 2, input {s['input'][2]}x"
                    f"{s['input'][3]}, {s['threads']} threads: {s['seconds']:.2f} s "
                    f"({2 / s['seconds']:.2f} images/s); loader / model "
                    f"{res['images_per_s'] * s['seconds'] / 2:.1f}x"
                )
    load = os.getloadavg()
    print(f"load average at the end {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
