"""The README's "Your own data" path, end to end, on a COCO-format set unlike the shapes set.

Other folder names, category ids 7 / 42 / 1000 listed out of order, images of
several sizes (some without width / height in the file), some images without
any annotation, a crowd box. Train with experiments/own_data.yaml (num_classes
not set: it follows the annotation file), evaluate, export, predict with the
export.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from pss import export, predict
from pss import train as train_cli
from pss.engine.checkpoint import load_checkpoint, load_model_weights
from pss.errors import UserError
from pss.models import Detector
from pss.testing import REPO
from pss.testing.configs import small_config

CATEGORIES = [
    {"id": 1000, "name": "triangle"},
    {"id": 7, "name": "disc"},
    {"id": 42, "name": "box"},
]
SIZES = [(96, 128), (128, 96), (112, 112), (144, 100), (100, 150)]  # (h, w)


def _draw(draw: ImageDraw.ImageDraw, cat_id: int, box: list[float], colour) -> None:
    x, y, w, h = box
    if cat_id == 7:
        draw.ellipse((x, y, x + w, y + h), fill=colour)
    elif cat_id == 42:
        draw.rectangle((x, y, x + w, y + h), fill=colour)
    else:
        draw.polygon([(x + w / 2, y), (x, y + h), (x + w, y + h)], fill=colour)


def write_split(root: Path, folder: str, ann_file: str, count: int, seed: int) -> None:
    rng = random.Random(seed)
    (root / folder).mkdir(parents=True)
    images, annotations = [], []
    for i in range(count):
        h, w = SIZES[i % len(SIZES)]
        image_id = 100 + 3 * i  # ids need not start at 1 or be contiguous either
        picture = Image.new("RGB", (w, h), tuple(rng.randrange(40, 90) for _ in range(3)))
        draw = ImageDraw.Draw(picture)
        objects = 0 if i % 4 == 3 else rng.randint(1, 3)  # every 4th image: no annotation
        for _ in range(objects):
            cat = rng.choice(CATEGORIES)["id"]
            side = rng.uniform(24, 48)
            box = [rng.uniform(0, w - side), rng.uniform(0, h - side), side, side]
            _draw(draw, cat, box, tuple(rng.randrange(150, 255) for _ in range(3)))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cat,
                    "bbox": [round(v, 2) for v in box],
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
        if i == 1:  # a crowd region: ignored by training and evaluation
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "category_id": 42,
                 "bbox": [0, 0, 30, 30], "area": 900, "iscrowd": 1}
            )  # fmt: skip
        name = f"frame_{image_id:05d}.jpg"
        picture.save(root / folder / name, quality=95)
        entry = {"id": image_id, "file_name": name}
        if i % 2 == 0:
            entry.update(height=h, width=w)
        images.append(entry)
    path = root / ann_file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES})
    )


def own_data_overrides(root: Path, out: Path) -> list[str]:
    """Where the data is, plus a training of seconds (ResNet-18 from scratch, 2 x 2 steps)."""
    settings = {
        "data.root": root,
        "data.train_images": "pictures/training",
        "data.train_annotations": "labels/train.json",
        "data.val_images": "pictures/validation",
        "data.val_annotations": "labels/val.json",
        "data.train_scales": "[96, 128]",
        "data.test_scale": 128,
        "data.max_size": 192,
        "data.num_workers": 0,
        "model.backbone": "{name: resnet18, weights: null, norm: bn, frozen_stages: -1}",
        "model.head.channels": 32,
        "model.head.num_convs": 2,
        "train.epochs": 2,
        "train.batch_size": 4,
        "train.iters_per_epoch": 2,
        "train.warmup_iters": 2,
        "train.lr_steps": "[2]",
        "train.amp": "false",
        "output_dir": out,
    }
    return [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]


@pytest.mark.slow
def test_own_coco_data_from_training_to_an_exported_model(tmp_path, tracking, capsys):
    data = tmp_path / "my_data"
    write_split(data, "pictures/training", "labels/train.json", 12, seed=0)
    write_split(data, "pictures/validation", "labels/val.json", 6, seed=1)
    run = tmp_path / "run"
    config = REPO / "experiments" / "own_data.yaml"
    assert train_cli.main([str(config), *own_data_overrides(data, run)]) == 0
    assert "mAP_e2e" in capsys.readouterr().out

    state = load_checkpoint(run / "last.pth")
    assert state["config"]["model"]["num_classes"] == 3  # from the annotation file, not 80
    assert state["categories"] == sorted(CATEGORIES, key=lambda c: c["id"])
    metrics = json.loads((run / "eval" / "epoch_002" / "metrics.json").read_text())
    assert {"mAP_e2e", "mAP_nms", "mAP_raw"} <= set(metrics)
    evaluated = json.loads((run / "eval" / "epoch_002" / "detections_e2e.json").read_text())
    assert {d["category_id"] for d in evaluated} <= {7, 42, 1000}

    model = tmp_path / "model.onnx"
    assert export.main([str(run / "last.pth"), "--out", str(model), "--dynamic"]) == 0
    assert "NonMaxSuppression" not in capsys.readouterr().out

    outputs = {}
    for backend, args in [("torch", [str(run / "last.pth")]), ("onnx", ["--onnx", str(model)])]:
        out = tmp_path / f"predictions-{backend}"
        images = str(data / "pictures" / "validation")
        assert predict.main([*args, images, "--out", str(out), "--score-thresh", "0"]) == 0
        outputs[backend] = json.loads((out / "detections.json").read_text())
        index = json.loads((out / "images.json").read_text())
        assert index["categories"] == state["categories"]
        assert len(index["images"]) == 6 and len(list(out.glob("*.png"))) == 6
    torch_dets, onnx_dets = outputs["torch"], outputs["onnx"]
    assert len(torch_dets) == len(onnx_dets) == 6 * 100  # K = 100 per image at threshold 0
    for a, b in zip(torch_dets, onnx_dets):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        assert a["score"] == pytest.approx(b["score"], abs=2e-5)
        assert a["bbox"] == pytest.approx(b["bbox"], abs=2e-2)  # rounded to 0.01 px


def test_num_classes_of_a_checkpoint_and_of_the_config_must_agree():

    three = Detector(small_config("fcos_pss").model)
    five = Detector(small_config("fcos_pss", "model.num_classes=5").model)
    with pytest.raises(UserError, match=r"trained for 3 classes but model.num_classes=5"):
        load_model_weights(five, three.state_dict(), "stage1.pth")
    with torch.no_grad():
        load_model_weights(three, three.state_dict(), "same.pth")  # no complaint
