"""The picture of what PSS removes: a trained PSS run draws raw / nms / e2e on validation
images (modes.png, in its folder and its MLflow artifacts), and a sweep report copies the
first reported PSS cell's picture and embeds it in REPORT.md."""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient
from PIL import Image

from pss import contract
from pss.config import load_config
from pss.deploy.draw import MIN_SIDE
from pss.engine.train import RunInfo, train
from pss.report import make_report
from pss.sweep.schema import load_spec
from pss.testing import REPO
from pss.testing.configs import tiny_train_overrides
from pss.testing.mlflow_runs import seed_runs, synthetic_runs
from pss.tracking.store import current_uri

TABLE5 = REPO / "sweeps" / "table5.yaml"


def test_pss_run_draws_raw_nms_e2e_on_validation_images(shapes_root, tracking, tmp_path):
    cfg = load_config([], tiny_train_overrides(shapes_root, tmp_path / "run"))
    train(cfg, run=RunInfo(experiment="modes"))
    picture = tmp_path / "run" / contract.MODES_FIGURE
    with Image.open(picture) as image:
        # three columns (raw, nms, e2e) of images enlarged to MIN_SIDE, one row per image
        assert image.width >= 3 * MIN_SIDE and image.height >= MIN_SIDE
    client = MlflowClient(current_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("modes").experiment_id])
    assert contract.MODES_FIGURE in [a.path for a in client.list_artifacts(run.info.run_id)]


def test_baseline_run_draws_no_picture(shapes_root, tracking, tmp_path):
    cfg = load_config([], tiny_train_overrides(shapes_root, tmp_path / "run", name="fcos"))
    train(cfg, run=RunInfo(experiment="modes-baseline"))
    assert not (tmp_path / "run" / contract.MODES_FIGURE).exists()


def test_report_embeds_the_first_pss_cells_picture(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri)
    loaded = load_spec(TABLE5)
    ids = seed_runs(client, "table5", synthetic_runs(loaded), tmp_path / "art")
    runs = {client.get_run(i).info.run_name: i for i in ids}
    png = tmp_path / contract.MODES_FIGURE
    Image.new("RGB", (30, 10), (200, 0, 0)).save(png)
    client.log_artifact(runs["atss_pss-convs2"], str(png))  # not the first cell: has one
    report = make_report(TABLE5, out_dir=tmp_path / "out")
    copied = tmp_path / "out" / contract.MODES_FIGURE
    assert copied.read_bytes() == png.read_bytes() and copied in report.files
    text = report.path.read_text()
    assert f"![raw / nms / e2e detections]({contract.MODES_FIGURE})" in text
    assert "Cell `atss_pss-convs2`" in text


def test_report_without_a_picture_has_no_section(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    loaded = load_spec(TABLE5)
    seed_runs(MlflowClient(uri), "table5", synthetic_runs(loaded), tmp_path / "art")
    report = make_report(TABLE5, out_dir=tmp_path / "out")
    assert "What PSS removes" not in report.path.read_text()
    assert not (tmp_path / "out" / contract.MODES_FIGURE).exists()
    assert not list(Path(tmp_path / "out").glob("*.tmp"))
