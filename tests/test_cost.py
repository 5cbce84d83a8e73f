"""What a sweep costs (issue 26): runs log their cost, the estimates of pss.sweep.cost
(learned, derived from FLOPs, unknown), the dry-run's figures and --budget."""

from __future__ import annotations

import json

import pytest
import torch
from mlflow.tracking import MlflowClient

from pss.config import load_config
from pss.engine.train import RunInfo, train
from pss.sweep import budget, cost
from pss.sweep.driver import main
from pss.testing import REPO
from pss.testing.configs import (
    small_config,
    tiny_train_overrides,
    write_spec,
    write_tiny_overlay,
)
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
    # on a CPU, the process's CPU time (training and evaluation): all of the run's wall
    # time on every thread at most
    wall_h = (run.info.end_time - run.info.start_time) / 3.6e6
    assert 0 < hours[-1] <= wall_h * torch.get_num_threads()


# ------------------------------------------------------------- the cost model's parts


def test_units_of_the_pure_functions():
    # 3.6e15 FLOPs at 100% of 1 TFLOP/s: 3,600 s, one GPU-hour
    assert cost.derived_hours(3.0e15, 0.6e15, 1.0, 1.0) == pytest.approx(1.0)
    assert cost.derived_hours(3.6e15, 0.0, 2.0, 0.5) == pytest.approx(1.0)
    # longest first onto the earliest free slot; hours per job over its GPUs
    assert cost.wall_hours([8, 8, 8], gpus_per_job=8, parallel=2) == pytest.approx(2.0)
    assert cost.wall_hours([16, 8, 8], gpus_per_job=8, parallel=16) == pytest.approx(2.0)
    assert cost.wall_hours([], 8, 4) == 0.0
    # days where they help: not "0.0601 h (0.0 days)" for a smoke sweep
    assert budget.wall_text(0.0601) == "0.0601 h"
    assert budget.wall_text(22.3) == "22.3 h (0.9 days)"


def test_sizes_steps_and_evaluations_of_a_paper_config():
    cfg = load_config([REPO / "experiments" / "fcos_pss_r50_3x.yaml"], {})
    assert cost.image_size(cfg, train=True) == (640, 864)  # mean of 480-800, 4:3, /32
    assert cost.image_size(cfg, train=False) == (800, 1088)
    assert cost.images(cfg, "train") == 118_287 and cost.images(cfg, "val") == 5_000
    assert cost.steps(cfg, 118_287) == 118_287 // 16 * 36
    assert cost.evaluations(cfg) == 36
    every5 = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"interval": 5})})
    assert cost.evaluations(every5) == 8  # 5, 10, ..., 35 and 36


def test_unknown_dataset_size_is_not_guessed(tmp_path):
    big = tmp_path / "annotations" / "mine.json"
    big.parent.mkdir()
    big.write_bytes(b" " * (cost.MAX_READ_BYTES + 1))
    mine = {"data.root": str(tmp_path), "data.train_annotations": "annotations/mine.json"}
    cfg = load_config([], mine)
    assert cost.images(cfg, "train") is None
    big.write_text('{"images": [{"id": 1}, {"id": 2}]}')
    assert cost.images(cfg, "train") == 2


def test_flops_are_counted_on_the_meta_device_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cfg = small_config("fcos_pss")
    forward = cost.flops_per_image(cfg, 128, 128, backward=False)
    step = cost.flops_per_image(cfg, 128, 128, backward=True)
    # a backward pass costs about two forwards (less for the frozen stem: no input grads)
    assert forward > 1e8 and 2 * forward < step < 3.5 * forward
    assert cost.flops_per_image(small_config("fcos"), 128, 128, backward=False) < forward
    two_step = cfg.model_copy(update={"train": cfg.train.model_copy(update={"trainable": "pss"})})
    assert forward < cost.flops_per_image(two_step, 128, 128, backward=True) < step
    assert len(list((tmp_path / "pss" / "flops").glob("*.json"))) == 4
    assert cost.flops_per_image(cfg, 128, 128, backward=True) == step  # read back


# ------------------------------------------------------------- the dry-run and --budget


