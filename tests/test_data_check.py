"""The data check at the door (``python -m pss.data.check``): each broken input built on disk.

Every case writes real image files (Pillow) and real COCO JSON, runs the real
command in a subprocess and checks its exit status, that the message names
the annotation file and the image, and that no traceback is printed.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pss.data import CocoDetection
from pss.data.check import (
    DEGENERATE,
    NORMALISED,
    OUTSIDE,
    USABLE,
    box_reasons,
    in_unit_square,
    inspect_split,
)
from pss.testing import REPO

W, H = 24, 16  # every image, unless a case says otherwise


def write_image(path: Path, width: int = W, height: int = H, seed: int = 0) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def split_json(names: list[str], boxes: dict[str, list[list[float]]]) -> dict[str, Any]:
    """Images ``names`` (W x H) and their boxes ``{name: [[x, y, w, h], ...]}``."""
    images = [
        {"id": i + 1, "file_name": name, "width": W, "height": H} for i, name in enumerate(names)
    ]
    ids = {name: i + 1 for i, name in enumerate(names)}
    anns = [
        {"id": 0, "image_id": ids[name], "category_id": 1, "bbox": box, "iscrowd": 0}
        for name, per_image in boxes.items()
        for box in per_image
    ]
    for k, ann in enumerate(anns):
        ann["id"] = k + 1
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}


class Dataset:
    """A two-split dataset under ``root`` with a config naming it; every box usable."""

    def __init__(self, root: Path, train: int = 4, val: int = 2) -> None:
        self.root = root
        self.names = {
            "train": [f"t{i}.png" for i in range(train)],
            "val": [f"v{i}.png" for i in range(val)],
        }
        (root / "annotations").mkdir(parents=True)
        for split, names in self.names.items():
            (root / split).mkdir()
            for i, name in enumerate(names):
                write_image(root / split / name, seed=i)
            self.write(split, split_json(names, {name: [[2, 3, 10, 8]] for name in names}))
        self.config = root / "config.yaml"
        self.config.write_text(
            "data:\n"
            f"  root: {root}\n"
            "  train_images: train\n  train_annotations: annotations/train.json\n"
            "  val_images: val\n  val_annotations: annotations/val.json\n"
        )

    def ann(self, split: str) -> Path:
        return self.root / "annotations" / f"{split}.json"

    def image(self, split: str, name: str) -> Path:
        return self.root / split / name

    def write(self, split: str, data: dict[str, Any]) -> None:
        self.ann(split).write_text(json.dumps(data))

    def boxes(self, split: str, boxes: dict[str, list[list[float]]]) -> None:
        self.write(split, split_json(self.names[split], boxes))

    def check(self, *args: str) -> subprocess.CompletedProcess:
        return run_check(self.config, self.root.parent / "cache", *args)


def run_check(config: Path, cache: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m pss.data.check CONFIG ARGS...`` with its cache under ``cache``."""
    return subprocess.run(
        [sys.executable, "-m", "pss.data.check", str(config), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "XDG_CACHE_HOME": str(cache)},
        timeout=120,
    )


@pytest.fixture
def data(tmp_path: Path) -> Dataset:
    return Dataset(tmp_path / "data")


