"""COCO-format detection data: a validated Dataset, batch collation and loaders.

    ds = build_dataset(cfg.data, "train", seed=cfg.train.seed)
    loader = build_loader(ds, batch_size=8, num_workers=4, shuffle=True, seed=0,
                          distributed=False, size_divisibility=32, epoch=0)
    for epoch in range(start, epochs):
        set_epoch(loader, epoch)
        for images, targets in loader: ...   # images [B, 3, H, W], targets: list of dicts

Each target holds ``boxes`` [M, 4] float32 (x1, y1, x2, y2 in the resized
image's pixels), ``labels`` [M] int64 (contiguous 0..C-1, indices into
``dataset.cat_ids``), ``iscrowd`` [M] bool, ``image_id`` int, ``orig_size``
(h, w) of the file, ``size`` (h, w) after resizing, ``scale`` (float,
resized / original: original boxes = boxes / scale when not flipped) and
``flipped`` (bool; only training flips). A dataset built with ``masks=True``
(instance segmentation models) adds ``masks`` [M, h, w] uint8: each object's
``segmentation`` (polygons or RLE, :mod:`pss.data.masks`) at the resized image's
size, aligned with its box through every transform.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
from collections.abc import Callable
from functools import cached_property, partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from pss.config import DataConfig
from pss.data.check import (
    USABLE,
    box_reasons,
    check_image_files,
    declared_size_differs,
    in_unit_square,
    read_annotations,
    split_files,
)
from pss.data.masks import decode_segmentation
from pss.data.sampler import ShardedBatches
from pss.data.transforms import Compose, Normalize, Target, build_transforms
from pss.errors import RunFailed, UserError

# ----------------------------------------------------------------------------
# Dataset (the rules of a valid file, image and box live in pss.data.check)


def load_coco(ann_file: str | Path, image_dir: str | Path | None = None) -> COCO:
    """A pycocotools ``COCO`` for a validated file (and its image folder, if given), quietly."""
    data = read_annotations(ann_file)
    if image_dir is not None:
        check_image_files(data, Path(image_dir), str(ann_file))
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class ImageFailed(RunFailed):
    """An image the data check passed could not be used mid-run (it changed on disk)."""


class CocoDetection(Dataset):
    """Images and box (and, with ``masks=True``, mask) targets of a COCO-format dataset.

    ``dataset[i]`` is ``(image [3, H, W] float32 normalised, target)``, see the
    module docstring. With ``train=True`` crowd boxes and the boxes the data
    check counts as unusable (:func:`~pss.data.check.box_reasons`: degenerate,
    outside the image, normalised) are removed (images left without boxes
    stay: they are valid negatives). Randomness comes from
    ``random.Random(f"{seed}-{epoch}-{i}")``, so a sample is a pure function of
    (seed, epoch, index); call ``set_epoch``. With ``masks=True`` every kept object
    needs a ``segmentation`` (crowd regions are dropped before, as their boxes are).
    """

    def __init__(
        self,
        image_dir: str | Path,
        ann_file: str | Path,
        transforms: Callable[..., tuple[Any, Target]] | None,
        train: bool,
        seed: int = 0,
        max_images: int | None = None,
        masks: bool = False,
    ) -> None:
        self.image_dir = Path(image_dir)
        self.masks = masks
        self.ann_file = Path(ann_file)
        data = read_annotations(self.ann_file)
        check_image_files(data, self.image_dir, str(self.ann_file))
        self.transforms = transforms if transforms is not None else Compose([Normalize()])
        self.train = train
        self.seed = seed
        self.epoch = 0
        categories = sorted(data["categories"], key=lambda cat: cat["id"])
        self.cat_ids: list[int] = [cat["id"] for cat in categories]
        self._class_names = [str(cat.get("name", cat["id"])) for cat in categories]
        self.cat_id_to_label = {cat_id: label for label, cat_id in enumerate(self.cat_ids)}
        self._flatten(data, max_images)  # the parsed file is dropped on return

    def _flatten(self, data: dict[str, Any], max_images: int | None) -> None:
        """The first ``max_images`` images by id and their boxes, as a few flat numpy arrays.

        Per image: id, file name, declared (h, w), offset of its boxes; per box:
        [x, y, w, h], label, crowd flag; boxes grouped by image in file order (as
        pycocotools' ``imgToAnns``). Loader workers forked from the training process
        read these without writing to them; per-image dicts or per-box lists would
        have their reference counts written on every read, and every page holding
        them copied into every worker (copy-on-read). A spawned worker gets a pickle
        of a few MiB even for COCO.
        """
        images = sorted(data["images"], key=lambda img: img["id"])[:max_images]
        n = len(images)
        self._image_ids = np.fromiter((img["id"] for img in images), np.int64, n)
        self._files = np.array([img["file_name"] for img in images], dtype=np.str_)
        self._declared = np.array(  # (h, w) from the annotation file, -1 where absent
            [(img.get("height", -1), img.get("width", -1)) for img in images], dtype=np.int64
        ).reshape(-1, 2)
        anns = data["annotations"]
        owner = np.fromiter((a["image_id"] for a in anns), np.int64, len(anns))
        slot = np.searchsorted(self._image_ids, owner).clip(max=n - 1)
        kept = np.flatnonzero(self._image_ids[slot] == owner)  # not cut by max_images
        kept = kept[np.argsort(slot[kept], kind="stable")]
        per_image = np.bincount(slot[kept], minlength=n)
        self._offsets = np.concatenate([[0], np.cumsum(per_image)]).astype(np.int64)
        self._boxes = np.array([anns[k]["bbox"] for k in kept], np.float32).reshape(-1, 4)
        cat_of_box = np.fromiter((anns[k]["category_id"] for k in kept), np.int64, len(kept))
        self._labels = np.searchsorted(np.array(self.cat_ids), cat_of_box).astype(np.int64)
        self._crowd = np.fromiter((bool(anns[k].get("iscrowd", 0)) for k in kept), bool, len(kept))
        self._relative = in_unit_square(self._boxes)  # the file holds 0-1 coordinates
        if self.masks:
            self._flatten_segmentations([anns[k] for k in kept])

    def _flatten_segmentations(self, anns: list[dict[str, Any]]) -> None:
        """Each annotation's ``segmentation`` as JSON bytes in one flat uint8 array (the
        same copy-on-read reason as :meth:`_flatten`), decoded when its image loads.
        Crowd regions may go without one (training drops them); any other object
        without one is refused, naming the file and the annotation."""
        blobs = []
        for ann, crowd in zip(anns, self._crowd):
            if "segmentation" not in ann and not crowd:
                raise UserError(
                    f"annotation {ann.get('id')} (image {ann['image_id']}) has no "
                    "'segmentation'; an instance segmentation model needs every object's "
                    "mask (a shapes set generated before masks existed: delete it to "
                    "generate it again)",
                    str(self.ann_file),
                )
            blobs.append(json.dumps(ann.get("segmentation", [])).encode())
        sizes = np.fromiter((len(b) for b in blobs), np.int64, len(blobs))
        self._seg_offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._segs = np.frombuffer(b"".join(blobs), dtype=np.uint8)

    def load_masks(self, box_index: np.ndarray, height: int, width: int) -> Tensor:
        """Masks [M, height, width] uint8 of the objects at ``box_index`` [M] (indices
        into the flat box arrays)."""
        masks = np.zeros((len(box_index), height, width), dtype=np.uint8)
        for slot, k in enumerate(box_index):
            blob = self._segs[self._seg_offsets[k] : self._seg_offsets[k + 1]].tobytes()
            try:
                masks[slot] = decode_segmentation(json.loads(blob), height, width)
            except ValueError as exc:
                raise ImageFailed(
                    f"{self.ann_file}: a segmentation of a {width}x{height} image: {exc}"
                ) from None
        return torch.from_numpy(masks)

    @cached_property
    def coco(self) -> COCO:
        """pycocotools' index of the whole file (COCO evaluation), built on first use."""
        return load_coco(self.ann_file)

    @property
    def ids(self) -> list[int]:
        """The dataset's image ids, in item order (ascending)."""
        return self._image_ids.tolist()

    @property
    def num_classes(self) -> int:
        return len(self.cat_ids)

    @property
    def class_names(self) -> list[str]:
        return list(self._class_names)

    def label_to_cat_id(self, label: int) -> int:
        """The COCO category id of contiguous label ``label``."""
        return self.cat_ids[int(label)]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self._image_ids)

    def load_target(self, index: int, height: int, width: int) -> Target:
        """Target of item ``index`` in file pixels: boxes [M, 4] x1y1x2y2 clipped to the image."""
        lo, hi = self._offsets[index], self._offsets[index + 1]
        xywh, labels, crowd = self._boxes[lo:hi], self._labels[lo:hi], self._crowd[lo:hi]
        box_index = np.arange(lo, hi)
        if self.train:
            keep = ~crowd & (box_reasons(xywh, (width, height), self._relative) == USABLE)
            xywh, labels, crowd = xywh[keep], labels[keep], crowd[keep]
            box_index = box_index[keep]
        boxes = torch.from_numpy(xywh.copy())
        labels = torch.from_numpy(labels.copy())
        crowd = torch.from_numpy(crowd.copy())
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2].clamp_(0, width)
        boxes[:, 1::2].clamp_(0, height)
        extra = {"masks": self.load_masks(box_index, height, width)} if self.masks else {}
        return {
            **extra,
            "boxes": boxes,
            "labels": labels,
            "iscrowd": crowd,
            "image_id": int(self._image_ids[index]),
            "orig_size": (height, width),
            "size": (height, width),
            "scale": 1.0,
            "flipped": False,
        }

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        path = self.image_dir / str(self._files[index])
        try:
            with Image.open(path) as file:
                image = file.convert("RGB")
        except (OSError, Image.DecompressionBombError) as exc:
            reason = str(exc).replace(f" '{path}'", "")  # Pillow names the file too
            raise ImageFailed(
                f"{path}: cannot read the image mid-run, after the data check passed it ({reason})"
            ) from None
        width, height = image.size
        declared_h, declared_w = (int(v) for v in self._declared[index])
        if declared_size_differs((declared_h, declared_w), (height, width)):
            raise ImageFailed(
                f"{path}: the image is {width}x{height} mid-run but {self.ann_file} "
                f"says {declared_w}x{declared_h}"
            )
        target = self.load_target(index, height, width)
        rng = random.Random(f"{self.seed}-{self.epoch}-{index}")
        return self.transforms(image, target, rng)

    def __repr__(self) -> str:
        return (
            f"CocoDetection({self.ann_file}, images={len(self)}, classes={self.num_classes}, "
            f"train={self.train}, transforms={self.transforms})"
        )


