"""Optuna search specs: a real study run by two local submitit workers sharing its storage."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
from mlflow.tracking import MlflowClient

from pss.sweep.driver import main
from pss.testing import REPO
from pss.testing.configs import write_spec, write_tiny_overlay
from pss.tracking.logger import search_runs

SEARCH = """
name: search
base: @EXP@/fcos_pss_r50_3x.yaml
smoke: overlay.yaml
search:
  params:
    - {key: model.loss.pss_weight, low: 0.25, high: 4.0, log: true}
    - {key: model.assign.alpha, low: 0.0, high: 1.0}
    - {key: model.loss.rank_margin, low: 0.1, high: 1.0}
  n_trials: 50
  smoke_n_trials: 4
  workers: 2
  pruner_warmup_epochs: 1
"""


def trials_evaluated(root: Path, job_id: str) -> int:
    """Trials whose epoch-1 evaluation the worker ``job_id`` logged (its submitit stderr)."""
    (log,) = root.rglob(f"{job_id}_0_log.err")
    return len(re.findall(r"^\S+ \S+ pss\.[\w.]+: epoch 1: mAP", log.read_text(), re.M))


def test_search_runs_trials_as_tracked_runs_and_prints_the_best(
    tmp_path, monkeypatch, shapes_root, capsys
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    write_tiny_overlay(tmp_path / "overlay.yaml", shapes_root)
    spec = write_spec(tmp_path / "search.yaml", SEARCH)
    argv = [str(spec), "--smoke", "--executor", "local"]
    assert main(argv) == 0
    out = capsys.readouterr()
    assert "best trial: #" in out.out and "model.loss.pss_weight = " in out.out
    submitted = re.search(r"2 search workers submitted \(local\): (\S+), (\S+)\n", out.err)
    assert submitted, out.err
    # the study lives beside the MLflow store, shared by the workers
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.load_study(study_name="search-smoke", storage=storage)
    assert len(study.trials) == 4 and all(t.state.is_finished() for t in study.trials)
    # Both workers ran trials: each worker's own log shows the first evaluation of at
    # least one trial, and together they show every trial's.
    evaluated = [trials_evaluated(tmp_path, job_id) for job_id in submitted.groups()]
    assert all(n >= 1 for n in evaluated), evaluated
    assert sum(evaluated) == sum(1 in t.intermediate_values for t in study.trials) == 4
    runs = search_runs("search-smoke")
    assert sorted(int(r.data.tags["pss.trial"]) for r in runs) == sorted(
        t.number for t in study.trials
    )
    client = MlflowClient()
    for run in runs:
        trial = study.trials[int(run.data.tags["pss.trial"])]
        assert float(run.data.params["model.assign.alpha"]) == trial.params["model.assign.alpha"]
        if trial.state == optuna.trial.TrialState.COMPLETE:
            assert run.data.metrics["mAP_e2e"] == trial.value
            steps = [m.step for m in client.get_metric_history(run.info.run_id, "mAP_e2e")]
            assert trial.intermediate_values == {
                s: m.value
                for s, m in zip(steps, client.get_metric_history(run.info.run_id, "mAP_e2e"))
            }
    # again: the study is complete, no worker starts, nothing new runs
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "4/4 trials done" in err and "search workers submitted" not in err
    assert len(optuna.load_study(study_name="search-smoke", storage=storage).trials) == 4
    assert len(search_runs("search-smoke")) == len(runs)


def test_example_search_spec_is_valid(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main([str(REPO / "sweeps" / "search_pss_loss.yaml"), "--dry-run", "--json"]) == 0
    assert capsys.readouterr().out.strip() == "[]"
    assert not Path("outputs").exists()


def test_bad_search_key_exits_2_before_any_study(tmp_path, monkeypatch, capsys, shapes_root):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    write_tiny_overlay(tmp_path / "overlay.yaml", shapes_root)
    spec = write_spec(tmp_path / "bad.yaml", SEARCH.replace("rank_margin", "rank_margn"))
    assert main([str(spec), "--smoke", "--executor", "local"]) == 2
    err = capsys.readouterr().err
    assert "search.params" in err and "did you mean 'model.loss.rank_margin'" in err
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "mlflow.db").exists()
