"""Shared fixtures: small configs that build and run fast on a CPU; and a last check that
no process the tests started is still running when the session ends."""

from __future__ import annotations

import os
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

from pss.config import SyntheticConfig
from pss.data import ensure_shapes
from pss.testing.configs import SMALL


@pytest.fixture(autouse=True)
def _no_login_left_behind():
    """A test that logged in to a tracking server leaves no password to the next one."""
    before = {k: os.environ.get(k) for k in _LOGIN_ENV}
    yield
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


_LOGIN_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


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


TINY_SHAPES = SyntheticConfig(train=16, val=6, size=128, seed=0)


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory) -> Path:
    """A tiny shapes dataset shared by the whole session."""
    root = tmp_path_factory.mktemp("data") / "shapes"
    ensure_shapes(root, TINY_SHAPES)
    return root


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory) -> str:
    """One SQLite MLflow store for the session (creating one costs seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def tracking(mlflow_uri, monkeypatch, tmp_path) -> str:
    """The session store, with this test's cwd in tmp (MLflow puts artifacts in ./mlruns)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    monkeypatch.chdir(tmp_path)
    return mlflow_uri


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


REPO = Path(__file__).resolve().parent.parent


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


@pytest.fixture
def tiny_overlay(tmp_path, shapes_root) -> Path:
    """write_tiny_overlay's file, for tests that cannot import this module (tests/mmdet)."""
    return write_tiny_overlay(tmp_path / "tiny.yaml", shapes_root)


def write_spec(path: Path, body: str) -> Path:
    """A spec file whose relative paths are resolved against the repository's sweeps/."""
    path.write_text(body.replace("@EXP@", str(REPO / "experiments")))
    return path


# ----------------------------------------------------------------- nothing left running

SESSION = "PSS_TEST_SESSION"  # inherited by every process the tests start (SLURM jobs too)
# Processes being stopped (scancel, SIGTERM) may take a moment to go.
LEFTOVER_GRACE_S = float(os.environ.get("PSS_LEFTOVER_GRACE_S", "30"))


def pytest_configure(config):
    os.environ[SESSION] = uuid.uuid4().hex


def _started_by_this_session() -> list[str]:
    """Live processes whose environment carries this session's token, but this one."""
    marker = f"{SESSION}={os.environ[SESSION]}".encode()
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        if int(proc.name) == os.getpid():
            continue
        try:
            if marker not in (proc / "environ").read_bytes().split(b"\0"):
                continue
            stat = (proc / "stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] == "Z":  # exited, waiting to be reaped
                continue
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:160]
            parent = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if parent == os.getpid() and "multiprocessing.resource_tracker" in command:
            continue  # spawn's helper of this very process: it ends when pytest does
        found.append(f"pid {proc.name}: {command}")
    return found


def pytest_sessionfinish(session, exitstatus):
    """Fail the run when a server, rank or job started by a test outlives the tests."""
    deadline = time.monotonic() + LEFTOVER_GRACE_S
    left = _started_by_this_session()
    while left and time.monotonic() < deadline:
        time.sleep(1)
        left = _started_by_this_session()
    if left:
        print(
            "\nERROR: processes started by the tests are still running:\n  " + "\n  ".join(left),
            file=sys.__stderr__,
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED

