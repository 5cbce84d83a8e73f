"""Comparing two training checkpoints (resume tests: one process and two ranks)."""

from __future__ import annotations

from typing import Any

import torch


def assert_same_training_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    """The same iteration count, bit for bit the same weights and SGD momentum buffers."""
    assert a["iteration"] == b["iteration"]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    momentum_a = [s["momentum_buffer"] for s in a["optimizer"]["state"].values()]
    momentum_b = [s["momentum_buffer"] for s in b["optimizer"]["state"].values()]
    assert len(momentum_a) == len(momentum_b)
    assert all(torch.equal(x, y) for x, y in zip(momentum_a, momentum_b))
