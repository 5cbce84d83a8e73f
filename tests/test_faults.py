"""Faults caused for real, and what survives them.

- the sweep driver SIGKILLed between SLURM accepting its jobs and writing them down:
  the next driver adopts those jobs (found by their submission's name) and submits
  nothing twice;
- the tracking server killed (SIGKILL, its whole process group) and started again
  while a job logs: the job retries, no metric is lost, the store is intact;
- the disk filling up while a checkpoint is written (a small tmpfs): the previous
  checkpoint stays loadable, the run fails saying so;
- a truncated checkpoint on resume: a clear message naming the file, and the run is
  not restarted from scratch.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pss.config import load_config
from pss.engine.checkpoint import CheckpointNotSaved, load_checkpoint
from pss.engine.train import RunInfo, train
from pss.sweep.server import ensure_server, stop_server
from pss.testing import REPO
from pss.testing.configs import tiny_train_overrides, write_spec, write_tiny_overlay
from pss.testing.waiting import wait_for
from pss.tracking.store import read_runs

SPEC = """
name: killed
base: @EXP@/fcos_pss_r50_3x.yaml
smoke: overlay.yaml
cells:
  - id: one
  - id: two
"""


@pytest.mark.slurm
@pytest.mark.slow
def test_a_driver_killed_while_submitting_loses_and_duplicates_nothing(tmp_path, shapes_root):
    write_tiny_overlay(tmp_path / "overlay.yaml", shapes_root)
    spec = write_spec(tmp_path / "killed.yaml", SPEC)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # An sbatch that submits for real, then SIGKILLs its caller: the driver dies after
    # SLURM accepted the job array and before it wrote the job ids down.
    wrapper = tmp_path / "bin" / "sbatch"
    wrapper.parent.mkdir()
    wrapper.write_text(
        f'#!/bin/sh\nout=$("{shutil.which("sbatch")}" "$@") || exit $?\n'
        'echo "$out"\nkill -9 $PPID\nsleep 5\n'
    )
    wrapper.chmod(0o755)
    env = {**os.environ, "MLFLOW_TRACKING_URI": store}
    argv = [sys.executable, str(REPO / "sweeps" / "run.py"), str(spec), "--smoke",
            "--executor", "slurm", "--cluster", str(REPO / "slurm" / "dev.yaml")]
    folder = tmp_path / "outputs" / "sweeps" / "killed-smoke"
    try:
        killed = subprocess.run(
            [*argv, "--no-wait"], cwd=tmp_path, capture_output=True, text=True, timeout=600,
            env={**env, "PATH": f"{wrapper.parent}:{env['PATH']}"},
        )
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        entries = json.loads((folder / "ledger.json").read_text())
        assert all(e["token"] and e["job_id"] is None for e in entries.values())  # unrecorded
        first = {f"pss-{e['token']}" for e in entries.values()}
        orphans = _queued(first)
        assert len(orphans) == 2  # SLURM has both jobs, held; the ledger does not know them
        assert {j["reason"] for j in orphans.values()} == {"JobHeldUser"}

        again = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True,
                               timeout=1800, env=env)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "cancelling 2 held jobs of an interrupted submission" in again.stderr
        # The held jobs never ran; the cells were submitted once more, and ran once.
        cancelled = _accounted(list(orphans))
        assert {j["state"] for j in cancelled.values()} == {"CANCELLED"}, cancelled
        assert {j["nodes"] for j in cancelled.values()} == {"None assigned"}, cancelled
        entries = json.loads((folder / "ledger.json").read_text())
        ran = _accounted([e["job_id"] for e in entries.values()])
        assert len(ran) == 2 and {j["state"] for j in ran.values()} == {"COMPLETED"}, ran
        assert all(e["released"] for e in entries.values())
        runs = read_runs("killed-smoke", store)
        assert sorted(r.name for r in runs) == ["one", "two"]  # one run per cell
        assert {r.status for r in runs} == {"FINISHED"}
    finally:
        ledger = folder / "ledger.json"
        if ledger.is_file():
            names = {f"pss-{e['token']}" for e in json.loads(ledger.read_text()).values()}
            subprocess.run(["scancel", f"--name={','.join(sorted(names))}"], capture_output=True)
        stop_server(store)


def _queued(names: set[str]) -> dict[str, dict[str, str]]:
    """Array task id -> state and reason of the jobs SLURM has queued under these names."""
    out = subprocess.run(
        ["squeue", "-h", "-r", "-o", "%i|%T|%r", f"--name={','.join(sorted(names))}"],
        capture_output=True, text=True, check=True,
    ).stdout
    rows = (line.split("|") for line in out.splitlines())
    return {i: {"state": state, "reason": reason} for i, state, reason in rows}


def _accounted(job_ids: list[str]) -> dict[str, dict[str, str]]:
    """Job id -> final state and node list of ended jobs, asked by id (a job held and
    cancelled before it was eligible keeps no name in sacct, and the tasks of an array
    that never started stay one line, '51_[0-1]'). Waits until slurmdbd has recorded
    their end, which it writes a moment after the fact."""
    arrays = sorted({i.split("_")[0] for i in job_ids})

    def ended() -> dict[str, dict[str, str]]:
        out = subprocess.run(
            ["sacct", "-n", "-X", "-P", "-o", "JobID,State,NodeList", "-j", ",".join(arrays)],
            capture_output=True, text=True, check=True,
        ).stdout
        rows = [line.split("|") for line in out.splitlines()]
        jobs = {i: {"state": state.split()[0], "nodes": nodes} for i, state, nodes in rows}
        final = all(j["state"] in ("CANCELLED", "COMPLETED", "FAILED") for j in jobs.values())
        return jobs if jobs and final else {}

    return wait_for(ended, "the jobs' accounting records", 600)


WRITER = textwrap.dedent(
    """
    import sys, time
    from pss.tracking.logger import Tracker
    tracker = Tracker.create("restarts", "job")
    print(tracker.run_id, flush=True)
    for step in range(int(sys.argv[1])):
        tracker.log_metrics({"loss": 1.0 / (step + 1), "mAP_e2e": float(step)}, step=step)
        time.sleep(0.2)
    tracker.finish()
    """
)


def _steps(db: Path, run_id: str) -> list[int]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        rows = con.execute(
            "SELECT step FROM metrics WHERE run_uuid = ? AND key = 'mAP_e2e'", (run_id,)
        ).fetchall()
    return sorted(r[0] for r in rows)


@pytest.mark.slow
def test_a_tracking_server_killed_and_restarted_loses_no_metric(tmp_path):
    db = tmp_path / "mlflow.db"
    backend = f"sqlite:///{db}"
    server = ensure_server(backend)
    steps = 40
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(steps)], env={**os.environ, **server.env()},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        run_id = writer.stdout.readline().strip()
        wait_for(lambda: len(_steps(db, run_id)) >= 8, "the job to log a few steps", 600)
        os.killpg(server.pid, signal.SIGKILL)  # the whole server, at once
        before = len(_steps(db, run_id))
        time.sleep(2)  # the job now fails to reach it and retries
        restarted = ensure_server(backend)
        assert restarted.url == server.url  # same port: the job's URL still works
        _, err = writer.communicate(timeout=900)
        assert writer.returncode == 0, err[-3000:]
    finally:
        if writer.poll() is None:
            writer.kill()
        stop_server(backend)
    logged = _steps(db, run_id)
    assert logged == list(range(steps)), f"before the kill {before}, after {logged}"
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    (run,) = read_runs("restarts", backend)
    assert run.status == "FINISHED" and run.metrics["mAP_e2e"] == steps - 1


@pytest.fixture
def small_disk(tmp_path):
    """A 400 MB tmpfs mounted for the test (the suite runs as root), unmounted after."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_full_disk_keeps_the_previous_checkpoint_and_fails_the_run(
    small_disk, shapes_root, tracking
):
    out = small_disk / "run"
    cfg = load_config([], tiny_train_overrides(shapes_root, out))

    def fill_after_first_epoch(epoch: int, metrics: dict) -> None:
        if epoch == 2:  # epoch 1's checkpoint is written; leave too little room for the next
            left = shutil.disk_usage(small_disk).free - (1 << 20)
            chunk = b"\0" * (16 << 20)
            with open(small_disk / "filler", "wb") as handle:
                while left > 0:
                    left -= handle.write(chunk[: min(left, len(chunk))])

    with pytest.raises(CheckpointNotSaved) as err:
        train(cfg, run=RunInfo(experiment="diskfull"), on_epoch=fill_after_first_epoch)
    message = str(err.value)
    assert str(out / "last.pth") in message and "the previous checkpoint is kept" in message
    assert "No space left on device" in message or "write" in message
    state = load_checkpoint(out / "last.pth")  # still the whole epoch-1 checkpoint
    assert state["epoch"] == 1
    assert not list(out.glob(".last.pth.*")), "a partial temporary file was left behind"
    (run,) = read_runs("diskfull")
    assert run.status == "FAILED"
    assert "CheckpointNotSaved" in (Path(run.artifact_uri) / "traceback.txt").read_text()


def test_a_truncated_checkpoint_stops_the_resume_with_a_clear_message(shapes_root, tracking):
    out = Path.cwd() / "truncated"
    overrides = tiny_train_overrides(shapes_root, out)
    train(load_config([], overrides), run=RunInfo(experiment="truncated"), stop_after_epoch=1)
    checkpoint = out / "last.pth"
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) // 2])
    empty = Path("empty.yaml")
    empty.write_text("{}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pss.train", str(empty), "--resume", "auto",
         *sum((["--set", o] for o in overrides), [])],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {checkpoint}: "), err
    assert "cannot read checkpoint" in err and "delete it to start this run over" in err
    assert checkpoint.read_bytes() == data[: len(data) // 2]  # untouched: not restarted
    assert sorted(p.name for p in (out / "eval").iterdir()) == ["epoch_001"]
