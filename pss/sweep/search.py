"""Optuna searches: a spec's ``search:`` block run as a study by several submitit workers.

TPE sampler, median pruning fed by the per-epoch metric (``mAP_e2e`` by
default), RDB storage shared by the workers (SQLite beside the MLflow store
unless ``search.storage`` names any SQLAlchemy URL). Every trial is an MLflow
run tagged with its trial number; the best parameters are printed at the end.
Running the spec again continues the same study up to ``n_trials``.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import submitit

from pss import contract
from pss.config import load_config
from pss.errors import EXIT_FAILED, EXIT_OK, UserError
from pss.sweep.executors import report_failures, resolve_executor, submit
from pss.sweep.profile import ClusterProfile, effective_resources
from pss.sweep.schema import LoadedSpec, SearchSpec
from pss.sweep.server import uri_for_jobs
from pss.sweep.worker import Payload, prepare_process
from pss.tracking.logger import experiment_id
from pss.tracking.store import current_uri

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
FINAL_STATES = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def default_storage(tracking_uri: str, experiment: str) -> str:
    """SQLite beside a local MLflow store; else in the sweep's folder (contract.sweep_dir)."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri.removeprefix("sqlite:///"))
        return f"sqlite:///{db.with_name('optuna.db')}"
    path = (contract.sweep_dir(experiment) / "optuna.db").resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def _storage(url: str) -> optuna.storages.RDBStorage:
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs = {"connect_args": {"timeout": 60}}
    return optuna.storages.RDBStorage(
        url,
        engine_kwargs=kwargs,
        heartbeat_interval=60,
        grace_period=180,
        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
    )


def _study(search: SearchSpec, name: str, url: str, load: bool) -> optuna.Study:
    sampler = optuna.samplers.TPESampler(seed=search.seed)
    pruner = optuna.pruners.MedianPruner(n_warmup_steps=search.pruner_warmup_epochs)
    if load:
        return optuna.load_study(
            study_name=name, storage=_storage(url), sampler=sampler, pruner=pruner
        )
    return optuna.create_study(
        study_name=name,
        storage=_storage(url),
        sampler=sampler,
        pruner=pruner,
        direction=search.direction,
        load_if_exists=True,
    )


@dataclass
class SearchPayload:
    job: Payload  # config files, base overrides, tracking (run_id unused)
    search: SearchSpec
    study: str
    storage: str
    n_trials: int
    trials_per_worker: int
    output_root: str
    sweep: str


class SearchWorker(submitit.helpers.Checkpointable):
    """Runs trials of a shared study until it has ``n_trials`` (or its share is done)."""

    def __init__(self, payload: SearchPayload) -> None:
        self.payload = payload

    def __call__(self) -> int:
        p = self.payload
        prepare_process(p.job)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = _study(p.search, p.study, p.storage, load=True)
        stop = optuna.study.MaxTrialsCallback(p.n_trials, states=None)
        study.optimize(self.objective, n_trials=p.trials_per_worker, callbacks=[stop])
        return len(study.trials)

    def objective(self, trial: optuna.Trial) -> float:
        # Imported here, in the job: the driver that pickles this object never loads torch.
        from pss.engine.train import RunInfo, StopTraining, train

        p, search = self.payload, self.payload.search
        values = {}
        for param in search.params:
            if param.kind == "int":
                values[param.key] = trial.suggest_int(
                    param.key, int(param.low), int(param.high), log=param.log
                )
            else:
                values[param.key] = trial.suggest_float(
                    param.key, param.low, param.high, log=param.log
                )
        name = f"trial-{trial.number}"
        overrides = {
            **p.job.overrides,
            **values,
            "name": f"{p.sweep}-{name}",
            "output_dir": str(Path(p.output_root) / name),
        }
        cfg = load_config(p.job.config_files, overrides)
        tags = {
            **contract.job_tags(p.sweep, name, None, cfg.train.seed, cfg.fingerprint()),
            contract.TAG_TRIAL: str(trial.number),
            contract.TAG_STUDY: p.study,
        }

        def report(epoch: int, metrics: dict[str, float]) -> None:
            trial.report(metrics[search.metric], epoch)
            if trial.should_prune():
                raise StopTraining(f"pruned at epoch {epoch}")

        run = RunInfo(experiment=p.job.experiment, run_name=name, tags=tags)
        try:
            metrics = train(cfg, run=run, on_epoch=report)
        except StopTraining:
            raise optuna.TrialPruned() from None
        return metrics[search.metric]


