"""Training engine: exact resume, two-step mode, MLflow contract, and bad input."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from mlflow.tracking import MlflowClient

import pss.engine.train as engine
from pss.config import load_config
from pss.engine.checkpoint import load_checkpoint, save_checkpoint
from pss.engine.evaluate import WARMUP_BATCHES, untimed_batches
from pss.engine.train import RunInfo, TrainingDiverged, train
from pss.errors import UserError
from pss.models import Detector
from pss.testing.checkpoints import assert_same_training_state
from pss.testing.configs import tiny_train_overrides
from pss.tracking.logger import search_runs


def cfg_for(shapes_root, out, *extra, name="fcos_pss"):
    return load_config([], [*tiny_train_overrides(shapes_root, out, name), *extra])


def test_resume_gives_exactly_the_uninterrupted_weights(shapes_root, tmp_path, tracking):
    straight = cfg_for(shapes_root, tmp_path / "straight")
    train(straight, run=RunInfo(experiment="resume"))
    parted = cfg_for(shapes_root, tmp_path / "parted")
    train(parted, run=RunInfo(experiment="resume"), stop_after_epoch=1)
    assert load_checkpoint(parted.run_dir / "last.pth")["epoch"] == 1
    train(parted, resume="auto", run=RunInfo(experiment="resume"))
    a = load_checkpoint(straight.run_dir / "last.pth")
    b = load_checkpoint(parted.run_dir / "last.pth")
    assert a["iteration"] == 4
    assert_same_training_state(a, b)
    # the resumed run continued the same MLflow run and finished it
    runs = search_runs("resume")
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"]
    # ... and logged exactly what the uninterrupted run logged: each step once, same values
    by_dir = {r.data.params["output_dir"]: r.info.run_id for r in runs}
    client = MlflowClient()
    for key in ("mAP_e2e", "mAR_nms", "loss", "loss_pss", "lr"):
        straight_h, parted_h = (
            [(m.step, m.value) for m in client.get_metric_history(by_dir[str(d)], key)]
            for d in (straight.output_dir, parted.output_dir)
        )
        steps = [1, 2] if key.startswith("mA") else [1, 2, 3, 4]
        assert [s for s, _ in parted_h] == steps, (key, parted_h)
        assert sorted(parted_h) == sorted(straight_h), key


def test_a_job_killed_while_evaluating_resumes_and_evaluates_that_epoch(
    shapes_root, tmp_path, tracking, monkeypatch
):
    cfg = cfg_for(shapes_root, tmp_path / "run")
    evaluate = engine._evaluate

    def killed_in_epoch_2(*args):  # (loop, epoch)
        if args[-1] == 2:
            raise KeyboardInterrupt  # what a preemption does mid-evaluation
        return evaluate(*args)

    monkeypatch.setattr(engine, "_evaluate", killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, run=RunInfo(experiment="killed"))
    assert load_checkpoint(cfg.run_dir / "last.pth")["epoch"] == 1  # epoch 2 not committed
    monkeypatch.setattr(engine, "_evaluate", evaluate)
    train(cfg, resume="auto", run=RunInfo(experiment="killed"))
    (run,) = search_runs("killed")
    history = MlflowClient().get_metric_history(run.info.run_id, "mAP_e2e")
    # epoch 2 evaluated once after the resume, epoch 1 not again: each step exactly once
    assert run.info.status == "FINISHED" and sorted(m.step for m in history) == [1, 2]
    # Epoch 2's iterations (3, 4) ran again after the resume and were logged again, with
    # the values of their first run (the resume is exact).
    losses = MlflowClient().get_metric_history(run.info.run_id, "loss")
    assert sorted(m.step for m in losses) == [1, 2, 3, 3, 4, 4]
    assert len({(m.step, m.value) for m in losses}) == 4


def test_mlflow_contract(shapes_root, tmp_path, tracking):
    cfg = cfg_for(shapes_root, tmp_path / "run")
    tags = {"pss.sweep": "t", "pss.cell": "c", "pss.stage": "none"}
    metrics = train(cfg, run=RunInfo(experiment="contract", run_name="c", tags=tags))
    (run,) = search_runs("contract")
    assert run.info.run_name == "c" and run.info.status == "FINISHED"
    t = run.data.tags
    assert t["pss.fingerprint"] == cfg.fingerprint() and t["pss.seed"] == "0"
    assert t["pss.sweep"] == "t" and t["pss.cell"] == "c" and len(t["pss.git_commit"]) >= 7
    assert t["pss.git_dirty"] in ("true", "false")
    assert t["pss.threads"] == str(torch.get_num_threads()) and t["pss.engine"] == "torch"
    assert run.data.params["model.pss.num_convs"] == "2"
    assert len(run.data.params) == len(cfg.flat())
    for mode in ("e2e", "nms", "raw"):
        for name in ("mAP", "mAR", "AP50", "AP75", "APs", "APm", "APl"):
            assert f"{name}_{mode}" in run.data.metrics
    for key in ("forward_ms", "postprocess_ms_e2e", "postprocess_ms_nms", "loss", "loss_pss"):
        assert key in run.data.metrics
    for key in ("forward_ms", "postprocess_ms_e2e", "postprocess_ms_nms"):  # timed
        assert run.data.metrics[key] > 0, key
    assert metrics["mAP_e2e"] == run.data.metrics["mAP_e2e"]
    client = MlflowClient()
    assert [m.step for m in client.get_metric_history(run.info.run_id, "mAP_e2e")] == [1, 2]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3, 4]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "eval"} <= artifacts
    evals = {a.path for a in client.list_artifacts(run.info.run_id, "eval")}
    assert {"eval/metrics.json", "eval/detections_e2e.json", "eval/detections_nms.json"} <= evals


def test_two_step_trains_only_the_pss_head(shapes_root, tmp_path, tracking):
    stage1 = cfg_for(shapes_root, tmp_path / "s1", "train.epochs=1", name="fcos")
    train(stage1, run=RunInfo(experiment="twostep"))
    ckpt = stage1.run_dir / "last.pth"
    stage2 = cfg_for(
        shapes_root, tmp_path / "s2", "train.epochs=1", f"train.init_from={ckpt}",
        "train.trainable=pss",
    )
    train(stage2, run=RunInfo(experiment="twostep"))
    before = load_checkpoint(ckpt)["model"]
    after = load_checkpoint(stage2.run_dir / "last.pth")["model"]
    changed = {k for k in after if k in before and not torch.equal(before[k], after[k])}
    assert not changed, f"frozen weights moved: {sorted(changed)[:3]}"
    # The PSS head (absent from stage 1) trained: every one of its parameters left the
    # value it was initialised with (the same seed, the same model), and the optimizer
    # holds exactly its parameters, each with a non-zero momentum.
    torch.manual_seed(stage2.train.seed)
    fresh = Detector(stage2.model)
    init = {k: v.clone() for k, v in fresh.state_dict().items()}
    pss = [n for n, _ in fresh.named_parameters() if n.startswith("head.pss.")]
    assert pss and not set(pss) & set(before)
    unmoved = [k for k in pss if torch.equal(init[k], after[k])]
    assert not unmoved, f"PSS head parameters that did not train: {unmoved}"
    state = load_checkpoint(stage2.run_dir / "last.pth")["optimizer"]["state"]
    assert len(state) == len(pss)
    assert all(s["momentum_buffer"].abs().sum() > 0 for s in state.values())


def test_non_finite_loss_stops_with_a_clear_error(shapes_root, tmp_path, tracking, monkeypatch):
    cfg = cfg_for(shapes_root, tmp_path / "nan")
    original = Detector.losses

    def poisoned(self, out, targets):
        losses = original(self, out, targets)
        losses["loss"] = losses["loss"] * float("nan")
        return losses

    monkeypatch.setattr(Detector, "losses", poisoned)
    with pytest.raises(TrainingDiverged, match=r"iteration 0 \(epoch 1, .*non-finite loss"):
        train(cfg, run=RunInfo(experiment="nan"))
    (run,) = search_runs("nan")
    assert run.info.status == "FAILED"
    artifacts = [a.path for a in MlflowClient().list_artifacts(run.info.run_id)]
    assert "traceback.txt" in artifacts
    assert not (cfg.run_dir / "last.pth").exists()


def test_non_finite_gradients_stop_before_the_step(shapes_root, tmp_path, tracking, monkeypatch):
    """A finite loss whose gradients are not (a NaN through one weight's gradient hook):
    no optimizer step is taken with them, and the message says gradients."""
    cfg = cfg_for(shapes_root, tmp_path / "nan-grad")
    original = Detector.losses

    def poisoned(self, out, targets):
        weight = next(self.head.parameters())
        weight.register_hook(lambda grad: grad * float("nan"))
        return original(self, out, targets)

    monkeypatch.setattr(Detector, "losses", poisoned)
    with pytest.raises(TrainingDiverged, match=r"iteration 0 \(epoch 1, .*non-finite gradients"):
        train(cfg, run=RunInfo(experiment="nan-grad"))
    (run,) = search_runs("nan-grad")
    assert run.info.status == "FAILED"
    assert not (cfg.run_dir / "last.pth").exists()


def no_runs(experiment: str) -> bool:
    return search_runs(experiment) == []


def test_missing_image_file_fails_fast_and_logs_nothing(shapes_root, tmp_path, tracking):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(shapes_root, root)
    victim = sorted((root / "val").iterdir())[0]
    victim.unlink()
    cfg = cfg_for(root, tmp_path / "out")
    with pytest.raises(UserError, match=victim.name):
        train(cfg, run=RunInfo(experiment="badimage"))
    assert no_runs("badimage")


def test_wrong_num_classes_is_a_user_error(shapes_root, tmp_path, tracking):
    cfg = cfg_for(shapes_root, tmp_path / "out", "model.num_classes=5")
    with pytest.raises(UserError, match="num_classes=5 but the dataset has 3"):
        train(cfg, run=RunInfo(experiment="classes"))
    assert no_runs("classes")


def test_bad_checkpoints_fail_fast_and_are_not_clobbered(shapes_root, tmp_path, tracking):
    cfg = cfg_for(shapes_root, tmp_path / "out")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(UserError, match="garbage.pth.*cannot read checkpoint"):
        train(cfg, resume=garbage, run=RunInfo(experiment="badckpt"))
    # a checkpoint of another config: refused, and left as it was
    other = tmp_path / "other.pth"
    save_checkpoint(other, {"model": {}, "epoch": 1, "iteration": 1, "fingerprint": "abc"})
    before = other.read_bytes()
    with pytest.raises(UserError, match="another config"):
        train(cfg, resume=other, run=RunInfo(experiment="badckpt"))
    assert other.read_bytes() == before
    # a stage-1 checkpoint whose weights do not fit the model
    big = cfg_for(shapes_root, tmp_path / "o2", "model.head.channels=64", name="fcos")
    save_checkpoint(
        tmp_path / "big.pth",
        {"model": Detector(big.model).state_dict(), "epoch": 1, "iteration": 1,
         "fingerprint": big.fingerprint()},
    )
    mismatched = cfg_for(
        shapes_root, tmp_path / "o3", f"train.init_from={tmp_path / 'big.pth'}"
    )
    with pytest.raises(UserError, match="big.pth.*shape mismatch"):
        train(mismatched, run=RunInfo(experiment="badckpt"))
    assert no_runs("badckpt")


def test_cli_reports_bad_config_with_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  pss:\n    num_conv: 3\n")
    out = subprocess.run(
        [sys.executable, "-m", "pss.train", str(bad)], capture_output=True, text=True
    )
    assert out.returncode == 2
    assert "bad.yaml" in out.stderr and "did you mean 'model.pss.num_convs'" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_loader_of_few_batches_is_timed_from_its_first():
    assert untimed_batches(range(WARMUP_BATCHES + 1)) == WARMUP_BATCHES
    assert untimed_batches(range(WARMUP_BATCHES)) == 0  # else nothing would be timed
