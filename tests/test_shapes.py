"""The synthetic shapes dataset: determinism, COCO validity, content, ensure_shapes."""

from __future__ import annotations

import contextlib
import io
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from pss.config import SyntheticConfig
from pss.data import shapes
from pss.errors import UserError


def files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_same_seed_same_bytes_other_seed_other_data(tmp_path: Path) -> None:
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        shapes.generate(tmp_path / name, train=5, val=3, seed=seed, size=96)
    a, b, c = (files(tmp_path / n) for n in "abc")
    assert sorted(a) == [
        "annotations/train.json",
        "annotations/val.json",
        *[f"train/{i:06d}.png" for i in range(5)],
        *[f"val/{i:06d}.png" for i in range(3)],
    ]
    assert a == b
    assert sorted(a) == sorted(c)
    assert all(a[k] != c[k] for k in a)
    assert a["train/000000.png"] != a["val/000000.png"]  # splits differ too


def test_cli_writes_layout(tmp_path: Path) -> None:
    assert shapes.main([str(tmp_path / "out"), "--train", "2", "--val", "1", "--size", "64"]) == 0
    assert (tmp_path / "out/annotations/val.json").exists()
    assert len(list((tmp_path / "out/train").glob("*.png"))) == 2


def quiet_coco(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def test_pycocotools_loads_and_gt_as_detections_scores_ap_1(tmp_path: Path) -> None:
    shapes.generate(tmp_path, train=1, val=12, seed=3, size=128)
    gt = quiet_coco(tmp_path / "annotations/val.json")
    assert sorted(gt.getCatIds()) == [1, 3, 7]
    assert len(gt.getImgIds()) == 12
    dets = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": a["bbox"],
            "score": 1.0,
        }
        for a in gt.dataset["annotations"]
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)  # AP@[.5:.95]
    assert ev.stats[1] == pytest.approx(1.0)  # AP50


def test_content_is_a_detection_problem() -> None:
    size = 256
    sides, counts, cats = [], [], set()
    for index in range(40):
        pixels, objects = shapes.render(0, "train", index, size)
        assert pixels.shape == (size, size, 3) and pixels.dtype == np.uint8
        assert 1 <= len(objects) <= shapes.MAX_OBJECTS
        counts.append(len(objects))
        for obj in objects:
            x, y, w, h = obj["bbox"]
            assert min(x, y) >= 0 and x + w <= size and y + h <= size
            assert 0 < obj["area"] <= w * h + 2 * (w + h) + 4  # visible pixels within the box
            sides.append(max(w, h))
            cats.add(obj["category_id"])
    assert cats == {1, 3, 7}
    assert min(sides) < 20 and max(sides) > 150  # spread over the FPN levels
    assert np.mean(counts) > 2.5  # several objects per image
    assert pixels.std() > 20  # not a flat image


def test_sides_set_the_object_sizes() -> None:
    """`sides` (px) bounds every object's longer side, up to stretch and rotation."""
    longest = []
    for index in range(40):
        _, objects = shapes.render(0, "train", index, 128, sides=(16.0, 40.0))
        longest += [max(o["bbox"][2:]) for o in objects]
    # A shape of side s spans s/sqrt(1.25) .. 1.3 s * sqrt(1.25) (triangle, stretched).
    assert min(longest) >= 16 / 1.2 and max(longest) <= 40 * 1.3 * 1.12 + 1
    assert min(longest) < 22 and max(longest) > 35  # spread over the range


def test_visible_area_and_occlusion() -> None:
    """Some objects overlap; none is more than ~60% hidden (area is the visible part)."""
    overlapping, worst = 0, 1.0
    for index in range(40):
        _, objects = shapes.render(1, "val", index, 256)
        boxes = np.array([o["bbox"] for o in objects])
        for i, obj in enumerate(objects):
            x, y, w, h = obj["bbox"]
            for x2, y2, w2, h2 in boxes[i + 1 :]:
                if x < x2 + w2 and x2 < x + w and y < y2 + h2 and y2 < y + h:
                    overlapping += 1
            # a triangle fills >= ~40% of its box, so visible/box >= 0.4 * 0.4
            worst = min(worst, obj["area"] / (w * h))
    assert overlapping >= 10
    assert worst > 0.1


def test_ensure_shapes_generates_once_and_checks_settings(tmp_path: Path) -> None:
    cfg = SyntheticConfig(train=3, val=2, size=64, seed=5)
    root = tmp_path / "data" / "shapes"
    shapes.ensure_shapes(root, cfg)
    marker = root / "annotations" / "val.json"
    stamp = marker.stat().st_mtime_ns
    shapes.ensure_shapes(root, cfg)  # present: nothing regenerated
    assert marker.stat().st_mtime_ns == stamp
    assert json.loads(marker.read_text())["info"]["seed"] == 5
    with pytest.raises(UserError, match="generated with") as err:
        shapes.ensure_shapes(root, SyntheticConfig(train=3, val=2, size=64, seed=6))
    assert str(root) in str(err.value)
    with pytest.raises(UserError, match="'sides': \\[10.0, 20.0\\]"):
        shapes.ensure_shapes(root, cfg.model_copy(update={"sides": [10.0, 20.0]}))
    # A dataset written before `sides` existed has the default sides.
    coco = json.loads(marker.read_text())
    del coco["info"]["sides"]
    marker.write_text(json.dumps(coco))
    shapes.ensure_shapes(root, cfg.model_copy(update={"sides": [3.0, 50.0]}))  # 12-200 at 64/256


def test_ensure_shapes_concurrent_callers(tmp_path: Path) -> None:
    cfg = SyntheticConfig(train=4, val=2, size=64, seed=0)
    root = tmp_path / "shapes"
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: shapes.ensure_shapes(root, cfg), range(4)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shapes"]  # no temp dirs left
    reference = tmp_path / "reference"
    shapes.generate(reference, 4, 2, seed=0, size=64)
    assert files(root) == files(reference)


def test_ensure_shapes_fills_empty_root_refuses_foreign_one(tmp_path: Path) -> None:
    cfg = SyntheticConfig(train=1, val=1, size=32)
    empty = tmp_path / "empty"
    empty.mkdir()
    shapes.ensure_shapes(empty, cfg)
    assert (empty / "annotations/val.json").exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="holds no shapes dataset") as err:
        shapes.ensure_shapes(foreign, cfg)
    assert str(foreign) in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "foreign"]


def test_ensure_shapes_keeps_umask_permissions_and_refuses_coco_roots(tmp_path: Path) -> None:
    cfg = SyntheticConfig(train=1, val=1, size=32)
    root = tmp_path / "shapes"
    shapes.ensure_shapes(root, cfg)
    plain = tmp_path / "plain"
    plain.mkdir()
    assert root.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
    coco = tmp_path / "coco"
    (coco / "annotations").mkdir(parents=True)
    (coco / "annotations" / "val.json").write_text('{"images": []}')
    with pytest.raises(UserError, match="not written by pss.data.shapes"):
        shapes.ensure_shapes(coco, cfg)