# ----------------------------------------------------------------------------
# Batching and loading


def collate(
    batch: list[tuple[Tensor, Target]], size_divisibility: int = 32
) -> tuple[Tensor, list[Target]]:
    """Stack images [3, h_i, w_i] into [B, 3, H, W], zero-padded at the bottom/right.

    H and W are the largest h_i / w_i rounded up to a multiple of ``size_divisibility``;
    boxes need no change (padding is below and right of the image).
    """
    images, targets = zip(*batch)
    div = max(1, size_divisibility)
    height = -(-max(img.shape[1] for img in images) // div) * div
    width = -(-max(img.shape[2] for img in images) // div) * div
    out = images[0].new_zeros((len(images), images[0].shape[0], height, width))
    for slot, img in zip(out, images):
        slot[:, : img.shape[1], : img.shape[2]].copy_(img)
    return out, list(targets)


def _sampler_seed(seed: int) -> int:
    # DistributedSampler seeds its shuffle with seed + epoch; spread the seeds
    # so that (seed, epoch + 1) and (seed + 1, epoch) give different orders.
    return (seed * 1_000_003) % (2**62)


def build_loader(
    dataset: Dataset,
    batch_size: int,
    num_workers: int,
    shuffle: bool,
    seed: int,
    distributed: bool,
    size_divisibility: int,
    epoch: int = 0,
) -> DataLoader:
    """A DataLoader whose order is a pure function of (seed, epoch); ``batch_size`` is per process.

    Training (``shuffle=True``): a ``DistributedSampler`` (one replica when not
    distributed, rank/world from torch.distributed otherwise), so
    ``set_epoch(loader, e)`` reproduces epoch e's order exactly, e.g. after
    resuming, and the ranks' batches of step k together hold one process's
    batch k (of ``batch_size * world`` images). It drops the last incomplete
    batch unless that would leave no batch at all.

    Evaluation (``shuffle=False``): :class:`~pss.data.sampler.ShardedBatches`,
    the batches of one in-order pass dealt to the ranks: every image exactly
    once (no padding with repeats), in the same batch as on one process.
    """
    world, rank = (
        (torch.distributed.get_world_size(), torch.distributed.get_rank())
        if distributed
        else (1, 0)
    )
    common = {
        "num_workers": num_workers,
        "collate_fn": partial(collate, size_divisibility=size_divisibility),
        "pin_memory": torch.cuda.is_available(),
        "persistent_workers": False,
        "generator": torch.Generator().manual_seed(seed),
    }
    if shuffle:
        sampler = DistributedSampler(
            dataset, num_replicas=world, rank=rank, shuffle=True, seed=_sampler_seed(seed)
        )
        drop_last = len(sampler) >= batch_size
        loader = DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, **common
        )
    else:
        batches = ShardedBatches(len(dataset), batch_size, world, rank)
        loader = DataLoader(dataset, batch_sampler=batches, **common)
    set_epoch(loader, epoch)
    return loader


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Set the epoch of the loader's sampler and dataset (shuffle order and augmentations)."""
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)


def build_dataset(
    cfg: DataConfig, split: Literal["train", "val"], seed: int = 0, masks: bool = False
) -> CocoDetection:
    """The train or val dataset of ``cfg``, paths relative to ``cfg.root``.

    With ``cfg.synthetic`` set, the shapes dataset is generated into the root
    first if it is not there (its layout: ``train/``, ``val/``,
    ``annotations/train.json``, ``annotations/val.json``). ``cfg.max_val_images``
    keeps the first N val images by id. ``masks``: targets with masks (see the module).
    """
    images, ann_file = split_files(cfg, split)
    train = split == "train"
    return CocoDetection(
        images,
        ann_file,
        build_transforms(cfg, train),
        train=train,
        seed=seed,
        max_images=None if train else cfg.max_val_images,
        masks=masks,
    )
