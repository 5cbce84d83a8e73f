"""Small model configs for tests and benchmarks: seconds on a CPU, every branch present."""

from __future__ import annotations

from pss.config import ExperimentConfig, load_config

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
