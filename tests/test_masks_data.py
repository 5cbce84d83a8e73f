"""Instance masks in the data: COCO polygons, RLE and crowd regions read into targets, masks
through resize and flip aligned with their boxes, the shapes set's exact masks, and the
data check on annotations with segmentations."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pss.config import DataConfig, SyntheticConfig
from pss.data import CocoDetection, Compose, HorizontalFlip, RandomResize, check_data
from pss.data.masks import decode_segmentation, encode_masks
from pss.data.shapes import generate, render
from pss.data.transforms import resize_masks
from pss.errors import UserError


def _dataset_files(tmp_path: Path, drop_segmentation: bool = False) -> tuple[Path, Path]:
    """One 60 x 40 image: a polygon square, an RLE rectangle, a crowd RLE."""
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((40, 60, 3), dtype=np.uint8)).save(images / "a.png")
    rect = np.zeros((1, 40, 60), dtype=bool)
    rect[0, 20:30, 30:55] = True
    crowd = np.zeros((40, 60), dtype=np.uint8)
    crowd[0:5, 0:5] = 1
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 12, 12], "iscrowd": 0,
         "segmentation": [[4, 4, 16, 4, 16, 16, 4, 16]]},
        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [30, 20, 25, 10], "iscrowd": 0,
         "segmentation": encode_masks(rect)[0]},
        {"id": 3, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "iscrowd": 1,
         "segmentation": {"size": [40, 60], "counts": [0, 5, 35, 5, 35, 5, 35, 5, 35, 5, 2235]}},
    ]
    if drop_segmentation:
        del anns[1]["segmentation"]
    data = {"images": [{"id": 1, "file_name": "a.png", "width": 60, "height": 40}],
            "annotations": anns,
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(json.dumps(data))
    return images, ann_file


def _mask_box(mask: torch.Tensor) -> list[int]:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def test_training_targets_hold_polygon_and_rle_masks_and_drop_crowd(tmp_path):
    images, ann_file = _dataset_files(tmp_path)
    ds = CocoDetection(images, ann_file, None, train=True, masks=True)
    _, target = ds[0]
    assert target["masks"].shape == (2, 40, 60) and target["masks"].dtype == torch.uint8
    assert len(target["boxes"]) == 2  # the crowd region is dropped, box and mask alike
    square, rect = target["masks"]
    assert _mask_box(square) == [4, 4, 16, 16] and _mask_box(rect) == [30, 20, 55, 30]
    assert int(rect.sum()) == 250
    plain = CocoDetection(images, ann_file, None, train=True)
    assert "masks" not in plain[0][1]  # box models read no masks


def test_uncompressed_crowd_rle_decodes():
    counts = [0, 5, 35, 5, 35, 5, 35, 5, 35, 5, 2235]  # 5 x 5 at the top left of 40 x 60
    mask = decode_segmentation({"size": [40, 60], "counts": counts}, 40, 60)
    assert mask.sum() == 25 and mask[:5, :5].all()


def test_an_object_without_segmentation_is_refused_naming_the_file(tmp_path):
    images, ann_file = _dataset_files(tmp_path, drop_segmentation=True)
    with pytest.raises(UserError, match="annotation 2 .*segmentation") as err:
        CocoDetection(images, ann_file, None, train=True, masks=True)
    assert str(ann_file) in str(err.value)
    CocoDetection(images, ann_file, None, train=True)  # boxes only: fine


@pytest.mark.parametrize("seed", range(4))
def test_masks_follow_their_boxes_through_resize_and_flip(tmp_path, seed):
    images, ann_file = _dataset_files(tmp_path)
    transforms = Compose([RandomResize([30, 57, 80], 200), HorizontalFlip(0.5)])
    ds = CocoDetection(images, ann_file, transforms, train=True, masks=True)
    image, target = ds.transforms(
        Image.open(images / "a.png").convert("RGB"),
        ds.load_target(0, 40, 60),
        random.Random(seed),
    )
    width, height = image.size
    assert target["masks"].shape[1:] == (height, width) == tuple(target["size"])
    for box, mask in zip(target["boxes"].tolist(), target["masks"]):
        # The mask's extent is its box's, to within a pixel of rounding per side.
        assert _mask_box(mask) == pytest.approx(box, abs=1.01)


def test_resize_masks_keeps_an_empty_set_and_aligns_pixel_centres():
    assert resize_masks(torch.zeros(0, 5, 5, dtype=torch.uint8), 10, 10).shape == (0, 10, 10)
    mask = torch.zeros(1, 4, 4, dtype=torch.uint8)
    mask[0, 1:3, 1:3] = 1
    assert torch.equal(resize_masks(mask, 8, 8)[0].nonzero().amin(0), torch.tensor([2, 2]))
    assert torch.equal(resize_masks(mask, 8, 8)[0].nonzero().amax(0), torch.tensor([5, 5]))


def test_shapes_write_the_exact_visible_mask_of_each_shape():
    for index in range(6):
        _, objects = render(2, "train", index, 96)
        masks = np.stack([decode_segmentation(o["segmentation"], 96, 96) for o in objects])
        assert (masks.sum(0) <= 1).all()  # a pixel shows one shape at most
        for obj, mask in zip(objects, masks):
            assert mask.sum() == obj["area"] > 0
            ys, xs = np.nonzero(mask)
            x, y, w, h = obj["bbox"]
            assert x - 1 <= xs.min() and xs.max() <= x + w + 1
            assert y - 1 <= ys.min() and ys.max() <= y + h + 1


def test_the_data_check_passes_a_shapes_set_with_segmentations(tmp_path):
    root = tmp_path / "shapes"
    generate(root, train=3, val=2, seed=0, size=64)
    ann = json.loads((root / "annotations" / "val.json").read_text())
    assert all("segmentation" in a for a in ann["annotations"])
    cfg = DataConfig(
        root=str(root),
        train_images="train",
        train_annotations="annotations/train.json",
        val_images="val",
        val_annotations="annotations/val.json",
        synthetic=SyntheticConfig(train=3, val=2, size=64, seed=0),
    )
    report = check_data(cfg, cache=False)
    assert not report.problems, report.problems
