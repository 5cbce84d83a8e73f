"""``benchmarks/gpu_check.py`` (``make gpu-check``) in its reduced CPU form, so it cannot rot.

No GPU is lent to CI: the real check (float16 with a GradScaler, GPU memory,
NCCL, host synchronisations) runs on a GPU machine only. Here the same six steps
run at tiny sizes on the CPU (bfloat16, resident memory, gloo), and the four
figure steps once more where MLflow cannot be imported, as on a lent GPU machine;
what the figures say is not tested, only that every step ran, printed its figures
and gave finite numbers.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
FIGURES = (
    "peak memory per image at batch 2 and 4",
    "bench_head.py in float32 and with AMP",
    "precision and memory order",
    "one-to-one matching host synchronisations",
)
TRACKED = ("short AMP training of the smoke config", "DDP at world size 1")


def run(*args: str, timeout: float, block_mlflow: bool = False) -> subprocess.CompletedProcess:
    """Run the script in its own session; the whole session is killed if it overruns.

    ``block_mlflow``: in an interpreter where ``import mlflow`` fails, as on a GPU
    machine lent without the tracking stack.
    """
    prefix, env = [sys.executable, str(SCRIPT)], None
    if block_mlflow:
        code = (
            "import runpy, sys; sys.modules['mlflow'] = None; sys.argv = sys.argv[1:]; "
            f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')"
        )
        prefix = [sys.executable, "-c", code, str(SCRIPT)]
        # the script's folder first on the path, as `python SCRIPT` puts it (its siblings)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(SCRIPT.parent), os.environ.get("PYTHONPATH")) if p
        )}
    proc = subprocess.Popen(
        [*prefix, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def finite(tree) -> bool:
    if isinstance(tree, dict):
        return all(finite(v) for v in tree.values())
    if isinstance(tree, list):
        return all(finite(v) for v in tree)
    return not isinstance(tree, float) or math.isfinite(tree)


@pytest.mark.slow
def test_reduced_gpu_check_runs_every_step(tmp_path):
    out = tmp_path / "figures.json"
    proc = run("--reduced", "--workdir", str(tmp_path / "work"), "--json", str(out), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "all steps ran" in proc.stdout
    figures = json.loads(out.read_text())
    assert list(figures) == [*FIGURES, *TRACKED] and finite(figures)
    memory, bench, precision, matching, training, ddp = (figures[n] for n in figures)
    assert bench["fp32"]["forward_ratio"] > 0 and bench["amp"]["amp"] == "bf16"
    assert training["amp"] == "bf16" and training["grad_scaler_scale"] is None
    assert {"2", "4"} == set(memory["batches"])
    assert all(b["peak_mib"] > 0 for b in memory["batches"].values())
    assert ddp["backend"] == "gloo" and "joined a gloo process group: rank 0 of 1" in proc.stdout
    assert "mAP_e2e" in ddp["stdout"]  # pss.train printed its metrics


@pytest.mark.slow
def test_the_figures_need_no_mlflow(tmp_path):
    # What the lent GPU machine runs, on a CPU where MLflow cannot be imported: every
    # figure is printed, and the steps that train through MLflow say they did not run.
    out = tmp_path / "figures.json"
    args = ("--reduced", "--figures-only", "--workdir", str(tmp_path), "--json", str(out))
    proc = run(*args, timeout=900, block_mlflow=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "mlflow imported: no" in proc.stdout and "all steps ran" in proc.stdout
    assert f"not run (--figures-only): {', '.join(TRACKED)}" in proc.stdout
    figures = json.loads(out.read_text())
    assert list(figures) == list(FIGURES) and finite(figures)
    memory, bench, precision, matching = (figures[n] for n in FIGURES)
    for line in ("tv_train_ratio", "postprocess_ratio", "forward_ratio", "train_ratio"):
        assert bench["fp32"][line] > 0 and bench["amp"][line] > 0, line
    ratios = precision["ratios"]
    for what in ("forward", "train_step"):
        assert ratios[f"{what}_bf16_over_fp32"] > 0
        assert ratios[f"{what}_fp32_channels_last"] > 0 and ratios[f"{what}_bf16_channels_last"] > 0
    assert matching["2"]["syncs"] == {"matching": None, "pss_loss": None, "losses": None}
    assert matching["2"]["ms"]["matching"] > 0 and matching["2"]["candidate_pairs"] > 0
    printed = proc.stdout
    for text in (
        "train step ours / tv (FrozenBN)",
        "post-proc e2e / nms",
        "forward bf16 / fp32",
        "train_step bf16 channels-last / contig",
        "channels-last at train.amp's default here (fp32)",
        "host synchronisations: matching cpu, pss_loss cpu, losses cpu (targets matching <= 1: "
        "cpu, pss_loss <= 2: cpu)",
        "one more image costs",
    ):
        assert text in printed, text


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the real check runs")
def test_the_real_check_needs_cuda(tmp_path):
    proc = run("--workdir", str(tmp_path), timeout=120)
    assert proc.returncode == 2
    assert "no CUDA device: the GPU check needs one (--reduced runs its CPU form)" in proc.stderr
