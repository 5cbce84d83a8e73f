"""COCO dataset, transforms, collation, loaders and bad-input errors of pss.data."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
from PIL import Image

from pss.config import DataConfig, SyntheticConfig
from pss.data import (
    CocoDetection,
    Compose,
    HorizontalFlip,
    Normalize,
    RandomResize,
    build_dataset,
    build_loader,
    build_transforms,
    collate,
    set_epoch,
)
from pss.data.coco import ImageFailed
from pss.data.shapes import generate
from pss.errors import UserError

# ----------------------------------------------------------------------------
# A tiny hand-written COCO dataset


def tiny_coco() -> dict[str, Any]:
    return {
        "images": [
            {"id": 10, "file_name": "a.png", "width": 64, "height": 48},
            {"id": 20, "file_name": "b.png", "width": 40, "height": 30},
        ],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 7, "bbox": [4, 6, 20, 10], "iscrowd": 0},
            {"id": 2, "image_id": 10, "category_id": 1, "bbox": [0, 0, 30, 30], "iscrowd": 1},
            {"id": 3, "image_id": 10, "category_id": 3, "bbox": [10, 10, 0.5, 5], "iscrowd": 0},
        ],
        "categories": [
            {"id": 7, "name": "seven"},
            {"id": 1, "name": "one"},
            {"id": 3, "name": "three"},
        ],
    }


def write_png(path: Path, width: int, height: int, seed: int = 0) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Path, Path]:
    images = tmp_path / "images"
    images.mkdir()
    write_png(images / "a.png", 64, 48, 1)
    write_png(images / "b.png", 40, 30, 2)
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(tiny_coco()))
    return images, ann


def test_contiguous_labels(tiny: tuple[Path, Path]) -> None:
    ds = CocoDetection(*tiny, transforms=None, train=True)
    assert ds.cat_ids == [1, 3, 7]
    assert ds.num_classes == 3
    assert ds.class_names == ["one", "three", "seven"]
    assert [ds.label_to_cat_id(k) for k in range(3)] == [1, 3, 7]
    _, target = ds[0]
    assert target["labels"].tolist() == [2]  # category 7


def test_train_drops_crowd_and_tiny_keeps_empty_images(tiny: tuple[Path, Path]) -> None:
    ds = CocoDetection(*tiny, transforms=None, train=True)
    assert len(ds) == 2
    image, target = ds[0]
    assert image.shape == (3, 48, 64) and image.dtype == torch.float32
    assert target["boxes"].tolist() == [[4.0, 6.0, 24.0, 16.0]]
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    assert target["image_id"] == 10
    assert target["orig_size"] == (48, 64) and target["size"] == (48, 64)
    assert target["scale"] == 1.0

    image, empty = ds[1]  # no annotations: a valid negative
    assert image.shape == (3, 30, 40)
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
    assert empty["image_id"] == 20

    batch, targets = collate([ds[0], ds[1]], size_divisibility=32)
    assert batch.shape == (2, 3, 64, 64)
    assert [t["boxes"].shape[0] for t in targets] == [1, 0]


def test_eval_keeps_all_annotations_with_crowd_flag(tiny: tuple[Path, Path]) -> None:
    ds = CocoDetection(*tiny, transforms=None, train=False)
    _, target = ds[0]
    assert target["boxes"].shape == (3, 4)
    assert target["iscrowd"].tolist() == [False, True, False]
    assert target["labels"].tolist() == [2, 0, 1]


def test_normalize_matches_imagenet_statistics(tiny: tuple[Path, Path]) -> None:
    images, _ = tiny
    pil = Image.open(images / "a.png").convert("RGB")
    tensor, _ = Normalize()(pil, {}, random.Random(0))
    raw = torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1).float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]  # ImageNet's, RGB
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    assert tensor.shape == (3, 48, 64) and tensor.dtype == torch.float32
    torch.testing.assert_close(tensor, (raw - mean) / std)


# ----------------------------------------------------------------------------
# Transforms


def sample(width: int = 200, height: int = 100) -> tuple[Image.Image, dict[str, Any]]:
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, :10] = 255  # a white band on the left edge
    target = {"boxes": torch.tensor([[10.0, 20.0, 50.0, 60.0], [0.0, 0.0, 200.0, 100.0]])}
    return Image.fromarray(pixels), target


def test_resize_scales_boxes_exactly() -> None:
    image, target = sample()
    out, t = RandomResize([50], 1000)(image, target, random.Random(0))
    assert out.size == (100, 50)
    assert t["size"] == (50, 100) and t["scale"] == 0.5
    assert t["boxes"].tolist() == [[5.0, 10.0, 25.0, 30.0], [0.0, 0.0, 100.0, 50.0]]
    assert torch.equal(t["boxes"] / t["scale"], target["boxes"])  # back to the original


def test_flip_mirrors_boxes_and_pixels() -> None:
    image, target = sample()
    out, t = HorizontalFlip(1.0)(image, target, random.Random(0))
    assert t["boxes"].tolist() == [[150.0, 20.0, 190.0, 60.0], [0.0, 0.0, 200.0, 100.0]]
    pixels = np.asarray(out)
    assert pixels[0, -1, 0] == 255 and pixels[0, 0, 0] == 0  # the band moved right
    same, t0 = HorizontalFlip(0.0)(image, target, random.Random(0))
    assert same is image and torch.equal(t0["boxes"], target["boxes"])


def test_resize_then_flip_in_resized_coordinates() -> None:
    image, target = sample()
    pipeline = Compose([RandomResize([50], 1000), HorizontalFlip(1.0), Normalize()])
    tensor, t = pipeline(image, target, random.Random(0))
    assert tensor.shape == (3, 50, 100)
    assert t["boxes"].tolist() == [[75.0, 10.0, 95.0, 30.0], [0.0, 0.0, 100.0, 50.0]]


def test_max_size_caps_the_longer_side() -> None:
    image, target = sample(width=2000, height=500)
    out, t = RandomResize([800], 1333)(image, target, random.Random(0))
    assert out.size == (1333, 333)
    assert max(out.size) <= 1333
    assert t["scale"] == pytest.approx(1333 / 2000)
    torch.testing.assert_close(t["boxes"], target["boxes"] * (1333 / 2000))


@pytest.mark.parametrize(
    "transform",
    [RandomResize([100, 120, 140], 10_000), HorizontalFlip(0.5)],
    ids=["resize", "flip"],
)
def test_random_transforms_draw_only_from_the_given_rng(transform) -> None:
    image, target = sample(width=300, height=200)

    def outcome(rng: random.Random) -> tuple:
        _, t = transform(image, target, rng)
        return t.get("size"), t["boxes"].tolist()

    results = {}
    for s in range(30):
        random.seed(1000 + s)  # the global RNG in another state each time
        before = random.getstate()
        rng = random.Random(f"x-{s}")
        results[s] = outcome(rng)
        global_untouched = random.getstate() == before
        rng_used = rng.getstate() != random.Random(f"x-{s}").getstate()
        assert global_untouched and rng_used, "draws from the global RNG, not the given rng"
        random.seed(s)
        assert outcome(random.Random(f"x-{s}")) == results[s]  # a function of the rng alone
    drawn = {r[0][0] if r[0] else r[1][0][0] for r in results.values()}
    # every scale (resize) or both sides (flip: x1 = 10 or 300 - 50) come up
    assert drawn == ({100, 120, 140} if isinstance(transform, RandomResize) else {10.0, 250.0})


def test_build_transforms_train_and_eval() -> None:
    cfg = DataConfig(train_scales=[64, 96], max_size=128, test_scale=80, flip_prob=0.5)
    image, target = sample(width=300, height=200)
    tensor, t = build_transforms(cfg, train=False)(image, target, random.Random(0))
    assert tensor.shape == (3, 80, 120) and t["scale"] == pytest.approx(0.4)
    sizes = {
        build_transforms(cfg, train=True)(image, target, random.Random(s))[1]["size"]
        for s in range(20)
    }
    assert sizes == {(64, 96), (85, 128)}  # 96 -> longer side 144 > 128: capped


def test_collate_pads_to_multiple_of_32_with_zeros() -> None:
    a, b = torch.ones(3, 50, 70), torch.full((3, 40, 100), 2.0)
    images, targets = collate([(a, {"i": 0}), (b, {"i": 1})], size_divisibility=32)
    assert images.shape == (2, 3, 64, 128)
    assert torch.equal(images[0, :, :50, :70], a) and images[0, :, 50:].abs().sum() == 0
    assert images[0, :, :, 70:].abs().sum() == 0
    assert torch.equal(images[1, :, :40, :100], b) and images[1, :, 40:].abs().sum() == 0
    assert [t["i"] for t in targets] == [0, 1]
    assert collate([(a, {})], size_divisibility=1)[0].shape == (1, 3, 50, 70)


# ----------------------------------------------------------------------------
# Determinism: samples and loaders


@pytest.fixture(scope="module")
def shapes_cfg(tmp_path_factory: pytest.TempPathFactory) -> DataConfig:
    root = tmp_path_factory.mktemp("shapes")
    return DataConfig(
        root=str(root),
        train_images="train",
        train_annotations="annotations/train.json",
        val_images="val",
        val_annotations="annotations/val.json",
        synthetic=SyntheticConfig(train=9, val=5, size=64, seed=0),
        train_scales=[48, 64, 80],
        max_size=128,
        test_scale=64,
        max_val_images=3,
    )


def same_sample(a: tuple[torch.Tensor, dict], b: tuple[torch.Tensor, dict]) -> bool:
    if a[0].shape != b[0].shape or not torch.equal(a[0], b[0]):
        return False
    return torch.equal(a[1]["boxes"], b[1]["boxes"]) and a[1]["size"] == b[1]["size"]


def test_build_dataset_generates_shapes_and_limits_val(shapes_cfg: DataConfig) -> None:
    train = build_dataset(shapes_cfg, "train", seed=1)
    val = build_dataset(shapes_cfg, "val")
    assert len(train) == 9 and train.train and train.cat_ids == [1, 3, 7]
    assert val.ids == [1, 2, 3] and not val.train  # first N val images by id
    image, target = val[0]
    assert image.shape == (3, 64, 64) and target["scale"] == 1.0


def test_sample_is_a_function_of_seed_epoch_index(shapes_cfg: DataConfig) -> None:
    a = build_dataset(shapes_cfg, "train", seed=1)
    b = build_dataset(shapes_cfg, "train", seed=1)
    for i in range(len(a)):
        assert same_sample(a[i], a[i]) and same_sample(a[i], b[i])
    before = [a[i] for i in range(len(a))]
    a.set_epoch(1)
    assert any(not same_sample(before[i], a[i]) for i in range(len(a)))
    a.set_epoch(0)
    assert all(same_sample(before[i], a[i]) for i in range(len(a)))
    other_seed = build_dataset(shapes_cfg, "train", seed=2)
    assert any(not same_sample(before[i], other_seed[i]) for i in range(len(a)))
    assert all(not same_sample(before[0], a[i]) for i in range(1, len(a)))  # and of the index


def run_epoch(loader: torch.utils.data.DataLoader) -> list[tuple[list[int], torch.Tensor]]:
    return [([t["image_id"] for t in targets], images) for images, targets in loader]


def test_loader_order_depends_only_on_seed_and_epoch(shapes_cfg: DataConfig) -> None:
    ds = build_dataset(shapes_cfg, "train", seed=0)

    def loader(workers: int, epoch: int):
        return build_loader(ds, 2, workers, True, 7, False, 32, epoch=epoch)

    first = run_epoch(loader(0, 3))
    assert len(first) == 4  # 9 images, batch 2, training drops the last partial batch
    assert all(images.shape[-1] % 32 == 0 and images.shape[-2] % 32 == 0 for _, images in first)
    again = run_epoch(loader(0, 3))
    parallel = run_epoch(loader(2, 3))
    for (ids_a, img_a), (ids_b, img_b), (ids_c, img_c) in zip(first, again, parallel):
        assert ids_a == ids_b == ids_c
        assert torch.equal(img_a, img_b) and torch.equal(img_a, img_c)

    # Resuming at epoch 3 == running epochs 0..3 with set_epoch.
    resumed = loader(0, 0)
    for epoch in range(4):
        set_epoch(resumed, epoch)
        got = run_epoch(resumed)
    assert [ids for ids, _ in got] == [ids for ids, _ in first]
    other = run_epoch(loader(0, 4))
    assert [ids for ids, _ in other] != [ids for ids, _ in first]


def test_eval_loader_keeps_every_image_in_order(shapes_cfg: DataConfig) -> None:
    val = build_dataset(shapes_cfg, "val")
    batches = run_epoch(build_loader(val, 2, 0, False, 0, False, 32))
    assert [ids for ids, _ in batches] == [[1, 2], [3]]


def test_synthetic_with_coco_paths_explains_the_layout(tmp_path: Path) -> None:
    cfg = DataConfig(root=str(tmp_path / "s"), synthetic=SyntheticConfig(train=1, val=1, size=32))
    with pytest.raises(UserError, match="train_annotations=annotations/train.json"):
        build_dataset(cfg, "train")


# ----------------------------------------------------------------------------
# Bad input: one UserError naming the file and the problem


def mutate(fn):
    def apply(data: dict[str, Any]) -> Any:
        data = copy.deepcopy(data)
        return fn(data) or data

    return apply


def set_path(data: dict[str, Any], path: tuple, value: Any) -> None:
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


BAD_JSON = {
    "top-level list": (lambda d: [d], "must be a JSON object"),
    "no categories": (
        mutate(lambda d: d.pop("categories") and None),
        "missing top-level key 'categories'",
    ),
    "images not a list": (
        mutate(lambda d: set_path(d, ("images",), {})),
        "'images' must be a list",
    ),
    "no images": (mutate(lambda d: set_path(d, ("images",), [])), "has no images"),
    "image id not int": (
        mutate(lambda d: set_path(d, ("images", 0, "id"), "10")),
        "'id' must be an integer",
    ),
    "duplicate image id": (
        mutate(lambda d: set_path(d, ("images", 1, "id"), 10)),
        "duplicate image id 10",
    ),
    "unknown image": (
        mutate(lambda d: set_path(d, ("annotations", 0, "image_id"), 99)),
        "unknown image_id 99",
    ),
    "unknown category": (
        mutate(lambda d: set_path(d, ("annotations", 0, "category_id"), 2)),
        "unknown category_id 2",
    ),
    "bbox of 3": (
        mutate(lambda d: set_path(d, ("annotations", 0, "bbox"), [1, 2, 3])),
        "bbox must be 4 numbers",
    ),
    "bbox strings": (
        mutate(lambda d: set_path(d, ("annotations", 0, "bbox"), ["1", 2, 3, 4])),
        "bbox must be 4 numbers",
    ),
    "negative width": (
        mutate(lambda d: set_path(d, ("annotations", 0, "bbox"), [1, 2, -3, 4])),
        "negative width/height",
    ),
    "duplicate annotation id": (
        mutate(lambda d: set_path(d, ("annotations", 1, "id"), 1)),
        "duplicate annotation id 1",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_JSON))
def test_bad_annotation_content(tiny: tuple[Path, Path], case: str) -> None:
    images, ann = tiny
    change, phrase = BAD_JSON[case]
    ann.write_text(json.dumps(change(tiny_coco())))
    with pytest.raises(UserError) as err:
        CocoDetection(images, ann, None, train=True)
    assert str(ann) in str(err.value) and phrase in str(err.value)


def test_annotation_file_missing_unreadable_or_not_json(tiny: tuple[Path, Path]) -> None:
    images, ann = tiny
    cases = {images / "nope.json": "annotation file not found", images: "cannot read"}
    bad = ann.with_name("bad.json")
    bad.write_text('{"images": [')
    cases[bad] = "not valid JSON (line 1"
    binary = ann.with_name("binary.json")
    binary.write_bytes(b"\xff\xfe\x00garbage")
    cases[binary] = "not valid JSON"
    for path, phrase in cases.items():
        with pytest.raises(UserError) as err:
            CocoDetection(images, path, None, train=True)
        assert str(path) in str(err.value) and phrase in str(err.value), str(err.value)


def test_missing_image_files_are_counted_and_named(tiny: tuple[Path, Path]) -> None:
    images, ann = tiny
    (images / "b.png").unlink()
    with pytest.raises(UserError) as err:
        CocoDetection(images, ann, None, train=True)
    message = str(err.value)
    assert "image file missing" in message and str(images / "b.png") in message
    assert "1 of 2" in message and str(ann) in message


def test_missing_image_directory(tiny: tuple[Path, Path]) -> None:
    images, ann = tiny
    with pytest.raises(UserError, match="does not exist") as err:
        CocoDetection(images.with_name("elsewhere"), ann, None, train=True)
    assert str(images.with_name("elsewhere")) in str(err.value)


def test_image_size_disagreeing_with_annotations(tiny: tuple[Path, Path]) -> None:
    images, ann = tiny
    write_png(images / "a.png", 32, 48)
    ds = CocoDetection(images, ann, None, train=True)
    with pytest.raises(ImageFailed, match="image is 32x48 mid-run") as err:
        ds[0]
    assert str(images / "a.png") in str(err.value)


def test_shapes_files_pass_validation(tmp_path: Path) -> None:
    generate(tmp_path, 2, 1, seed=0, size=48)
    ds = CocoDetection(tmp_path / "train", tmp_path / "annotations/train.json", None, train=True)
    assert len(ds) == 2 and ds.cat_ids == [1, 3, 7]


def loader_view(loader: torch.utils.data.DataLoader) -> list[list[list]]:
    """Per batch: [image_id, resized size, flipped] of each image (JSON-friendly)."""
    return [
        [[t["image_id"], list(t["size"]), bool(t.get("flipped"))] for t in targets]
        for _, targets in loader
    ]


def _rank_loader_view(rank: int, world: int, init: str, cfg: DataConfig, out: str) -> None:
    """One rank of a real gloo group: its training loader's epoch 2, written to ``out``."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        ds = build_dataset(cfg, "train", seed=0)
        loader = build_loader(ds, 2, 0, True, 5, True, 32, epoch=2)
        assert (loader.sampler.num_replicas, loader.sampler.rank) == (world, rank)
        Path(out).write_text(json.dumps(loader_view(loader)))
    finally:
        dist.destroy_process_group()


