"""python -m pss.sweep.calibrate (issue 26): measured step times beside a profile, the dry-run's
``measured`` estimates, and those estimates against what a CPU smoke sweep spent."""

from __future__ import annotations

import json

import pytest

from pss.sweep import calibration
from pss.sweep.calibrate import main as calibrate
from pss.sweep.driver import main as sweep
from pss.testing import REPO
from pss.testing.configs import tiny_train_overrides, write_spec, write_tiny_overlay
from pss.tracking.logger import search_runs

# Two shapes (a PSS head evaluated in three modes, a plain FCOS in two), a schedule long
# enough that the per-epoch costs and the evaluations both count, logging as the smoke
# overlay does (every 20 steps: at each epoch's end here).
SPEC = """
name: cal
base: @EXP@/fcos_pss_r50_3x.yaml
smoke: overlay.yaml
smoke_overrides: {train.epochs: 3, train.iters_per_epoch: 4, train.log_interval: 20}
cells:
  - id: pss
  - id: fcos
    overrides: {model.name: fcos}
table:
  title: PSS and its cost
  rows: [{key: cell, header: Cell}]
  columns: [{columns: [{metric: "mAP_{mode}", label: mAP}, {metric: gpu_hours, label: GPU-h}]}]
"""
# One thread a job: on a CPU the cost is the process's CPU time (cost_clock), which
# threads spinning on a loaded machine would inflate; one thread's does not move.
PROFILE = "array_parallelism: 1\ncpus_per_task: 1\n"


@pytest.fixture
def smoke_sweep(tmp_path, monkeypatch, shapes_root):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    write_tiny_overlay(tmp_path / "overlay.yaml", shapes_root)
    (tmp_path / "cpu.yaml").write_text(PROFILE)
    return write_spec(tmp_path / "cal.yaml", SPEC), tmp_path / "cpu.yaml"


def test_the_estimate_after_calibration_is_within_25_percent_of_every_cell(smoke_sweep, capfd):
    spec, profile = smoke_sweep
    on = ["--smoke", "--cluster", str(profile)]
    assert calibrate([str(spec), *on, "--steps", "6", "--warmup", "2"]) == 0
    out, err = capfd.readouterr()
    path = profile.with_name("cpu.calibration.json")
    assert out.strip() == f"wrote 2 shapes to {path}"
    assert "timing 2 shapes" in err and "[2/2] fcos (shape " in err and "s/step" in err
    stored = calibration.read(profile)
    assert {c.name for c in stored.values()} == {"pss", "fcos"}
    assert all(c.batch == 4 and c.processes == 1 and c.steps == 6 for c in stored.values())
    assert all(c.eval_images == 6 and c.device.startswith("cpu:") for c in stored.values())

    assert sweep([str(spec), *on, "--dry-run", "--json"]) == 0
    estimate = {j["cell"]: j for j in json.loads(capfd.readouterr().out)}
    assert {j["cost_source"] for j in estimate.values()} == {"measured"}
    assert sweep([str(spec), *on, "--dry-run"]) == 0
    text = capfd.readouterr().out
    assert "(measured: 12 steps at " in text and "GPU-hours (measured) for the 2 of 2" in text

    assert sweep([str(spec), *on, "--executor", "local"]) == 0
    capfd.readouterr()
    runs = search_runs("cal-smoke")
    spent = {r.data.tags["pss.cell"]: r.data.metrics["gpu_hours"] for r in runs}
    ratios = {cell: spent[cell] / estimate[cell]["gpu_hours"] for cell in spent}
    print("spent / estimated per cell:", ratios)  # the figures, with -s
    assert set(ratios) == {"pss", "fcos"}
    assert all(0.75 <= r <= 1.25 for r in ratios.values()), ratios

    # status: spent against estimated, per cell and in total (a finished cell's estimate
    # is still the calibration's, not its own run's)
    assert sweep(["status", str(spec), *on]) == 0
    lines = capfd.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in lines[lines.index("") + 3 :]}
    assert set(rows) == {"pss", "fcos", "total"}
    assert all(row[-1] == "measured" and row[-2].endswith("%") for row in rows.values())
    total = sum(spent.values())
    assert float(rows["total"][2]) == pytest.approx(total, rel=0.01)

    # the report: GPU-hours as a column of its table, and its cost table (Markdown, LaTeX)
    out = spec.parent / "reports" / "out" / "cal-smoke"
    table = (out / "cal.md").read_text()
    assert "GPU-h" in table and f"{spent['pss']:.2f}" in table
    cost = (out / "cost.md").read_text()
    assert "| Total" in cost and "GPU-h estimated" in cost and f"with {profile}" in cost
    assert cost.count(" measured |") == 3 and (out / "cost.tex").is_file()
    assert "### Cost of cal (smoke): GPU-hours" in (out / "REPORT.md").read_text()


def test_a_config_is_one_shape_and_a_second_calibration_keeps_the_first(
    tmp_path, shapes_root, capsys
):
    profile = tmp_path / "cpu.yaml"
    profile.write_text(PROFILE)
    overrides = [*tiny_train_overrides(shapes_root, tmp_path / "o"), "model.backbone.weights=null"]
    sets = [a for o in overrides for a in ("--set", o)]
    config = str(REPO / "experiments" / "fcos_pss_r50_3x.yaml")
    few = ["--cluster", str(profile), "--steps", "1", "--warmup", "0", "--eval-images", "2"]
    assert calibrate([config, *sets, *few]) == 0
    assert calibrate([config, *sets, "--set", "model.name=fcos", *few]) == 0
    stored = calibration.read(profile)
    assert len(stored) == 2 and all(c.eval_images == 2 for c in stored.values())
    assert not (tmp_path / "o").exists()  # nothing of a run is written


@pytest.mark.parametrize(
    "make, argv, says",
    [
        (None, ["--cluster", "missing.yaml"], "missing.yaml: cannot read"),
        ("gpu: {name: V100, peak_tflops: {fp32: 15.7}, utilisation: 0.4}\n", [], "no CUDA device"),
        (PROFILE, ["--set", "model.nmae=x"], "model.nmae"),
        (PROFILE, ["--steps", "0"], "--steps must be at least 1"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, make, argv, says, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if make is not None:
        (tmp_path / "p.yaml").write_text(make)
    cluster = [] if "--cluster" in argv else ["--cluster", "p.yaml"]
    config = str(REPO / "experiments" / "fcos_pss_r50_3x.yaml")
    assert calibrate([config, *cluster, *argv]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and says in line, line
    assert not (tmp_path / "p.calibration.json").exists()


def test_a_damaged_calibration_file_is_named_and_left_alone(smoke_sweep, capsys):
    spec, profile = smoke_sweep
    damaged = profile.with_name("cpu.calibration.json")
    damaged.write_text('{"abc": {"sec_per_iter": 1}}')
    assert calibrate([str(spec), "--smoke", "--cluster", str(profile)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {damaged}: not a calibration file"), line
    assert sweep([str(spec), "--smoke", "--cluster", str(profile), "--dry-run"]) == 2
    assert f"error: {damaged}: not a calibration file" in capsys.readouterr().err
    assert damaged.read_text() == '{"abc": {"sec_per_iter": 1}}'
    damaged.unlink()
    assert calibrate([str(spec), "--smoke", "--set", "a=1", "--cluster", str(profile)]) == 2
    assert "--set applies to config files" in capsys.readouterr().err
