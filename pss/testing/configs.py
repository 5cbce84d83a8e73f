"""Small configs for tests and benchmarks: seconds on a CPU, every branch present.

:data:`SMALL` and :func:`small_config` make a small detector; :data:`TINY_SHAPES`,
:func:`tiny_train_overrides` and :func:`write_tiny_overlay` a training of seconds on a
tiny shapes set (tests/conftest.py's ``shapes_root`` fixture generates it);
:func:`write_spec` a sweep spec based on the repository's experiments/.
"""

from __future__ import annotations

from pathlib import Path

from pss.config import ExperimentConfig, SyntheticConfig, load_config
from pss.testing import REPO

# A ResNet-18 detector with a narrow head and three classes.
SMALL = [
    "model.backbone.name=resnet18",
    "model.num_classes=3",
    "model.head.channels=32",
    "model.head.num_convs=2",
]


def small_config(name: str = "fcos_pss", *overrides: str) -> ExperimentConfig:
    """The config of a small ``name`` detector (fcos, atss, fcos_pss, atss_pss)."""
    return load_config([], [f"model.name={name}", *SMALL, *overrides])


TINY_SHAPES = SyntheticConfig(train=16, val=6, size=128, seed=0)


def tiny_train_overrides(root: Path, out: Path, name: str = "fcos_pss") -> list[str]:
    """A training that takes seconds: 2 epochs of 2 iterations on 128 px shapes."""
    return [
        f"model.name={name}",
        *SMALL,
        "model.backbone.norm=bn",
        "model.backbone.frozen_stages=-1",
        f"data.root={root}",
        "data.train_images=train",
        "data.train_annotations=annotations/train.json",
        "data.val_images=val",
        "data.val_annotations=annotations/val.json",
        f"data.synthetic={{train: {TINY_SHAPES.train}, val: {TINY_SHAPES.val}, "
        f"size: {TINY_SHAPES.size}, seed: 0}}",
        "data.train_scales=[96, 128]",
        "data.max_size=160",
        "data.test_scale=128",
        "data.num_workers=0",
        "train.epochs=2",
        "train.batch_size=4",
        "train.iters_per_epoch=2",
        "train.warmup_iters=2",
        "train.lr_steps=[2]",
        "train.amp=false",
        "train.log_interval=1",
        f"output_dir={out}",
    ]


def write_tiny_overlay(path: Path, data_root: Path) -> Path:
    """A smoke overlay whose jobs train in seconds (for sweep tests)."""
    path.write_text(
        f"""
model:
  num_classes: 3
  backbone: {{name: resnet18, weights: null, dcn: false, norm: bn, frozen_stages: -1}}
  head: {{channels: 32, num_convs: 1}}
data:
  root: {data_root}
  train_images: train
  train_annotations: annotations/train.json
  val_images: val
  val_annotations: annotations/val.json
  synthetic:
    train: {TINY_SHAPES.train}
    val: {TINY_SHAPES.val}
    size: {TINY_SHAPES.size}
    seed: 0
  train_scales: [96, 128]
  max_size: 160
  test_scale: 128
  num_workers: 0
train:
  epochs: 2
  batch_size: 4
  iters_per_epoch: 2
  warmup_iters: 2
  lr_steps: [2]
  amp: false
  log_interval: 1
"""
    )
    return path


def write_spec(path: Path, body: str) -> Path:
    """A spec file whose ``@EXP@`` stands for the repository's experiments/ folder."""
    path.write_text(body.replace("@EXP@", str(REPO / "experiments")))
    return path
