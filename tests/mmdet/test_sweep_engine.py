"""Table 5's smoke sweep (two cells of it) on mmdet's engine, with the local executor.

The sweep driver is killed (SIGKILL, with its job) once the first cell has saved an
epoch; started again, the sweep resumes that cell from mmengine's checkpoint in the
same MLflow run and trains the other. Then: one FINISHED run per cell under the
tracking contract, `status` shows them finished, a re-run submits nothing, the report
builds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from PIL import Image
from twins import REPO

from pss import contract
from pss.config import load_config
from pss.mmdet.config import build_model
from pss.mmdet.config import load_config as load_mmdet_config
from pss.mmdet.translate import mmdet_config
from pss.models import Detector
from pss.report import make_report
from pss.sweep.driver import main, plan
from pss.tracking.logger import client, search_runs

EXPERIMENT = "table5-smoke-mmdet"
MODES = ("e2e", "nms")
CELLS = ("fcos_pss-convs2", "atss_pss-convs2")


def two_cells_of_table5(folder, overlay) -> str:
    """sweeps/table5.yaml with the PSS heads of 2 convs only, on the tiny overlay."""
    spec = yaml.safe_load((REPO / "sweeps" / "table5.yaml").read_text())
    spec["base"] = str(REPO / "experiments" / "fcos_pss_r50_3x.yaml")
    spec["smoke"] = str(overlay)
    spec["smoke_overrides"] = {"eval.modes": list(MODES)}  # the table's two
    spec["grid"]["model.pss.num_convs"] = [2]
    spec["paper"] = [p for p in spec["paper"] if p["where"]["model.pss.num_convs"] == 2]
    path = folder / "table5.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return str(path)


@pytest.mark.parametrize("backbone", ["resnet18", "resnet18_half"])
@pytest.mark.parametrize("name", ["fcos", "atss", "fcos_pss", "atss_pss"])
def test_a_translated_smoke_config_builds_our_network(name, backbone):
    """mmdet's model of a translated config has our Detector's parameters, one for one."""
    smoke = [REPO / "experiments" / "fcos_pss_r50_3x.yaml", REPO / "experiments/smoke/overlay.yaml"]
    cfg = load_config(smoke, {"model.name": name, "model.backbone.name": backbone})
    model = build_model(load_mmdet_config(*mmdet_config(cfg, classes=["a", "b", "c"])))
    theirs = sum(p.numel() for p in model.parameters())
    ours = sum(p.numel() for p in Detector(cfg.model).parameters())
    assert theirs == ours
    pss_convs = getattr(model.bbox_head, "pss_convs", [])
    assert len(pss_convs) == (cfg.model.pss.num_convs if cfg.model.has_pss else 0)


def _saved_epoch_1(folder):
    """epoch_1.pth of the first job that saved it whole (mmengine's last_checkpoint names it
    once it is written), or None."""
    for pointer in folder.glob("*/*/last_checkpoint"):
        named = pointer.read_text().strip()
        if named.endswith("epoch_1.pth"):
            return pointer.parent / "epoch_1.pth"
    return None


def _steps(run_id: str, name: str) -> list[int]:
    return sorted(m.step for m in client().get_metric_history(run_id, name))


@pytest.mark.slow
def test_two_cells_of_table5_on_mmdet_resume_after_a_kill_and_report(
    tmp_path, monkeypatch, capsys, tiny_overlay
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    spec = two_cells_of_table5(tmp_path, tiny_overlay)
    argv = [spec, "--smoke", "--executor", "local", "--engine", "mmdet"]
    _, jobs = plan(spec, smoke=True, engine=contract.MMDET)
    assert sorted(j.cell for j in jobs) == sorted(CELLS)

    # The driver and its job killed at once, after the first epoch of the first cell.
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path}
    with (tmp_path / "driver.log").open("w") as log:
        driver = subprocess.Popen(
            [sys.executable, str(REPO / "sweeps" / "run.py"), *argv, "--no-report"],
            env=env,
            start_new_session=True,
            stdout=log,
            stderr=log,
        )
    try:
        deadline = time.monotonic() + 300
        saved = None
        while saved is None and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
            saved = _saved_epoch_1(tmp_path / "outputs" / "sweeps" / EXPERIMENT)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    assert saved is not None, (tmp_path / "driver.log").read_text()[-3000:]
    work = saved.parent
    assert not (work / "epoch_2.pth").exists()  # killed during epoch 2 (or its evaluation)
    killed_run = (work / "mlflow_run_id").read_text().strip()
    assert client().get_run(killed_run).info.status == contract.RUNNING

    # Started again: the killed cell resumes in its run, the other cell trains.
    assert main(argv) == 0
    runs = search_runs(EXPERIMENT)
    assert sorted(r.data.tags[contract.TAG_CELL] for r in runs) == sorted(CELLS)
    by_cell = {j.cell: j for j in jobs}
    for run in runs:
        job = by_cell[run.data.tags[contract.TAG_CELL]]
        assert run.info.status == contract.FINISHED and run.info.run_name == job.cell
        assert {k: run.data.tags[k] for k in job.tags("table5")} == job.tags("table5")
        assert run.data.tags[contract.TAG_ENGINE] == contract.MMDET
        assert contract.TAG_GIT_COMMIT in run.data.tags
        # The params of a torch run: our resolved config, flattened.
        assert set(run.data.params) == set(job.config.flat())
        assert run.data.params["model.name"] == job.config.model.name
        for mode in MODES:
            for name in contract.ACCURACY:
                key = contract.metric_name(name, mode)
                assert _steps(run.info.run_id, key) == [1, 2], key  # each epoch once
                assert 0.0 <= run.data.metrics[key] <= 100.0
        assert not any(k.endswith("_raw") for k in run.data.metrics)  # eval.modes
        timings = [contract.FORWARD_MS, *(contract.metric_name(contract.POSTPROCESS_MS, m)
                                          for m in MODES)]
        for key in timings:  # ms per image, with each evaluation, as our engine logs them
            assert _steps(run.info.run_id, key) == [1, 2] and run.data.metrics[key] > 0, key
        for name in ("loss", "loss_cls", "loss_box", "loss_ctr", "loss_pss", "loss_rank", "lr"):
            assert set(_steps(run.info.run_id, name)) == {1, 2, 3, 4}, name
        artifacts = {a.path for a in client().list_artifacts(run.info.run_id)}
        assert contract.CONFIG_ARTIFACT in artifacts
        assert contract.MODES_FIGURE in artifacts  # raw / nms / e2e, drawn by pss.mmdet.draw
    resumed = next(r for r in runs if r.info.run_id == killed_run)
    assert resumed.data.tags[contract.TAG_RESUMED_FROM_EPOCH] == "1"
    assert all(contract.TAG_RESUMED_FROM_EPOCH not in r.data.tags for r in runs if r != resumed)
    assert (work / "last_checkpoint").read_text().endswith("epoch_2.pth")

    # `status`, a re-run that submits nothing, and the report.
    capsys.readouterr()
    assert main(["status", spec, "--smoke", "--engine", "mmdet"]) == 0
    status = capsys.readouterr().out
    assert "2 finished" in status and all(cell in status for cell in CELLS)
    before = {r.info.run_id: (r.info.status, r.info.end_time) for r in search_runs(EXPERIMENT)}
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "0 to submit" in err and "| FCOS_PSS" in out and "| ATSS_PSS" in out
    after = {r.info.run_id: (r.info.status, r.info.end_time) for r in search_runs(EXPERIMENT)}
    assert after == before
    report = make_report(spec, smoke=True, out_dir=tmp_path / "report", engine=contract.MMDET)
    assert report.experiment == EXPERIMENT and report.path.is_file()
    assert contract.MODES_FIGURE in report.path.read_text()
    with Image.open(report.path.parent / contract.MODES_FIGURE) as picture:
        assert picture.width > 3 * 384 and picture.height > 3 * 384  # 3 modes x 3 images
    ours = [row for _, _, row in report.table.rows() if row.cell_id is not None]
    assert sorted(row.cell_id for row in ours) == sorted(CELLS)
    STATS = ("std", "n", "p")  # the CSV's columns beside each mean
    frame = report.table.frame.set_index("cell").loc[sorted(CELLS)]
    means = [c for c in frame.columns if c.startswith("mAP") and c.split()[-1] not in STATS]
    assert means and frame[means].notna().all().all()  # every cell has a mean of each mode