def passed(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    return proc.stdout


def refused(proc: subprocess.CompletedProcess, *named: Path | str) -> str:
    """The message of a refused check: exit 2, no traceback, naming each of ``named``."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert proc.stderr.startswith("error: ")
    for name in named:
        assert str(name) in proc.stderr, (name, proc.stderr)
    return proc.stderr


# ----------------------------------------------------------------------------
# Passing


def test_a_valid_dataset_passes_with_one_line_a_split(data: Dataset) -> None:
    out = passed(data.check())
    lines = out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"data check: train {data.ann('train')}: 4 images")
    assert lines[1].startswith(f"data check: val {data.ann('val')}: 2 images")
    assert "4 boxes: 4 usable, 0 crowd (ignored), 0 dropped; checked in" in lines[0]


def test_dropped_boxes_are_counted_when_training_goes_on(data: Dataset) -> None:
    t0, t1, t2, t3 = data.names["train"]
    data.boxes(
        "train",
        {t0: [[2, 3, 10, 8], [30, 3, 5, 5]], t1: [[2, 3, 0, 8]], t2: [[1, 1, 5, 5]], t3: []},
    )
    crowded = json.loads(data.ann("train").read_text())
    crowded["annotations"][-1]["iscrowd"] = 1
    data.write("train", crowded)
    out = passed(data.check())
    assert (
        "4 boxes: 1 usable, 1 crowd (ignored), 2 dropped as unusable: "
        f"1 degenerate (e.g. annotation 3 in {t1}), 1 outside the image (e.g. annotation 2 in {t0})"
    ) in out


def test_a_synthetic_config_is_generated_then_checked(tmp_path: Path) -> None:
    config = tmp_path / "shapes.yaml"
    config.write_text(
        f"data:\n  root: {tmp_path / 'shapes'}\n  synthetic: {{train: 2, val: 1, size: 32}}\n"
        "  train_images: train\n  train_annotations: annotations/train.json\n"
        "  val_images: val\n  val_annotations: annotations/val.json\n"
    )
    out = passed(run_check(config, tmp_path / "cache"))
    assert "annotations/train.json: 2 images" in out and "annotations/val.json: 1 image (" in out


# ----------------------------------------------------------------------------
# Refused: nothing trains


def test_missing_images_first_few_named_the_rest_counted(tmp_path: Path) -> None:
    data = Dataset(tmp_path / "data", train=9)
    for name in data.names["train"][1:]:
        data.image("train", name).unlink()
    err = refused(data.check(), data.ann("train"), *data.names["train"][1:6])
    assert f"8 of 9 images missing from {data.root / 'train'}" in err and "and 3 more" in err
    assert data.names["train"][6] not in err


def test_an_unreadable_image(data: Dataset) -> None:
    data.image("val", "v1.png").write_bytes(b"not an image at all")
    err = refused(data.check(), data.ann("val"), "v1.png")
    assert "1 of 2 images unreadable: v1.png (not an image file Pillow can read)" in err


def test_an_image_of_another_size_than_the_file_says(data: Dataset) -> None:
    write_image(data.image("train", "t2.png"), 20, H)
    err = refused(data.check(), data.ann("train"), "t2.png")
    assert f"t2.png is 20x{H}, the file says {W}x{H}" in err


def test_a_truncated_image_is_found_by_a_full_decode(data: Dataset) -> None:
    path = data.image("train", "t1.png")
    path.write_bytes(path.read_bytes()[:200])  # the header is whole, the pixels are not
    passed(data.check())  # headers only: the size is readable
    err = refused(data.check("--decode"), data.ann("train"), "t1.png")
    assert "1 of 4 images unreadable: t1.png (" in err


def test_normalised_boxes_leave_no_usable_box(data: Dataset) -> None:
    data.boxes("train", {name: [[0.1, 0.2, 0.5, 0.4]] for name in data.names["train"]})
    err = refused(data.check(), data.ann("train"))
    assert "no usable box among its 4 boxes (4 normalised, 0 crowd)" in err
    assert "relative coordinates" in err and str(data.ann("val")) not in err


def test_degenerate_and_outside_boxes_leave_no_usable_box(data: Dataset) -> None:
    v0, v1 = data.names["val"]
    data.boxes("val", {v0: [[2, 2, 0, 5], [3, 3, 6, 0.5]], v1: [[W + 1, 2, 5, 5]]})
    err = refused(data.check(), data.ann("val"))
    assert "no usable box among its 3 boxes (2 degenerate, 1 outside the image, 0 crowd)" in err


def test_a_split_without_boxes_is_refused(data: Dataset) -> None:
    data.boxes("val", {})
    refused(data.check(), data.ann("val"), "no usable box: it has no boxes")


def test_crowd_boxes_alone_are_no_usable_box(data: Dataset) -> None:
    crowd = split_json(data.names["val"], {"v0.png": [[2, 3, 10, 8]]})
    crowd["annotations"][0]["iscrowd"] = 1
    data.write("val", crowd)
    refused(data.check(), data.ann("val"), "no usable box among its 1 box (1 crowd)")


def test_every_problem_of_both_splits_in_one_message(data: Dataset) -> None:
    data.ann("train").write_text('{"images": [')
    data.image("val", "v0.png").unlink()
    err = refused(data.check(), data.ann("train"), data.ann("val"), "v0.png")
    assert "not valid JSON (line 1" in err and len(err.strip().splitlines()) == 3


def test_an_image_size_that_is_not_a_number(data: Dataset) -> None:
    bad = json.loads(data.ann("val").read_text())
    bad["images"][1]["height"] = None
    data.write("val", bad)
    err = refused(data.check(), data.ann("val"))
    assert "images[1] (id 2): 'height' must be a positive number of pixels, got None" in err


def test_missing_folders_and_files(data: Dataset, tmp_path: Path) -> None:
    err = refused(data.check("--set", f"data.root={tmp_path / 'nowhere'}"))
    assert err.count("annotation file not found") == 2
    refused(data.check("--set", "data.val_images=elsewhere"), data.root / "elsewhere")


# ----------------------------------------------------------------------------
# The cache


def rewrite_in_place(path: Path, content: bytes = b"garbage") -> None:
    """Rewrite an image's bytes without changing its folder's listing (nor its mtime)."""
    folder = path.parent.stat()
    path.write_bytes(content)
    os.utime(path.parent, ns=(folder.st_atime_ns, folder.st_mtime_ns))
    assert path.parent.stat().st_mtime_ns == folder.st_mtime_ns


def test_a_second_check_reads_no_image(data: Dataset) -> None:
    first = passed(data.check())
    assert "cached" not in first
    rewrite_in_place(data.image("train", "t0.png"))
    again = passed(data.check())  # it would fail if it read t0.png again
    assert again.count("; cached") == 2
    cache = data.root.parent / "cache" / "pss" / "data-check"
    assert len(list(cache.glob("*.json"))) == 2 and not list(cache.glob("*.tmp"))
    refused(data.check("--no-cache"), "t0.png")
    data.ann("train").touch()  # a new mtime: checked again
    refused(data.check(), data.ann("train"), "t0.png")


def test_a_decode_is_not_answered_by_a_header_check(data: Dataset) -> None:
    passed(data.check())
    path = data.image("val", "v0.png")
    rewrite_in_place(path, path.read_bytes()[:200])
    refused(data.check("--decode"), "v0.png")


def test_a_failed_check_is_not_cached(data: Dataset) -> None:
    path = data.image("train", "t3.png")
    good = path.read_bytes()
    rewrite_in_place(path)
    refused(data.check(), "t3.png")
    rewrite_in_place(path, good)  # fixed in place: the folder's mtime as when it failed
    passed(data.check())


# ----------------------------------------------------------------------------
# The command and the rule


def test_the_command_imports_neither_torch_nor_itself_twice(data: Dataset) -> None:
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['pss.data.check', {str(data.config)!r}]\n"
        "try:\n"
        "    runpy.run_module('pss.data.check', run_name='__main__', alter_sys=True)\n"
        "except SystemExit as exc:\n"
        "    status = exc.code\n"
        "print(status, 'torch' in sys.modules, 'pss.data.check' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "XDG_CACHE_HOME": str(data.root.parent / "cache")},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "0 False False"


def test_box_reasons() -> None:
    boxes = np.array(
        [
            [2, 3, 10, 8],  # inside
            [-5, -5, 6, 6],  # 1 px inside: usable
            [2, 3, 0.5, 8],  # under 1 px wide
            [2, 3, 10, 0],  # zero high
            [W - 0.5, 3, 10, 8],  # half a pixel inside
            [2, H, 10, 8],  # below the image
        ],
        np.float32,
    )
    reasons = box_reasons(boxes, (W, H), relative=False)
    assert reasons.tolist() == [USABLE, USABLE, DEGENERATE, DEGENERATE, OUTSIDE, OUTSIDE]
    unit = np.array([[0.1, 0.1, 0.5, 0.5], [0, 0, 1, 1]], np.float32)
    assert in_unit_square(unit) and not in_unit_square(boxes) and not in_unit_square(unit[:0])
    assert box_reasons(unit, (W, H), relative=True).tolist() == [NORMALISED, NORMALISED]
    assert box_reasons(unit, (4, 4), relative=True).tolist() == [DEGENERATE, USABLE]


@pytest.mark.parametrize("normalised", [False, True])
def test_training_keeps_exactly_the_boxes_the_check_counts_usable(
    data: Dataset, normalised: bool
) -> None:
    t0, t1, t2, t3 = data.names["train"]
    boxes = {
        t0: [[2, 3, 10, 8], [30, 3, 5, 5]],
        t1: [[2, 3, 0, 8], [0, 0, W, H]],
        t2: [[-3, 1, 4, 5]],  # 1 px inside
    }
    if normalised:
        boxes = {t0: [[0.1, 0.1, 0.5, 0.5]], t1: [[0, 0, 1, 1]]}
    data.boxes("train", boxes)
    report = inspect_split("train", data.ann("train"), data.root / "train")
    dataset = CocoDetection(data.root / "train", data.ann("train"), None, train=True)
    kept = sum(len(dataset[i][1]["boxes"]) for i in range(len(dataset)))
    assert kept == report.usable == (0 if normalised else 3)


# ----------------------------------------------------------------------------
# At the door of training and of a sweep


def test_training_refuses_bad_data_before_anything_is_written(data: Dataset, tmp_path: Path):
    """``pss.train`` runs the check before its first step: a broken validation image (met
    only at the first evaluation without it) stops it with nothing trained or logged."""
    data.image("val", "v1.png").write_bytes(b"not an image")
    store = tmp_path / "mlflow.db"
    out = tmp_path / "outputs"
    proc = subprocess.run(
        [sys.executable, "-m", "pss.train", str(data.config),
         "--set", "model.backbone.name=resnet18", "--set", "train.epochs=1",
         "--set", f"output_dir={out}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"),
             "MLFLOW_TRACKING_URI": f"sqlite:///{store}"},
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "v1.png" in proc.stderr and str(data.ann("val")) in proc.stderr
    assert not out.exists()  # no run folder, no checkpoint
    runs = []
    if store.exists():
        with sqlite3.connect(store) as db:
            tables = {r[0] for r in db.execute("select name from sqlite_master")}
            if "runs" in tables:
                runs = db.execute("select run_uuid from runs").fetchall()
    assert runs == []  # no run logged


def test_a_sweep_checks_its_cells_data_on_request(data: Dataset, tmp_path: Path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"name: checked\nbase: {data.config}\nseeds: [0, 1]\n"
        "grid:\n  model.name: [fcos_pss, atss_pss]\n"
        "grid_id: '{model.name}'\n"
    )
    run = [sys.executable, str(REPO / "sweeps" / "run.py"), str(spec), "--check-data"]
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = subprocess.run(run, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 2  # four jobs, one dataset: checked once, one line a split
    assert lines[0].startswith(f"data check: train {data.ann('train')}")
    data.image("train", "t2.png").unlink()  # the folder changes: the cache does not answer
    proc = subprocess.run(run, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{data.ann('train')}: 1 of 4 images missing" in proc.stderr and "t2.png" in proc.stderr
