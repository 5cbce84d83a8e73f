"""pss.mmdet.train: the smoke config on mmengine's Runner, tracked in MLflow, resumed."""

from __future__ import annotations

import json
import math

import pytest
from mlflow.tracking import MlflowClient
from twins import CONFIGS, REPO

from pss import contract
from pss.config import fingerprint
from pss.config import load_config as load_ours
from pss.engine.lifecycle import RunInfo
from pss.errors import UserError
from pss.mmdet.config import build_model, load_config
from pss.mmdet.heads import inference_mode
from pss.mmdet.train import RUN_ID_FILE, ModesValLoop, flat_config, train
from pss.mmdet.translate import mmdet_config

FILES = [CONFIGS / "fcos_pss_r50_3x.py", CONFIGS / "smoke" / "overlay.py"]
# The tiny shapes set of tests/conftest.py (there already: nothing to generate), 16
# training images, 4 iterations of 4 per epoch.
TINY = {
    "pss_synthetic": None,
    "train_cfg.max_epochs": 2,
    "train_cfg.val_interval": 1,
    "train_dataloader.batch_size": 4,
    "train_dataloader.dataset.indices": None,
    "param_scheduler": [
        {"type": "LinearLR", "start_factor": 1 / 3, "by_epoch": False, "begin": 0, "end": 2}
    ],
}


def _history(mlflow: MlflowClient, run_id: str, name: str) -> list[int]:
    return sorted(m.step for m in mlflow.get_metric_history(run_id, name))


@pytest.mark.slow
def test_smoke_cell_logs_the_contract_and_resumes(shapes_root, tracking, tmp_path):
    work = tmp_path / "work"
    run = RunInfo(
        experiment="mmdet-smoke",
        run_name="fcos_pss",
        tags={contract.TAG_SWEEP: "t", contract.TAG_CELL: "fcos_pss"},
    )
    common = {"work_dir": work, "run": run, "data_root": shapes_root, "log_interval": 1}
    first = train(FILES, TINY, stop_after_epoch=1, **common)
    mlflow = MlflowClient()
    run_id = (work / RUN_ID_FILE).read_text()
    assert mlflow.get_run(run_id).info.status == "KILLED"
    per_mode = (*contract.ACCURACY, contract.POSTPROCESS_MS)
    assert set(first) == {
        contract.metric_name(m, mode) for m in per_mode for mode in contract.MODES
    } | {contract.FORWARD_MS}
    # The job starts again: it resumes from epoch 1's checkpoint, in the same run.
    last = train(FILES, TINY, **common)
    got = mlflow.get_run(run_id)
    assert got.info.status == "FINISHED" and got.info.run_name == "fcos_pss"
    assert len(mlflow.search_runs([got.info.experiment_id])) == 1
    tags = got.data.tags
    assert tags[contract.TAG_FINGERPRINT] == fingerprint(flat_config(load_config(FILES, TINY)))
    assert tags[contract.TAG_SEED] == "0" and tags[contract.TAG_ENGINE] == contract.MMDET
    assert tags[contract.TAG_CELL] == "fcos_pss" and contract.TAG_GIT_COMMIT in tags
    assert tags[contract.TAG_RESUMED_FROM_EPOCH] == "1"
    params = got.data.params
    assert params["model.bbox_head.type"] == "FCOSPSSHead"
    assert params["train_cfg.max_epochs"] == "2"
    for mode in contract.MODES:
        for name in contract.ACCURACY:
            key = contract.metric_name(name, mode)
            assert _history(mlflow, run_id, key) == [1, 2], key
            assert 0.0 <= last[key] <= 100.0
    for key in (contract.FORWARD_MS, *(contract.metric_name(contract.POSTPROCESS_MS, m)
                                        for m in contract.MODES)):
        assert _history(mlflow, run_id, key) == [1, 2] and last[key] > 0, key
    for name in ("loss", "loss_cls", "loss_box", "loss_ctr", "loss_pss", "loss_rank", "lr"):
        assert _history(mlflow, run_id, name) == list(range(1, 9)), name
    # each epoch's cost, as our engine logs it; gpu_hours added up across the resume
    for name in (contract.SEC_PER_ITER, contract.IMAGES_PER_SEC, contract.GPU_HOURS):
        assert _history(mlflow, run_id, name) == [1, 2], name
    spent = sorted(mlflow.get_metric_history(run_id, contract.GPU_HOURS), key=lambda m: m.step)
    assert 0 < spent[0].value < spent[1].value < 2 * 3 * spent[0].value
    (spi,) = mlflow.get_metric_history(run_id, contract.SEC_PER_ITER)[:1]
    (ips,) = mlflow.get_metric_history(run_id, contract.IMAGES_PER_SEC)[:1]
    assert spi.value * ips.value == pytest.approx(4, rel=1e-6)  # 4 images a step
    artifacts = {a.path for a in mlflow.list_artifacts(run_id)}
    assert contract.MODES_FIGURE in artifacts and (work / contract.MODES_FIGURE).is_file()
    assert sorted(p.name for p in work.glob("epoch_*.pth")) == ["epoch_1.pth", "epoch_2.pth"]
    # The same work dir with another config is refused, and the run is left as it was.
    with pytest.raises(UserError, match="another config"):
        train(FILES, {**TINY, "train_cfg.max_epochs": 3}, **common)
    assert mlflow.get_run(run_id).info.status == "FINISHED"


