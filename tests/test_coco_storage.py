"""COCO-size data as unit tests: what the dataset keeps, and that it is what pycocotools reads.

The dataset keeps its annotations in a few numpy arrays (no per-image or
per-box Python objects), so that forked loader workers read them without
writing to them (no copy-on-read), and a spawned worker gets a small pickle.
These tests use a COCO-like file from ``benchmarks/bench_data.py`` (COCO's
box-count, size and crowd distributions, polygon segmentations) at 400 images;
the benchmark measures the same at COCO's size (118k images).
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

import bench_data  # benchmarks/, on pytest's pythonpath
from pss.data import CocoDetection, build_loader


@pytest.fixture(scope="module")
def coco_like(tmp_path_factory) -> tuple[Path, Path, dict]:
    """400 images, ~2,900 boxes, image files linked to real JPEGs."""
    root = tmp_path_factory.mktemp("coco_like")
    ann, images, stats = bench_data.prepare(root, 400, 2900)
    return ann, images, stats


def test_targets_are_what_pycocotools_reads(coco_like):
    ann, images, stats = coco_like
    ds = CocoDetection(images, ann, None, train=False)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(ann))
    assert ds.ids == sorted(coco.imgs) and len(ds) == stats["images"] == 400
    assert ds.cat_ids == sorted(coco.cats)
    crowd_seen = empty_seen = 0
    for index, image_id in enumerate(ds.ids):
        img = coco.imgs[image_id]
        target = ds.load_target(index, img["height"], img["width"])
        anns = coco.imgToAnns.get(image_id, [])  # file order, as pycocotools indexes them
        boxes = np.array([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, img["width"])
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, img["height"])
        assert torch.equal(target["boxes"], torch.from_numpy(boxes)), image_id
        labels = [ds.cat_ids.index(a["category_id"]) for a in anns]
        assert target["labels"].tolist() == labels
        assert target["iscrowd"].tolist() == [bool(a["iscrowd"]) for a in anns]
        assert target["image_id"] == image_id
        crowd_seen += sum(a["iscrowd"] for a in anns)
        empty_seen += not anns
    assert crowd_seen > 0 and empty_seen > 0  # the file has both, and they came through


def test_the_dataset_keeps_arrays_not_annotation_objects(coco_like):
    ann, images, _ = coco_like
    gc.collect()
    before = len(gc.get_objects())
    ds = CocoDetection(images, ann, None, train=True)
    gc.collect()
    created = len(gc.get_objects()) - before
    # ~2,900 annotations and 400 images: per-image or per-box objects would be thousands.
    assert created < 200, f"{created} Python container objects kept"
    # What a spawned (not forked) worker receives: a pickle far smaller than the file.
    assert len(pickle.dumps(ds)) < ann.stat().st_size / 10


def test_evaluation_gets_pycocotools_index_on_first_use(coco_like):
    ann, images, _ = coco_like
    ds = CocoDetection(images, ann, None, train=False, max_images=50)
    assert "coco" not in vars(ds)  # not built for training
    coco = ds.coco
    assert ds.coco is coco  # built once
    assert len(coco.imgs) == 400
    assert len(coco.anns) == len(json.loads(ann.read_text())["annotations"])


def test_workers_read_the_same_samples(coco_like):
    ann, images, _ = coco_like
    ds = CocoDetection(images, ann, None, train=True)

    def ids_and_boxes(workers: int):
        loader = build_loader(ds, 4, workers, True, 0, False, 32, epoch=1)
        return [
            [(t["image_id"], t["boxes"].tolist()) for t in targets]
            for step, (_, targets) in zip(range(5), loader)
        ]

    assert ids_and_boxes(0) == ids_and_boxes(2)


@pytest.mark.slow
def test_bench_data_runs_end_to_end(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable, bench_data.__file__, "--images", "300", "--samples", "40",
            "--rounds", "1", "--workers", "2", "--no-step", "--workdir", str(tmp_path),
            "--json", str(out),
        ],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["file"]["images"] == 300 and result["load_ratio"] > 0
    assert len(result["workers_pss"]["workers"]) == 2
    for word in ("load+validate", "pycocotools", "workers", "images/s", "load average"):
        assert word in proc.stdout
