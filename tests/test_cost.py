"""What a sweep costs (issue 26): runs log their cost, the estimates of pss.sweep.cost
(learned, derived from FLOPs, unknown), the dry-run's figures and --budget."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from pss.config import load_config
from pss.engine.train import RunInfo, train
from pss.testing.configs import tiny_train_overrides
from pss.tracking.logger import search_runs

# ------------------------------------------------------------- runs log their cost


def test_each_epoch_logs_sec_per_iter_images_per_sec_and_gpu_hours(
    shapes_root, tmp_path, tracking
):
    cfg = load_config([], tiny_train_overrides(shapes_root, tmp_path / "run", "fcos_pss"))
    train(cfg, run=RunInfo(experiment="cost", run_name="c"))
    (run,) = search_runs("cost")
    history = {
        key: MlflowClient().get_metric_history(run.info.run_id, key)
        for key in ("sec_per_iter", "images_per_sec", "gpu_hours")
    }
    epochs = list(range(1, cfg.train.epochs + 1))
    assert all([m.step for m in h] == epochs for h in history.values())
    assert all(m.value > 0 for h in history.values() for m in h)
    hours = [m.value for m in history["gpu_hours"]]
    assert hours == sorted(hours) and hours[0] < hours[-1]  # it adds up over the epochs
    # one process: a step's seconds and the images a second say the same thing
    spi, ips = history["sec_per_iter"][-1].value, history["images_per_sec"][-1].value
    assert spi * ips == pytest.approx(cfg.train.batch_size, rel=1e-6)
    # training and evaluation together, all of the run's wall time at most
    wall_h = (run.info.end_time - run.info.start_time) / 3.6e6
    assert spi * 2 / 3600 < hours[-1] <= wall_h
