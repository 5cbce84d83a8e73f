"""Tests of pss.mmdet: they need MMDetection, installed by `make mmdet` (`make test-mmdet`)."""

from __future__ import annotations

import importlib.util

import pytest

if importlib.util.find_spec("mmdet") is None or importlib.util.find_spec("mmcv") is None:
    raise pytest.UsageError(
        "tests/mmdet need MMDetection and mmcv: run `make mmdet` (or `make test-mmdet`)"
    )


def pytest_configure(config):
    # mmengine 0.10.7 imports pkg_resources (setuptools < 82 keeps it, with this warning).
    config.addinivalue_line("filterwarnings", "ignore:pkg_resources is deprecated:UserWarning")