def test_distributed_loader_deals_one_process_batches_to_two_ranks(
    shapes_cfg: DataConfig, tmp_path: Path
) -> None:
    """Two real ranks (batch 2 each): at every step their batches together hold exactly
    the images (same augmentations) of one process's batch of 4; no image on both."""
    ds = build_dataset(shapes_cfg, "train", seed=0)
    single = loader_view(build_loader(ds, 4, 0, True, 5, False, 32, epoch=2))
    assert len(single) == 2  # 9 images, batch 4: the last one is dropped
    outs = [tmp_path / f"rank{r}.json" for r in range(2)]
    spawn = torch.multiprocessing.get_context("spawn")
    init = f"file://{tmp_path / 'pg'}"
    procs = [
        spawn.Process(target=_rank_loader_view, args=(r, 2, init, shapes_cfg, str(outs[r])))
        for r in range(2)
    ]
    for proc in procs:
        proc.start()
    try:
        for proc in procs:
            proc.join(timeout=300)  # only catches a hang
            assert proc.exitcode == 0, f"a rank exited with {proc.exitcode}"
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join()
    ranks = [json.loads(out.read_text()) for out in outs]
    assert len(ranks[0]) == len(ranks[1]) == len(single)
    key = json.dumps
    for step, whole in enumerate(single):
        assert [len(r[step]) for r in ranks] == [2, 2]
        assert sorted(map(key, ranks[0][step] + ranks[1][step])) == sorted(map(key, whole))
    ids = [image[0] for r in ranks for batch in r for image in batch]
    assert len(ids) == len(set(ids)) == 8
