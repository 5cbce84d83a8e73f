"""``benchmarks/gpu_check.py`` (``make gpu-check``) in its reduced CPU form, so it cannot rot.

No GPU is lent to CI: the real check (float16 with a GradScaler, GPU memory,
NCCL) runs on a GPU machine only. Here the same four steps run at tiny sizes
on the CPU (bfloat16, resident memory, gloo); what the figures say is not
tested, only that every step ran and gave finite numbers.
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
STEPS = (
    "bench_head.py without and with AMP",
    "short AMP training of the smoke config",
    "peak memory per image at batch 2 and 4",
    "DDP at world size 1",
)


def run(*args: str, timeout: float) -> subprocess.CompletedProcess:
    """Run the script in its own session; the whole session is killed if it overruns."""
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), *args],
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
    assert list(figures) == list(STEPS) and finite(figures)
    bench, training, memory, ddp = (figures[name] for name in STEPS)
    assert bench["fp32"]["forward_ratio"] > 0
    assert training["amp"] == "bf16" and training["grad_scaler_scale"] is None
    assert {"2", "4"} == set(memory["batches"])
    assert all(b["peak_mib"] > 0 for b in memory["batches"].values())
    assert ddp["backend"] == "gloo" and "joined a gloo process group: rank 0 of 1" in proc.stdout
    assert "mAP_e2e" in ddp["stdout"]  # pss.train printed its metrics


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the real check runs")
def test_the_real_check_needs_cuda(tmp_path):
    proc = run("--workdir", str(tmp_path), timeout=120)
    assert proc.returncode == 2
    assert "no CUDA device: the GPU check needs one (--reduced runs its CPU form)" in proc.stderr
