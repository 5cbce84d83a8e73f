"""The small-scale proof's plumbing (python -m pss.proof), on a tiny override set.

The real proof trains for minutes; here both trainings take seconds, so only
the wiring is checked: both configs load, train, log to MLflow and the four
numbers and the verdict are printed.
"""

from __future__ import annotations

import re

import torch

from pss.contract import CHECKPOINT
from pss.proof import CLAIMS, main, proof_config, verdict
from pss.tracking.logger import search_runs

TINY = [
    "data.synthetic={train: 8, val: 4, size: 96, seed: 0}",
    "data.train_scales=[96]",
    "data.test_scale=96",
    "data.max_size=128",
    "model.head.channels=16",
    "train.epochs=2",
    "train.iters_per_epoch=1",
    "train.batch_size=2",
    "train.warmup_iters=1",
    "train.lr_steps=[2]",
    "train.log_interval=1",
    "eval.interval=1",
]


def test_configs_differ_only_in_the_model():
    fcos, pss = (proof_config(m, []) for m in CLAIMS["fcos"].models)
    assert (fcos.model.name, pss.model.name) == ("fcos", "fcos_pss")
    diff = {k for k, v in fcos.flat().items() if pss.flat()[k] != v}
    assert diff == {"name", "model.name"}


def test_gfocalv2_configs_are_fcos_ones_but_the_model_and_the_second_step():
    fcos = proof_config("fcos", [])
    base, pss = (proof_config(m, []) for m in CLAIMS["gfocalv2"].models)
    assert {k for k, v in fcos.flat().items() if base.flat()[k] != v} == {"name", "model.name"}
    diff = {k for k, v in base.flat().items() if pss.flat()[k] != v}
    assert diff == {"name", "model.name", "train.trainable", "train.epochs", "train.lr_steps"}
    assert pss.train.trainable == "pss" and pss.train.epochs < base.train.epochs


def test_verdict_names_the_claims_models():
    holds, why = verdict(
        {"mAP_nms": 30.0, "mAP_raw": 20.0}, {"mAP_e2e": 29.0}, claim=CLAIMS["gfocalv2"]
    )
    assert holds and why.splitlines()[0].startswith("gfocalv2_pss e2e 29.0 vs gfocalv2 + NMS")


def test_verdict():
    holds, why = verdict({"mAP_nms": 20.0, "mAP_raw": 15.0}, {"mAP_e2e": 18.5})
    assert holds and "HOLDS" in why
    assert not verdict({"mAP_nms": 20.0, "mAP_raw": 15.0}, {"mAP_e2e": 17.9})[0]
    assert not verdict({"mAP_nms": 20.0, "mAP_raw": 18.0}, {"mAP_e2e": 21.0})[0]


def test_proof_trains_both_and_prints_the_four_numbers(tmp_path, tracking, capsys):
    threads = torch.get_num_threads()
    argv = ["--out", str(tmp_path / "out"), "--threads", str(threads), "--experiment", "proof-t"]
    argv += [a for o in [f"data.root={tmp_path / 'shapes'}", *TINY] for a in ("--set", o)]
    code = main(argv)
    out = capsys.readouterr().out
    assert code in (0, 1)  # a tiny run need not prove anything
    rows = {
        (m.group(1), m.group(2).split()[0]): float(m.group(3))
        for m in re.finditer(r"^\| (fcos(?:_pss)?) \| ([^|]+?) \| ([\d.]+) \|", out, re.M)
    }
    assert {("fcos", "with"), ("fcos", "raw"), ("fcos_pss", "e2e"), ("fcos_pss", "with")} <= set(
        rows
    )
    assert re.search(r"claim (HOLDS|DOES NOT HOLD)", out)
    assert (code == 0) == ("claim HOLDS" in out)
    runs = search_runs("proof-t")
    assert sorted(r.info.run_name for r in runs) == ["proof-fcos", "proof-fcos_pss"]
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.metrics["train_seconds"] > 0
        assert "mAP_nms" in run.data.metrics and "mAP_raw" in run.data.metrics
    assert torch.get_num_threads() == threads


def test_bad_override_trains_nothing(tmp_path, tracking, capsys):
    code = main(
        ["--out", str(tmp_path / "out"), "--experiment", "proof-bad", "--set", "train.epoch=3"]
    )
    assert code == 2
    assert "train.epochs" in capsys.readouterr().err
    assert search_runs("proof-bad") == [] and not (tmp_path / "out").exists()


def test_gfocalv2_proof_trains_two_step_from_the_baselines_checkpoint(tmp_path, tracking, capsys):
    argv = ["--base", "gfocalv2", "--out", str(tmp_path / "out"), "--experiment", "proof-g"]
    argv += ["--threads", str(torch.get_num_threads())]
    argv += [a for o in [f"data.root={tmp_path / 'shapes'}", *TINY] for a in ("--set", o)]
    code = main(argv)
    out = capsys.readouterr().out
    assert code in (0, 1)
    rows = {
        (m.group(1), m.group(2).split()[0])
        for m in re.finditer(r"^\| (gfocalv2(?:_pss)?) \| ([^|]+?) \| ([\d.]+) \|", out, re.M)
    }
    assert {("gfocalv2", "with"), ("gfocalv2", "raw"), ("gfocalv2_pss", "e2e")} <= rows
    assert "gfocalv2_pss e2e" in out and re.search(r"claim (HOLDS|DOES NOT HOLD)", out)
    runs = {r.info.run_name: r for r in search_runs("proof-g")}
    assert sorted(runs) == ["proof-gfocalv2", "proof-gfocalv2_pss"]
    stage2 = runs["proof-gfocalv2_pss"].data.params
    assert stage2["train.init_from"] == str(tmp_path / "out" / "gfocalv2" / CHECKPOINT)
    assert stage2["train.trainable"] == "pss"
    # stage 2 is frozen but for its PSS head: the same NMS result as stage 1
    nms = [r.data.metrics["mAP_nms"] for r in runs.values()]
    assert nms[0] == nms[1]


def test_two_step_proof_refuses_an_end_to_end_override(tmp_path, tracking, capsys):
    code = main(
        ["--base", "gfocalv2", "--out", str(tmp_path / "out"), "--experiment", "proof-bad2"]
        + ["--set", "train.trainable=all"]
    )
    assert code == 2 and "two-step" in capsys.readouterr().err
    assert search_runs("proof-bad2") == [] and not (tmp_path / "out").exists()