@pytest.mark.slow
def test_condinst_pss_cell_trains_and_logs_box_and_mask_metrics(
    shapes_root, tracking, tiny_overlay, tmp_path
):
    """A CondInst_PSS cell as a sweep trains it on mmdet (its config translated): masks
    loaded, mask AP beside box AP in every mode, as our engine names them."""
    cfg = load_ours(
        [REPO / "experiments" / "condinst_pss_r50_3x.yaml", tiny_overlay],
        ["train.epochs=1", "model.backbone.weights=null"],
    )
    files, options = mmdet_config(cfg, classes=["circle", "square", "triangle"])
    run = RunInfo(experiment="mmdet-condinst", run_name="condinst_pss")
    metrics = train(files, options, work_dir=tmp_path / "work", run=run, data_root=shapes_root)
    per_mode = (*contract.ACCURACY, contract.POSTPROCESS_MS)
    per_mode += tuple(contract.segm_name(m) for m in contract.ACCURACY)
    assert set(metrics) == {
        contract.metric_name(m, mode) for m in per_mode for mode in contract.MODES
    } | {contract.FORWARD_MS}
    assert all(0.0 <= v <= 100.0 for k, v in metrics.items() if "_ms" not in k)
    params = MlflowClient().get_run((tmp_path / "work" / RUN_ID_FILE).read_text()).data.params
    assert params["model.bbox_head.type"] == "CondInstPSSHead"
    assert params["model.mask_head.type"] == "CondInstMaskHead"


def test_missing_data_fails_before_any_run(tracking, tmp_path):
    with pytest.raises(UserError, match="annotation file not found"):
        train(FILES, TINY, work_dir=tmp_path / "w", data_root=tmp_path / "nowhere")
    assert MlflowClient().search_experiments(filter_string="name = 'pss'") == []


@pytest.mark.slow
def test_an_epoch_saved_but_not_evaluated_is_evaluated_on_resume(
    shapes_root, tracking, tmp_path, monkeypatch
):
    """mmengine saves an epoch's checkpoint before it evaluates: a job killed in between
    evaluates that epoch when it starts again, so no evaluation goes missing."""
    evaluate = ModesValLoop.run
    calls = []

    def killed_the_first_time(loop):
        calls.append(1)
        if len(calls) == 1:
            raise SystemExit("killed during the evaluation")
        return evaluate(loop)

    monkeypatch.setattr(ModesValLoop, "run", killed_the_first_time)
    one_epoch = {**TINY, "train_cfg.max_epochs": 1}
    common = {"work_dir": tmp_path / "work", "data_root": shapes_root, "log_interval": 1}
    with pytest.raises(SystemExit):
        train(FILES, one_epoch, **common)
    mlflow = MlflowClient()
    run_id = (tmp_path / "work" / RUN_ID_FILE).read_text()
    assert mlflow.get_run(run_id).info.status == "KILLED"
    assert (tmp_path / "work" / "epoch_1.pth").is_file()
    mAP_nms = contract.metric_name(contract.MAP, "nms")
    assert _history(mlflow, run_id, mAP_nms) == []
    metrics = train(FILES, one_epoch, **common)
    assert mlflow.get_run(run_id).info.status == "FINISHED"
    assert _history(mlflow, run_id, mAP_nms) == [1] and mAP_nms in metrics
    assert len(calls) == 2


def test_inference_mode_sets_a_pss_heads_mode_and_puts_it_back():
    cfg = load_config(FILES)
    del cfg.model.test_cfg["mode"]  # a PSS config that names no mode
    model = build_model(cfg)
    for mode in contract.MODES:
        with inference_mode(model, mode):
            assert model.bbox_head.test_cfg["mode"] == mode
        assert "mode" not in model.bbox_head.test_cfg
    baseline = build_model(load_config([CONFIGS / "fcos_r50_3x.py", FILES[1]]))
    with inference_mode(baseline, "nms"):
        assert "mode" not in baseline.bbox_head.test_cfg  # mmdet's own NMS prediction
    with (
        pytest.raises(UserError, match="does not predict in mode 'e2e'"),
        inference_mode(baseline, "e2e"),
    ):
        pass


@pytest.mark.slow
def test_boxes_without_area_evaluate(shapes_root, tracking, tmp_path):
    """Many converters leave COCO's 'area' out. mmdet's CocoDataset (at loading) and its
    CocoMetric (at the first evaluation, after an epoch) read it and used to fail with
    KeyError: 'area'; as on our engine, an object's area is its box's when absent."""
    root = tmp_path / "data"
    (root / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        (root / split).symlink_to(shapes_root / split)
        data = json.loads((shapes_root / "annotations" / f"{split}.json").read_text())
        for ann in data["annotations"]:
            del ann["area"]
        (root / "annotations" / f"{split}.json").write_text(json.dumps(data))
    tiny = {**TINY, "train_cfg.max_epochs": 1}
    metrics = train(FILES, tiny, work_dir=tmp_path / "work", data_root=root)
    assert all(math.isfinite(v) for v in metrics.values())
    assert metrics[contract.metric_name("mAP", "nms")] >= 0
