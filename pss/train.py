"""Train (and evaluate) one experiment config.

    python -m pss.train experiments/fcos_pss_r50_3x.yaml [experiments/smoke/overlay.yaml]
        [--set train.epochs=2 ...] [--resume PATH|auto] [--experiment NAME] [--run-name NAME]

Exit status: 0 finished, 1 the run failed (it diverged, an image changed on disk after
the data check, a checkpoint could not be written), 2 bad input (config, data files,
checkpoint), with one message on stderr (docs/cli.md).
"""

from __future__ import annotations

import argparse
import logging
import sys

from pss.config import add_config_arguments, load_config
from pss.engine.lifecycle import RunInfo
from pss.engine.train import train
from pss.errors import EXIT_FAILED, EXIT_INVALID, EXIT_OK, RunFailed, UserError
from pss.tracking.store import check_store, current_uri


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pss.train", description=__doc__.split("\n")[0])
    add_config_arguments(parser)
    parser.add_argument("--resume", metavar="PATH", help="checkpoint to resume, or 'auto'")
    parser.add_argument("--experiment", default="pss", help="MLflow experiment (default: pss)")
    parser.add_argument("--run-name", help="MLflow run name (default: the config's name)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        cfg = load_config(args.config, args.overrides)
        check_store(current_uri())  # before any model, data or run
        metrics = train(
            cfg, resume=args.resume, run=RunInfo(experiment=args.experiment, run_name=args.run_name)
        )
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except RunFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    for key in sorted(k for k in metrics if k.startswith(("mAP", "mAR"))):
        print(f"{key:>10}: {metrics[key]:.1f}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