def run_search(
    loaded: LoadedSpec, profile: ClusterProfile, smoke: bool, executor: str, wait: bool
) -> int:
    """Run (or continue) the spec's study with ``search.workers`` submitit jobs."""
    spec, search = loaded.spec, loaded.spec.search
    assert search is not None
    experiment = loaded.experiment(smoke)
    files = [str(f) for f in loaded.config_files(smoke)]
    base = {**(spec.smoke_overrides if smoke else {}), **spec.overrides}
    _check_params(loaded, files, base)
    n_trials = search.smoke_n_trials if smoke else search.n_trials
    kind = resolve_executor(executor)
    folder = contract.sweep_dir(experiment)
    storage = search.storage or default_storage(current_uri(), experiment)
    study = _study(search, experiment, storage, load=False)
    done = sum(t.state in FINAL_STATES for t in study.trials)
    remaining = n_trials - done
    print(
        f"{loaded.path}: study '{experiment}' in {storage}: {done}/{n_trials} trials done",
        file=sys.stderr,
    )
    if remaining > 0:
        res = effective_resources(spec.resources, profile, smoke)
        uri, env = uri_for_jobs(kind, profile)
        experiment_id(experiment)  # create the store here, not racing in the workers
        workers = min(search.workers, remaining)
        job = Payload(
            config_files=files,
            overrides=base,
            experiment=experiment,
            run_name="",
            run_id=None,
            tags={},
            tracking_uri=uri,
            threads=res.cpus_per_task,
            cwd=str(Path.cwd()),
            env=env,
        )
        payload = SearchPayload(
            job,
            search,
            experiment,
            storage,
            n_trials,
            math.ceil(remaining / workers),
            str((folder / "trials").resolve()),
            spec.name,
        )
        logs = Path(profile.logs_folder) if profile.logs_folder else folder / "submitit"
        jobs = submit(kind, logs, res, profile, [SearchWorker(payload) for _ in range(workers)])
        print(
            f"{workers} search workers submitted ({kind}): "
            + ", ".join(str(j.job_id) for j in jobs),
            file=sys.stderr,
        )
        if not wait:
            return EXIT_OK
        failures = _wait_workers(jobs, study, n_trials)
        if failures:
            print(f"{failures} search worker(s) failed; see {logs}", file=sys.stderr)
    return _print_best(study, search) if wait or remaining <= 0 else EXIT_OK


def _check_params(loaded: LoadedSpec, files: list[str], base: dict[str, Any]) -> None:
    """Bad search keys or ranges fail before any study or run exists."""
    search = loaded.spec.search
    for bound in ("low", "high"):
        values = {p.key: getattr(p, bound) for p in search.params}
        values = {
            k: (int(v) if p.kind == "int" else v)
            for (k, v), p in zip(values.items(), search.params)
        }
        try:
            load_config(files, {**base, **values})
        except UserError as exc:
            raise UserError(f"search.params: {exc}", str(loaded.path)) from None


def _wait_workers(jobs: list, study: optuna.Study, n_trials: int) -> int:
    last = -1
    while not all(j.done() for j in jobs):
        trials = study.get_trials(deepcopy=False)
        finished = sum(t.state in FINAL_STATES for t in trials)
        if finished != last:
            print(f"search: {finished}/{n_trials} trials finished", file=sys.stderr, flush=True)
            last = finished
        time.sleep(3)
    return len(report_failures((f"worker {j.job_id}", j) for j in jobs))


def _print_best(study: optuna.Study, search: SearchSpec) -> int:
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        print("no trial completed", file=sys.stderr)
        return EXIT_FAILED
    best = study.best_trial
    print(f"best trial: #{best.number}, {search.metric} = {best.value:.2f}")
    for key, value in best.params.items():
        print(f"  {key} = {value:.4g}" if isinstance(value, float) else f"  {key} = {value}")
    states = {}
    for t in study.trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    print("trials: " + ", ".join(f"{n} {k.lower()}" for k, n in sorted(states.items())))
    return EXIT_OK
