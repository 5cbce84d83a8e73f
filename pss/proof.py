"""The small-scale proof: FCOS needs NMS, FCOS_PSS does not (and the same of GFocalV2 and of
CondInst's masks).

    python -m pss.proof [--base fcos|gfocalv2|condinst] [--out DIR] [--set key=value ...]
                        [--threads N]

Trains the baseline and then its PSS model on the synthetic shapes set
(``experiments/proof/base.yaml`` + ``experiments/proof/<model>.yaml``; each
``--set`` applies to both), one after the other through
:func:`pss.engine.train.train`, logs both to the MLflow experiment ``proof``
and prints the four numbers of the claim with AP50, mAR and the time each
training took:

    <base>      + NMS      the one-to-many baseline as it is meant to be used
    <base>      raw        the same model, top-100 scores, no NMS
    <base>_pss  e2e        the PSS score, top-100, no NMS
    <base>_pss  + NMS      the PSS model's base branch with NMS

``--base fcos`` (the default) trains both from scratch (end-to-end, the paper's
Table 1). ``--base gfocalv2`` is the authors' README row: GFocalV2 from scratch,
then two-step training, GFocalV2_PSS starting from its last checkpoint
(``train.init_from``) with only the PSS head trained (``train.trainable: pss``).

``--base condinst`` is the instance segmentation row (issue 24): CondInst and
CondInst_PSS from scratch on the same shapes with their exact masks (a folder of its
own, ``outputs/data/shapes-proof-masks``), judged on mask AP (COCOeval segm): the
e2e masks of CondInst_PSS against its *own* masks with NMS, CondInst's raw masks
against CondInst's with NMS; the table shows box and mask AP.

The claim holds when ``<base>_pss e2e >= <base> nms - 2`` and ``<base> raw`` is
clearly below ``<base> nms`` (at least ``--raw-gap`` points, default 3).
Everything is seeded (``train.seed``) and the thread count is fixed, so a run
is deterministic on a given machine. Exit status: 0 the claim holds, 1 it does
not (or a training failed), 2 bad input.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pss.config import ExperimentConfig, add_config_arguments, load_config
from pss.contract import (
    AP50,
    CHECKPOINT,
    MAP,
    MAR,
    TAG_PROOF,
    TAG_SEED,
    metric_name,
    segm_name,
)
from pss.data import ensure_shapes
from pss.errors import EXIT_FAILED, EXIT_INVALID, EXIT_OK, RunFailed, UserError

PROOF_DIR = Path(__file__).resolve().parent.parent / "experiments" / "proof"


@dataclass(frozen=True)
class Claim:
    """A baseline and its PSS model; ``two_step``: the PSS model starts from the
    baseline's last checkpoint and trains its PSS head only (its config says
    ``train.trainable: pss``); ``masks``: judged on mask AP, e2e against the PSS
    model's own masks with NMS (issue 24's statement of CondInst_PSS)."""

    base: str
    pss: str
    two_step: bool = False
    masks: bool = False

    @property
    def models(self) -> tuple[str, str]:
        return (self.base, self.pss)


CLAIMS = {
    "fcos": Claim("fcos", "fcos_pss"),
    "gfocalv2": Claim("gfocalv2", "gfocalv2_pss", two_step=True),
    "condinst": Claim("condinst", "condinst_pss", masks=True),
}
EXPERIMENT = "proof"
E2E_MARGIN = 2.0  # fcos_pss e2e may be at most this far below fcos with NMS
RAW_GAP = 3.0  # fcos raw must be at least this far below fcos with NMS ("clearly lower")

log = logging.getLogger(__name__)


@dataclass
class Trained:
    model: str
    metrics: dict[str, float]
    seconds: float
    run_id: str | None = None


def proof_config(model: str, overrides: list[str], out: Path | None = None) -> ExperimentConfig:
    """The proof's config for ``model`` (one of :data:`CLAIMS`' models), with ``overrides``
    applied."""
    files = [PROOF_DIR / "base.yaml", PROOF_DIR / f"{model}.yaml"]
    cfg = load_config(files, overrides)
    if cfg.model.name != model:
        raise UserError(f"the proof trains '{model}'; do not override model.name", "--set")
    if out is not None:
        cfg = cfg.model_copy(update={"output_dir": str(Path(out) / model)})
    return cfg


def train_one(cfg: ExperimentConfig, experiment: str = EXPERIMENT) -> Trained:
    """Train and evaluate one config from scratch; log it (and its training time) to MLflow."""
    from pss.engine.lifecycle import RunInfo
    from pss.engine.train import train
    from pss.tracking.logger import Tracker

    tracker = Tracker.create(
        experiment, cfg.name, {TAG_PROOF: cfg.model.name, TAG_SEED: cfg.train.seed}
    )
    start = time.perf_counter()
    metrics = train(cfg, resume=None, run=RunInfo(experiment=experiment, run_id=tracker.run_id))
    seconds = time.perf_counter() - start
    Tracker(tracker.run_id).log_metrics({"train_seconds": seconds}, step=cfg.train.epochs)
    return Trained(cfg.model.name, metrics, seconds, tracker.run_id)


def verdict(
    base: dict[str, float],
    pss: dict[str, float],
    e2e_margin: float = E2E_MARGIN,
    raw_gap: float = RAW_GAP,
    claim: Claim = CLAIMS["fcos"],
) -> tuple[bool, str]:
    """Whether the claim holds, and one line per condition saying why."""
    ap = segm_name(MAP) if claim.masks else MAP
    what = " mask AP" if claim.masks else ""
    nms, raw = base[metric_name(ap, "nms")], base[metric_name(ap, "raw")]
    e2e = pss[metric_name(ap, "e2e")]
    # A mask claim holds e2e against the PSS model's own masks with NMS.
    rival, rival_nms = (claim.base, nms)
    if claim.masks:
        rival, rival_nms = claim.pss, pss[metric_name(ap, "nms")]
    close = e2e >= rival_nms - e2e_margin
    clear = raw <= nms - raw_gap
    lines = [
        f"{claim.pss} e2e{what} {e2e:.1f} vs {rival} + NMS {rival_nms:.1f}: "
        f"{e2e - rival_nms:+.1f} points ({'within' if close else 'NOT within'} {e2e_margin:g})",
        f"{claim.base} raw{what} {raw:.1f} vs {claim.base} + NMS {nms:.1f}: {raw - nms:+.1f} "
        f"points ({'clearly lower' if clear else 'NOT clearly lower'}: needs <= -{raw_gap:g})",
    ]
    holds = close and clear
    lines.append(f"claim {'HOLDS' if holds else 'DOES NOT HOLD'}")
    return holds, "\n".join(lines)


def table(results: dict[str, Trained], claim: Claim = CLAIMS["fcos"]) -> str:
    """The four rows of the claim (plus the PSS model's raw) as a Markdown table."""
    rows = [
        (claim.base, "nms", "with NMS"),
        (claim.base, "raw", "raw (no NMS)"),
        (claim.pss, "e2e", "e2e (no NMS)"),
        (claim.pss, "nms", "with NMS"),
        (claim.pss, "raw", "raw base score (no NMS)"),
    ]
    names = (MAP, AP50, MAR, *((segm_name(MAP), segm_name(AP50)) if claim.masks else ()))
    headers = (MAP, AP50, MAR, f"mask {MAP}", f"mask {AP50}")[: len(names)]
    out = [
        f"| model | inference | {' | '.join(headers)} | training time |",
        f"| --- | --- | {' | '.join('---:' for _ in names)} | ---: |",
    ]
    for model, mode, label in rows:
        if model not in results or metric_name(MAP, mode) not in results[model].metrics:
            continue
        m, secs = results[model].metrics, results[model].seconds
        values = " | ".join(f"{m[metric_name(k, mode)]:.1f}" for k in names)
        out.append(f"| {model} | {label} | {values} | {secs:.0f} s ({secs / 60:.1f} min) |")
    return "\n".join(out)


def run_proof(
    overrides: list[str],
    out: Path | None = None,
    experiment: str = EXPERIMENT,
    claim: Claim = CLAIMS["fcos"],
) -> dict[str, Trained]:
    """Validate both configs first (bad input trains nothing), then train them in turn;
    a two-step claim's PSS model starts from the baseline's last checkpoint."""
    configs = {model: proof_config(model, overrides, out) for model in claim.models}
    pss_train = configs[claim.pss].train
    if claim.two_step != (pss_train.trainable == "pss"):
        raise UserError(
            f"the proof trains {claim.pss} {'two-step' if claim.two_step else 'end-to-end'}; "
            "do not override train.trainable",
            "--set",
        )
    for cfg in configs.values():  # generate the shapes first: not part of the training time
        if cfg.data.synthetic is not None:
            ensure_shapes(Path(cfg.data.root), cfg.data.synthetic)
    results = {}
    for model, cfg in configs.items():
        if claim.two_step and model == claim.pss:
            stage1 = {"init_from": str(configs[claim.base].run_dir / CHECKPOINT)}
            cfg = cfg.model_copy(update={"train": pss_train.model_copy(update=stage1)})
        log.info("training %s (%s, fingerprint %s)", model, cfg.run_dir, cfg.fingerprint())
        results[model] = train_one(cfg, experiment)
        log.info("%s trained in %.0f s", model, results[model].seconds)
    return results


def main(argv: list[str] | None = None) -> int:
    summary = __doc__.split("\n\n")[0].replace("\n", " ")
    parser = argparse.ArgumentParser(prog="python -m pss.proof", description=summary)
    parser.add_argument(
        "--base",
        choices=sorted(CLAIMS),
        default="fcos",
        help="the baseline and its PSS model (default: %(default)s)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("outputs/proof"), help="run folders (default: %(default)s)"
    )
    add_config_arguments(parser, configs=False, what="a config value of both trainings")
    parser.add_argument(
        "--threads",
        type=int,
        default=2,
        help="torch CPU threads (fixed for determinism; default %(default)s)",
    )
    parser.add_argument("--experiment", default=EXPERIMENT, help="MLflow experiment")
    parser.add_argument("--raw-gap", type=float, default=RAW_GAP, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr
    )
    if args.threads < 1:
        print("error: --threads must be >= 1", file=sys.stderr)
        return EXIT_INVALID
    import torch

    torch.set_num_threads(args.threads)
    try:
        claim = CLAIMS[args.base]
        results = run_proof(args.overrides, args.out, args.experiment, claim)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except RunFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    base, pss = (results[m].metrics for m in claim.models)
    holds, why = verdict(base, pss, raw_gap=args.raw_gap, claim=claim)
    print(table(results, claim))
    print()
    print(why)
    return EXIT_OK if holds else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
