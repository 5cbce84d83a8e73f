"""Shared fixtures: small configs that build and run fast on a CPU."""

from __future__ import annotations

import pytest
import torch

from pss.config import ExperimentConfig, load_config

SMALL = [
    "model.backbone.name=resnet18",
    "model.num_classes=3",
    "model.head.channels=32",
    "model.head.num_convs=2",
]


def small_config(name: str = "fcos_pss", *overrides: str) -> ExperimentConfig:
    return load_config([], [f"model.name={name}", *SMALL, *overrides])


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def toy_targets() -> list[dict[str, torch.Tensor]]:
    return [
        {
            "boxes": torch.tensor([[10.0, 20, 100, 120], [50, 60, 200, 230], [5, 5, 30, 40]]),
            "labels": torch.tensor([0, 2, 1]),
        },
        {"boxes": torch.tensor([[30.0, 30, 180, 150]]), "labels": torch.tensor([1])},
    ]
