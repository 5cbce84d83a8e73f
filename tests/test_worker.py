"""What a sweep job does when SLURM preempts it (the cluster tests exercise it end to end)."""

from __future__ import annotations

import signal
import subprocess

import pytest

from pss.sweep.worker import CellJob, Payload


def test_the_requeue_command_outlives_the_sigterm_of_a_preemption():
    """submitit's USR2 handler calls ``checkpoint`` and then runs ``scontrol requeue`` in a
    child; the SIGTERM a preemption also sends must not kill that child."""
    payload = Payload([], {}, "e", "cell", "run-1", {}, None)
    job = CellJob(payload)
    before = signal.getsignal(signal.SIGTERM)
    child = None
    try:
        delayed = job.checkpoint()
        assert delayed.function is job and job.run_id == "run-1"  # requeued into its run
        child = subprocess.Popen(["sleep", "30"])  # stands for `scontrol requeue`
        child.send_signal(signal.SIGTERM)
        with pytest.raises(subprocess.TimeoutExpired):
            child.wait(timeout=1)
    finally:
        signal.signal(signal.SIGTERM, before)
        if child is not None:
            child.kill()
            child.wait()
