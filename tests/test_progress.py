"""The waiting sweep's line per job: epoch and ETA from the training loss's iterations."""

from __future__ import annotations

import io
from unittest.mock import patch

from pss import contract
from pss.sweep.expand import expand
from pss.sweep.progress import Progress, describe
from pss.sweep.schema import load_spec
from pss.sweep.state import RUNNING_S, JobState
from pss.testing import REPO
from pss.tracking.store import StoredRun

START = 1_000_000.0  # seconds


def smoke_job():
    """A Table 5 smoke job: epochs x iters_per_epoch iterations, evaluated every few."""
    return expand(load_spec(REPO / "sweeps" / "table5.yaml"), smoke=True)[0]


def running(job, steps: dict[str, int], times: dict[str, float], metrics=None) -> JobState:
    run = StoredRun(
        run_id="r",
        name=job.key,
        status=contract.RUNNING,
        start_time=int(START * 1000),
        end_time=None,
        artifact_uri="",
        metrics=metrics or {},
        steps=steps,
        times={k: int(v * 1000) for k, v in times.items()},
    )
    return JobState(job=job, state=RUNNING_S, run=run)


def test_eta_counts_iterations_between_evaluations():
    job = smoke_job()
    train = job.config.train
    total = train.epochs * train.iters_per_epoch
    done = train.iters_per_epoch + train.iters_per_epoch // 2  # epoch 2 half done, none evaluated
    state = running(job, {contract.LOSS: done}, {contract.LOSS: START + done * 0.5})
    key, shown, epoch, mAP, eta, note = describe(state, now=START + done * 0.5 + 10)
    assert (shown, epoch, mAP) == (RUNNING_S, f"epoch 1/{train.epochs}", "")
    left = round((total - done) * 0.5 - 10)
    assert eta == f"ETA {left // 60}m{left % 60:02d}s"


def test_eta_says_overdue_rather_than_zero_and_evaluating_at_the_end():
    job = smoke_job()
    train = job.config.train
    total = train.epochs * train.iters_per_epoch
    state = running(job, {contract.LOSS: 10}, {contract.LOSS: START + 10})
    assert describe(state, now=START + 10 + 2 * total)[4] == "ETA overdue"
    state = running(job, {contract.LOSS: total}, {contract.LOSS: START + total})
    assert describe(state, now=START + total + 5)[4] == "evaluating"


def test_without_an_iteration_cap_the_eta_comes_from_evaluated_epochs():
    job = smoke_job()
    job.config.train.iters_per_epoch = None
    metric = contract.metric_name(contract.MAP, "e2e")
    state = running(job, {metric: 2, contract.LOSS: 999}, {metric: START + 120}, {metric: 7.25})
    _, _, epoch, mAP, eta, _ = describe(state, now=START + 120)
    epochs = job.config.train.epochs
    assert (epoch, mAP) == (f"epoch 2/{epochs}", f"{metric} 7.2")
    left = 60 * (epochs - 2)
    assert eta == f"ETA {left // 60}m{left % 60:02d}s"
    assert describe(running(job, {}, {}), now=START)[4] == "ETA after epoch 1"


def test_a_log_file_gets_the_same_lines():
    job = smoke_job()
    state = running(job, {contract.LOSS: 20}, {contract.LOSS: START + 10})
    out = io.StringIO()
    Progress(out).update([state])
    text = out.getvalue()
    assert job.key in text and "epoch 0/" in text and "ETA " in text and "1 running" in text


def test_a_log_says_a_job_again_when_its_state_or_metric_changes_and_every_interval():
    job = smoke_job()
    metric = contract.metric_name(contract.MAP, "e2e")
    out = io.StringIO()
    progress = Progress(out, interval_s=60)
    with patch("pss.sweep.progress.time.time", return_value=START + 5):
        progress.update([running(job, {contract.LOSS: 20}, {contract.LOSS: START})])
        progress.update([running(job, {contract.LOSS: 240}, {contract.LOSS: START + 4})])
    assert out.getvalue().count(job.key) == 1  # a new epoch alone: nothing more
    with patch("pss.sweep.progress.time.time", return_value=START + 6):
        evaluated = running(job, {contract.LOSS: 500, metric: 5}, {contract.LOSS: START + 5,
                                                                 metric: START + 5}, {metric: 9.5})
        progress.update([evaluated])
    assert out.getvalue().count(job.key) == 2 and f"{metric} 9.5" in out.getvalue()
    with patch("pss.sweep.progress.time.time", return_value=START + 70):
        progress.update([evaluated])
    assert out.getvalue().count(job.key) == 3  # every job again after interval_s
