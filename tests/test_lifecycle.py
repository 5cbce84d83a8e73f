"""pss.engine.lifecycle: a run opened, tagged, refused and ended as both engines do it."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from pss import contract
from pss.config import fingerprint, load_config
from pss.engine.lifecycle import (
    Opening,
    RunInfo,
    StopTraining,
    evaluation_due,
    open_run,
)
from pss.errors import UserError
from pss.tracking.logger import Tracker

FP = "f" * 12


def opening(fingerprint: str = FP, **resume) -> Opening:
    return Opening(
        name="cell",
        fingerprint=fingerprint,
        seed=3,
        engine=contract.TORCH,
        params={"model.name": "fcos_pss"},
        texts={contract.CONFIG_ARTIFACT: "model:\n  name: fcos_pss\n"},
        **resume,
    )


def test_a_run_is_created_tagged_and_finished(tracking):
    opened_ids: list[str] = []
    run = RunInfo("life-ok", tags={contract.TAG_CELL: "c"}, on_open=opened_ids.append)
    with open_run(run, opening()) as opened:
        opened.resumed_from(2)
    (run_id,) = opened_ids
    got = MlflowClient().get_run(run_id)
    assert got.info.status == contract.FINISHED and got.info.run_name == "cell"
    tags = got.data.tags
    assert tags[contract.TAG_FINGERPRINT] == FP and tags[contract.TAG_SEED] == "3"
    assert tags[contract.TAG_ENGINE] == contract.TORCH and tags[contract.TAG_CELL] == "c"
    assert tags[contract.TAG_RESUMED_FROM_EPOCH] == "2" and contract.TAG_GIT_COMMIT in tags
    assert got.data.params == {"model.name": "fcos_pss"}
    artifacts = [a.path for a in MlflowClient().list_artifacts(run_id)]
    assert artifacts == [contract.CONFIG_ARTIFACT]


@pytest.mark.parametrize(
    ("raised", "status"),
    [
        (KeyboardInterrupt, contract.KILLED),
        (SystemExit, contract.KILLED),  # a preempted job: submitit exits the process
        (StopTraining, contract.KILLED),  # a pruned trial
        (ValueError, contract.FAILED),
    ],
)
def test_how_a_run_ends_on_an_exception(tracking, raised, status):
    opened_ids: list[str] = []

    def train_step() -> None:
        raise raised("why")

    run = RunInfo(f"life-{raised.__name__}", on_open=opened_ids.append)
    with pytest.raises(raised), open_run(run, opening()):
        train_step()
    (run_id,) = opened_ids
    assert MlflowClient().get_run(run_id).info.status == status
    artifacts = {a.path for a in MlflowClient().list_artifacts(run_id)}
    if status == contract.FAILED:  # with the traceback from where it was raised
        text = MlflowClient().download_artifacts(run_id, contract.TRACEBACK_FILE)
        with open(text) as handle:
            why = handle.read()
        assert "in train_step" in why and why.strip().endswith("ValueError: why")
    else:
        assert contract.TRACEBACK_FILE not in artifacts


def test_a_training_stopped_before_its_last_epoch_ends_killed(tracking):
    with open_run(RunInfo("life-stopped"), opening()) as opened:
        opened.status = contract.KILLED
    assert opened.tracker.status() == contract.KILLED


def test_a_resumed_training_continues_only_a_run_of_its_fingerprint(tracking):
    earlier = Tracker.create("life-resume", "cell", {contract.TAG_FINGERPRINT: "a" * 12})
    earlier.finish(contract.KILLED)
    resumed = {"resumes": "work/last.pth", "checkpoint_run": earlier.run_id}
    with (
        pytest.raises(UserError, match=r"work/last.pth: a checkpoint of another config"),
        open_run(RunInfo("life-resume"), opening(**resumed)),
    ):
        pass
    assert earlier.status() == contract.KILLED  # left as it was
    # A sweep job's fingerprint (its tags) is what its run was opened for.
    run = RunInfo("life-resume", tags={contract.TAG_FINGERPRINT: "a" * 12})
    with open_run(run, opening(**resumed)) as opened:
        assert opened.tracker.run_id == earlier.run_id
    assert earlier.status() == contract.FINISHED
    experiment = MlflowClient().get_run(earlier.run_id).info.experiment_id
    assert len(MlflowClient().search_runs([experiment])) == 1


def test_a_checkpoint_whose_run_was_deleted_is_refused_before_training(tracking):
    """``mlflow runs delete`` on a run whose job then resumes: one line saying what to do,
    not MLflow's traceback from the first write after training started."""
    earlier = Tracker.create("life-deleted", "cell", {contract.TAG_FINGERPRINT: FP})
    earlier.finish(contract.KILLED)
    MlflowClient().delete_run(earlier.run_id)
    resumed = {"resumes": "work/last.pth", "checkpoint_run": earlier.run_id}
    deleted = rf"work/last.pth: the MLflow run {earlier.run_id} this checkpoint continues was"
    with (
        pytest.raises(UserError, match=deleted) as refused,
        open_run(RunInfo("life-deleted"), opening(**resumed)),
    ):
        pytest.fail("training started")
    assert f"mlflow runs restore --run-id {earlier.run_id}" in str(refused.value)
    assert MlflowClient().get_run(earlier.run_id).info.status == contract.KILLED
    # A run the store never held (another store, or deleted for good)
    missing = {"resumes": "work/last.pth", "checkpoint_run": "0" * 32}
    with (
        pytest.raises(UserError, match=r"0{32} this checkpoint continues is not in the store"),
        open_run(RunInfo("life-deleted"), opening(**missing)),
    ):
        pytest.fail("training started")


def test_evaluations_every_interval_and_after_the_last_epoch():
    assert [e for e in range(1, 8) if evaluation_due(e, 3, 7)] == [3, 6, 7]
    assert [e for e in range(1, 3) if evaluation_due(e, 1, 2)] == [1, 2]


def test_one_fingerprint_leaves_out_where_a_run_runs_on_both_engines():
    cfg = load_config([], ["model.pss.num_convs=3"])
    assert cfg.fingerprint() == fingerprint(cfg.flat())
    moved = load_config([], ["model.pss.num_convs=3", "data.root=/elsewhere", "name=x"])
    assert moved.fingerprint() == cfg.fingerprint()
    # An mmdet config's flat keys: where it runs and how its data is read do not count.
    mmdet = {"model.bbox_head.type": "FCOSPSSHead", "train_cfg.max_epochs": 2}
    where = {
        "work_dir": "w",
        "data_root": "d/",
        "train_dataloader.num_workers": 4,
        "train_dataloader.persistent_workers": True,
        "train_dataloader.dataset.ann_file": "a.json",
        "default_hooks.logger.interval": 5,
        "launcher": "pytorch",
    }
    assert fingerprint({**mmdet, **where}) == fingerprint(mmdet)
    assert fingerprint({**mmdet, "train_cfg.max_epochs": 3}) != fingerprint(mmdet)
