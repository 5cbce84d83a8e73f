"""Runs that start well and cannot go on: one line, the run FAILED, the last good
checkpoint kept (issue 22, points 2 and 3), through the real ``python -m pss.train``.

- An image rewritten in place after the data check passed. The check's cached answer
  stands (the annotation file and the image folder did not change: that is what it
  is keyed on), so the image is met mid-run, as when a file changes during a run.
- Divergence: a learning rate multiplied by 1e12 after the first epoch.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from pss.data.check import main as check_main
from pss.engine.checkpoint import load_checkpoint
from pss.errors import RunFailed
from pss.models.selector import one_to_one
from pss.testing import REPO
from pss.testing.commands import assert_failed, run_command
from pss.testing.configs import tiny_train_overrides

EXPERIMENT = REPO / "experiments" / "fcos_pss_r50_3x.yaml"


@pytest.fixture
def own_copy(shapes_root: Path, tmp_path: Path, monkeypatch) -> Path:
    """The tiny shapes set copied (its images get broken), the data check's cache here."""
    root = tmp_path / "shapes"
    shutil.copytree(shapes_root, root)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return root


def _overrides(root: Path, out: Path, *more: str) -> list[str]:
    no_download = "model.backbone.weights=null"
    return [*tiny_train_overrides(root, out), no_download, "eval.interval=2", *more]


def _train(tmp_path: Path, overrides: list[str]):
    argv: list[str | Path] = ["-m", "pss.train", EXPERIMENT, "--experiment", "midrun"]
    for item in overrides:
        argv += ["--set", item]
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = run_command(argv, tmp_path, env={"MLFLOW_TRACKING_URI": store}, timeout=600)
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("midrun")
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    return proc, runs


def _checked_then_broken(root: Path, out: Path, split: str) -> list[Path]:
    """Check the data (it passes and is cached), then rewrite every image of ``split`` in
    place with bytes Pillow cannot read."""
    args = [str(EXPERIMENT)]
    for item in _overrides(root, out):
        args += ["--set", item]
    assert check_main(args) == 0
    images = sorted((root / split).iterdir())
    for image in images:
        with open(image, "r+b") as handle:  # in place: the folder's mtime stays
            handle.truncate(0)
            handle.write(b"no longer an image")
    return images


@pytest.mark.parametrize("workers", [0, 2])
def test_a_training_image_broken_after_the_check_fails_the_run_in_one_line(
    own_copy, tmp_path, workers
):
    out = tmp_path / "outputs"
    images = _checked_then_broken(own_copy, out, "train")
    proc, runs = _train(tmp_path, _overrides(own_copy, out, f"data.num_workers={workers}"))
    line = assert_failed(proc, own_copy / "train", "cannot read the image mid-run")
    assert any(str(image) in line for image in images), line
    assert [r.info.status for r in runs] == ["FAILED"]
    assert not list(out.rglob("last.pth"))  # it failed in the first epoch: nothing to keep


def test_a_validation_image_broken_after_the_check_keeps_the_last_checkpoint(own_copy, tmp_path):
    out = tmp_path / "outputs"
    _checked_then_broken(own_copy, out, "val")
    proc, runs = _train(tmp_path, _overrides(own_copy, out))  # evaluates after epoch 2
    assert_failed(proc, own_copy / "val", "cannot read the image mid-run")
    assert [r.info.status for r in runs] == ["FAILED"]
    (checkpoint,) = out.rglob("last.pth")
    assert load_checkpoint(checkpoint)["epoch"] == 1  # epoch 1's, as it was written


def test_divergence_stops_in_one_line_and_keeps_the_checkpoint_from_before(
    shapes_root, tmp_path, monkeypatch
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out = tmp_path / "outputs"
    blow_up = ["train.lr_steps=[1]", "train.lr_gamma=1e12", "train.epochs=3"]
    proc, runs = _train(tmp_path, _overrides(shapes_root, out, *blow_up))
    line = assert_failed(proc, "training diverged at iteration", "(epoch 2, lr ")
    assert "(epoch 1) is from before it" in line, line
    assert "non-finite" in line and "train.base_lr" in line, line
    assert [r.info.status for r in runs] == ["FAILED"]
    (checkpoint,) = out.rglob("last.pth")
    state = load_checkpoint(checkpoint)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_the_matching_never_hands_a_non_finite_score_to_the_solver():
    """NaN and infinite scores are no candidates; the finite pairs are still matched."""
    nan, inf = float("nan"), float("inf")
    quality = torch.tensor([nan, 0.3, inf, 0.9, nan])
    loc = torch.tensor([0, 1, 2, 3, 4])
    obj = torch.tensor([0, 0, 1, 1, 2])
    for solver in ("hungarian", "top1"):
        assert one_to_one(quality, loc, obj, 3, solver).tolist() == [1, 3, -1]
    everything_nan = torch.full((3,), nan)
    assert one_to_one(everything_nan, loc[:3], obj[:3], 2).tolist() == [-1, -1]


def test_a_run_failure_raised_in_a_worker_keeps_its_one_line():
    """torch re-raises a DataLoader worker's exception as type(exc)(its whole traceback)."""
    from pss.data.coco import ImageFailed

    wrapped = (
        "Caught ImageFailed in DataLoader worker process 1.\nOriginal Traceback (most recent "
        'call last):\n  File "x.py", line 3, in f\n    raise ImageFailed(...)\n'
        "pss.data.coco.ImageFailed: /data/t1.png: cannot read the image mid-run (truncated)\n"
    )
    assert str(ImageFailed(wrapped)) == "/data/t1.png: cannot read the image mid-run (truncated)"
    assert str(RunFailed("one line")) == "one line"
