"""The command line of ``sweeps/run.py`` (see its docstring and docs/cli.md).

``status``, ``--dry-run`` and a re-run of a finished sweep import neither torch
nor MLflow's client: they read the store directly (:mod:`pss.tracking.store`) and answer
in about a second; only submitting loads what submitting needs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from pss.contract import ENGINES
from pss.errors import EXIT_FAILED, EXIT_INVALID, EXIT_OK, UserError
from pss.sweep.executors import KINDS
from pss.sweep.profile import load_profile
from pss.sweep.submit import SweepOptions, plan, print_status, run_sweep
from pss.tracking.store import current_uri


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sweeps/run.py",
        description="Run a sweep spec (or `status SPEC` to see where it stands).",
    )
    parser.add_argument("spec", help="sweep spec YAML (e.g. sweeps/table5.yaml)")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="CPU smoke variant: synthetic shapes, small backbone, short "
        "schedule; logs to experiment <name>-smoke",
    )
    parser.add_argument(
        "--executor",
        choices=KINDS,
        default="auto",
        help="auto: SLURM where sbatch exists, else local",
    )
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default=None,
        help="train every cell on this engine, whatever the spec says; the experiment's "
        "name says it (<name>[-smoke]-mmdet)",
    )
    parser.add_argument("--cluster", metavar="PROFILE", help="cluster profile, slurm/<name>.yaml")
    parser.add_argument("--no-wait", action="store_true", help="submit and return")
    parser.add_argument("--dry-run", action="store_true", help="expand only; submit nothing")
    parser.add_argument("--json", action="store_true", help="with --dry-run: JSON on stdout")
    parser.add_argument(
        "--max-parallel",
        type=int,
        default=None,
        metavar="N",
        help="local/debug executors: jobs at a time (default 1)",
    )
    parser.add_argument("--no-report", action="store_true", help="do not build the report")
    return parser


def main(argv: list[str]) -> int:
    if argv[:1] == ["server"]:
        return server_command(argv[1:])
    status = bool(argv) and argv[0] == "status"
    args = _parser().parse_args(argv[1:] if status else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # not its schema set-up chatter
    try:
        if status:
            return print_status(args.spec, args.smoke, args.engine)
        loaded, jobs = plan(args.spec, args.smoke, args.engine)
        load_profile(args.cluster)  # a bad profile fails a dry run too
        if args.dry_run:
            if args.json:
                print(json.dumps([j.as_json() for j in jobs], indent=1))
            else:
                for job in jobs:
                    print(f"{job.key}  {job.fingerprint}  {json.dumps(job.overrides)}")
            return EXIT_OK
        if loaded.spec.search is not None:
            from pss.sweep.search import run_search  # Optuna and MLflow: searches only

            profile = load_profile(args.cluster)
            return run_search(loaded, profile, args.smoke, args.executor, not args.no_wait)
        options = SweepOptions(
            smoke=args.smoke,
            executor=args.executor,
            cluster=args.cluster,
            wait=not args.no_wait,
            max_parallel=args.max_parallel,
            report=not args.no_report,
        )
        return run_sweep(loaded, jobs, options)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID


def server_command(argv: list[str]) -> int:
    """``sweeps/run.py server status|stop [--store URI]``: the tracking server of a store."""
    parser = argparse.ArgumentParser(
        prog="sweeps/run.py server",
        description="The MLflow tracking server SLURM sweeps start on a local store "
        "(docs/cluster.md): show it, or stop it and everything it started.",
    )
    parser.add_argument("action", choices=["status", "stop"])
    parser.add_argument(
        "--store", metavar="URI", help="the store (default: MLFLOW_TRACKING_URI or ./mlflow.db)"
    )
    args = parser.parse_args(argv)
    from pss.sweep.store import server_status, stop_server  # MLflow: only for this command

    store = args.store or current_uri()
    try:
        if args.action == "stop":
            stopped = stop_server(store)
            print(f"stopped the tracking server of {store}" if stopped else f"no server on {store}")
            return EXIT_OK
        server = server_status(store)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    if server is None:
        print(f"no server on {store}")
        return EXIT_FAILED
    print(f"{server.url} (pid {server.pid}, store {store}, credentials {server.credentials})")
    return EXIT_OK