def test_table1_on_the_v100_profile_is_derived_for_every_job(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    table1, v100 = str(REPO / "sweeps" / "table1.yaml"), str(REPO / "slurm" / "v100x8.yaml")
    assert main([table1, "--dry-run", "--json", "--cluster", v100]) == 0
    jobs = json.loads(capsys.readouterr().out)
    assert len(jobs) == 10 and {j["cost_source"] for j in jobs} == {"derived"}
    assert all(50 < j["gpu_hours"] < 500 for j in jobs)  # a 3x schedule on COCO
    assert main([table1, "--dry-run", "--cluster", v100]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    total = sum(j["gpu_hours"] for j in jobs)
    assert last.startswith(f"estimate: {total:,.0f} GPU-hours (derived) for the 10 of 10 jobs")
    assert f"at {v100}: 8 GPUs a job, 16 jobs at once" in last
    # without a profile that declares its GPU: unknown, not a guess
    assert main([table1, "--dry-run", "--json"]) == 0
    assert {(j["gpu_hours"], j["cost_source"]) for j in json.loads(capsys.readouterr().out)} == {
        (None, "unknown")
    }
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "mlflow.db").exists()


def test_budget_refuses_a_sweep_over_it_or_of_unknown_cost(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    table1, v100 = str(REPO / "sweeps" / "table1.yaml"), str(REPO / "slurm" / "v100x8.yaml")
    assert main([table1, "--dry-run", "--cluster", v100, "--budget", "1e6"]) == 0
    capsys.readouterr()
    for dry in (["--dry-run"], ["--executor", "local", "--no-wait"]):
        assert main([table1, *dry, "--cluster", v100, "--budget", "100"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {table1}: estimated ")
        assert "for the 10 jobs to run, over the budget of 100 GPU-hours (--budget)" in err[0]
    assert main([table1, "--dry-run", "--budget", "100"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "10 of the 10 jobs to run have no estimate (r50-fcos/s0, r50-atss/s0," in line
    assert "and 5 more" in line
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "mlflow.db").exists()


def test_a_bad_gpu_in_a_profile_is_one_line(capsys, tmp_path):
    profile = tmp_path / "p.yaml"
    for body, says in [
        ("gpu: {name: X, peak_tflops: {fp32: 10}, utilisation: 1.5}", "gpu.utilisation"),
        ("gpu: {name: X, peak_tflops: {fp16: 10}, utilisation: 0.5}", "has no fp32"),
        ("gpu: {name: X, peak_tflops: {fp32: 10}, utilization: 0.5}", "did you mean 'utilisation'"),
    ]:
        profile.write_text(body)
        table1 = str(REPO / "sweeps" / "table1.yaml")
        assert main([table1, "--dry-run", "--cluster", str(profile)]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith(f"error: {profile}: ") and says in line, line


# ------------------------------------------------------------- learned from a finished run

LEARN = """
name: learn
base: @EXP@/fcos_pss_r50_3x.yaml
smoke: overlay.yaml
seeds: SEEDS
cells:
  - id: pss
"""


def test_another_seed_is_learned_from_a_finished_run(tmp_path, monkeypatch, capsys, shapes_root):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    write_tiny_overlay(tmp_path / "overlay.yaml", shapes_root)
    spec = write_spec(tmp_path / "learn.yaml", LEARN.replace("SEEDS", "[0]"))
    argv = [str(spec), "--smoke", "--executor", "local", "--no-report"]
    assert main(argv) == 0
    (run,) = search_runs("learn-smoke")
    spent = run.data.metrics["gpu_hours"]
    write_spec(tmp_path / "learn.yaml", LEARN.replace("SEEDS", "[0, 1]"))
    capsys.readouterr()
    assert main([str(spec), "--smoke", "--dry-run", "--json"]) == 0
    by_seed = {j["seed"]: j for j in json.loads(capsys.readouterr().out)}
    assert by_seed[1]["cost_source"] == "learned" and by_seed[1]["gpu_hours"] == spent
    assert main([str(spec), "--smoke", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "(learned: mean of 1 finished runs)" in out and "[finished]" in out
    assert "for the 1 of 2 jobs still to run" in out and "2 CPU cores a job" in out
    assert main([*argv, "--budget", f"{spent / 2}"]) == 2  # over: nothing runs
    assert "over the budget" in capsys.readouterr().err
    assert len(search_runs("learn-smoke")) == 1
