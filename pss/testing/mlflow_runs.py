"""Seed an MLflow store with sweep runs that follow the tracking contract (tests, benchmarks).

:class:`FakeRun` describes one run (cell, stage, seed, status, final metrics,
optional per-epoch history, a traceback for failed runs); :func:`seed_runs`
writes runs with exactly the tags, params and metrics a real sweep job logs
(docs/tracking.md), a few calls per run (``log_batch``).
:func:`synthetic_runs` makes plausible finished runs for every reported cell
of a spec.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from pss import contract
from pss.sweep.expand import expand
from pss.sweep.schema import LoadedSpec

T0 = 1_700_000_000_000  # start time (ms) of the first seeded run


@dataclass
class FakeRun:
    cell: str
    seed: int = 0
    stage: str | None = None
    status: str = "FINISHED"
    metrics: dict[str, float] = field(default_factory=dict)  # final values (step = last epoch)
    history: dict[str, list[float]] = field(default_factory=dict)  # per-epoch values, epoch 1..
    params: dict[str, Any] = field(default_factory=dict)
    traceback: str | None = None  # logged as traceback.txt
    fingerprint: str = "0" * 12
    sweep: str = ""
    git_dirty: bool = False  # uncommitted edits ran too (the pss.git_dirty tag)
    threads: int | None = None  # the pss.threads tag, not written when None


def experiment(client: MlflowClient, name: str, artifact_root: Path | None = None) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = (artifact_root / name).resolve().as_uri() if artifact_root else None
    return client.create_experiment(name, artifact_location=location)


def seed_runs(
    client: MlflowClient,
    experiment_name: str,
    runs: Iterable[FakeRun],
    artifact_root: Path | None = None,
    start: int = T0,
) -> list[str]:
    """Create the runs in order (each one a minute newer than the last); returns their ids."""
    exp = experiment(client, experiment_name, artifact_root)
    ids = []
    for i, fake in enumerate(runs):
        sweep = fake.sweep or experiment_name.removesuffix(contract.SMOKE_SUFFIX)
        tags = {
            **contract.job_tags(sweep, fake.cell, fake.stage, fake.seed, fake.fingerprint),
            contract.TAG_GIT_COMMIT: "0123456789abcdef",
            contract.TAG_GIT_DIRTY: str(fake.git_dirty).lower(),
        }
        if fake.threads is not None:
            tags[contract.TAG_THREADS] = str(fake.threads)
        begin = start + 60_000 * i
        run = client.create_run(exp, start_time=begin, tags=tags, run_name=fake.cell)
        run_id = run.info.run_id
        metrics = [
            Metric(k, float(v), begin + e, e + 1)
            for k, values in fake.history.items()
            for e, v in enumerate(values)
        ]
        last = max((len(v) for v in fake.history.values()), default=1)
        metrics += [
            Metric(k, float(v), begin + last, last)
            for k, v in fake.metrics.items()
            if k not in fake.history
        ]
        params = [Param(k, str(v)) for k, v in fake.params.items()]
        for j in range(0, max(len(metrics), len(params), 1), 100):
            client.log_batch(run_id, metrics=metrics[j : j + 100], params=params[j : j + 100])
        if fake.traceback is not None:
            client.log_text(run_id, fake.traceback, contract.TRACEBACK_FILE)
        if fake.status in ("FINISHED", "FAILED", "KILLED"):
            client.set_terminated(run_id, fake.status, end_time=begin + 30_000)
        elif fake.status != "RUNNING":
            client.update_run(run_id, status=fake.status)
        ids.append(run_id)
    return ids


def metric_values(model_name: str, rng: random.Random, base: float = 42.0) -> dict[str, float]:
    """Plausible final metrics: e2e only for the PSS models (as the engine logs them)."""
    modes = ("e2e", "nms") if contract.has_pss(model_name) else ("nms",)
    out: dict[str, float] = {}
    for mode in modes:
        offset = rng.gauss(0, 0.3)
        for i, name in enumerate(contract.ACCURACY):
            value = base + 4 * i + offset + rng.gauss(0, 0.1)
            out[contract.metric_name(name, mode)] = round(value, 3)
        out[contract.metric_name(contract.POSTPROCESS_MS, mode)] = round(rng.uniform(1.0, 8.0), 3)
    out[contract.FORWARD_MS] = round(rng.uniform(38.0, 56.0), 3)
    return out


def synthetic_runs(
    loaded: LoadedSpec,
    smoke: bool = False,
    seeds: Iterable[int] | None = None,
    rng_seed: int = 0,
    epochs: int = 0,
    with_params: bool = True,
) -> list[FakeRun]:
    """Finished runs of every job (each stage) of a spec, for ``seeds`` (default: the spec's)."""
    rng = random.Random(rng_seed)
    jobs = expand(loaded, smoke=smoke)
    by_cell = {(j.cell, j.stage): j for j in jobs}
    runs = []
    for seed in seeds if seeds is not None else loaded.spec.seeds:
        for (cell, stage), job in by_cell.items():
            name = job.config.model.name
            final = metric_values(name, rng)
            history = {}
            if epochs:
                key = contract.metric_name(contract.MAP, contract.primary_mode(name))
                history[key] = [
                    round(final[key] * (1 - 0.6 * 0.8**e) + rng.gauss(0, 0.2), 3)
                    for e in range(epochs)
                ]
                final[key] = history[key][-1]
            runs.append(
                FakeRun(
                    cell=cell,
                    seed=seed,
                    stage=stage,
                    metrics=final,
                    history=history,
                    params=job.config.flat() if with_params else {"model.name": name},
                    fingerprint=job.fingerprint,
                    sweep=loaded.spec.name,
                )
            )
    return runs
