"""Shared fixtures: a tiny shapes dataset, the session's MLflow store; and a last check that
no process the tests started is still running when the session ends.

The helpers tests share (small configs, overlays, specs, toy targets) are in the
installed package pss.testing; this file holds only fixtures and hooks.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from pss.data import ensure_shapes
from pss.testing.configs import TINY_SHAPES, write_tiny_overlay
from pss.testing.deploy import write_checkpoint, write_images


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


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory) -> Path:
    """A tiny shapes dataset (TINY_SHAPES) shared by the whole session."""
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


@pytest.fixture
def tiny_overlay(tmp_path, shapes_root) -> Path:
    """write_tiny_overlay's file in this test's tmp folder, over the session's shapes."""
    return write_tiny_overlay(tmp_path / "tiny.yaml", shapes_root)


# ----------------------------------------------------------------- golden files


def pytest_addoption(parser):
    parser.addoption(
        "--update-goldens",
        action="store_true",
        help="write the golden files from the current output instead of comparing with them "
        "(what `python -m tests.golden_update` runs)",
    )


_GOLDEN_STATES = pytest.StashKey[list[str]]()


@pytest.fixture
def golden(request) -> Callable[[Path, str], None]:
    """``golden(path, text)``: fail unless ``text`` is the golden file ``path``; under
    ``--update-goldens``, write ``text`` there instead (the summary lists each file)."""
    update = request.config.getoption("--update-goldens")

    def check(path: Path, text: str) -> None:
        old = path.read_text(encoding="utf-8") if path.is_file() else None
        if update:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            state = "unchanged" if old == text else "new" if old is None else "updated"
            where = os.path.relpath(path, request.config.rootpath)
            request.config.stash.setdefault(_GOLDEN_STATES, []).append(f"{state:9} {where}")
            return
        assert old is not None, f"missing {path}; create it with `python -m tests.golden_update`"
        assert text == old, (
            f"{path.name} differs from {path}; if the change is intended, regenerate the "
            "goldens with `python -m tests.golden_update` and review the diff"
        )

    return check


def pytest_terminal_summary(terminalreporter, config):
    for line in config.stash.get(_GOLDEN_STATES, []):
        terminalreporter.write_line(line)


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


# A small trained-looking checkpoint and a folder of photos, for the predict / export /
# visualize tests (one of each per test module).
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "last.pth")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("images") / "photos")
