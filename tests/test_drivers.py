"""Many drivers at once: each cell is submitted once, a fresh store is created once, and a
tracking server a sweep starts is reachable only with its password.

Real parts: sweep drivers as separate processes against the one-node SLURM cluster of
slurm/dev, SQLite stores that do not exist yet, MLflow tracking servers.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pss.sweep.driver import main
from pss.sweep.lock import SweepLock
from pss.sweep.server import ensure_server, server_status, stop_server
from pss.testing import REPO
from pss.testing.configs import write_spec, write_tiny_overlay
from pss.tracking import logger as tracking
from pss.tracking.store import CREDENTIALS_ENV, read_runs

SPEC = """
name: crowd
base: @EXP@/fcos_pss_r50_3x.yaml
smoke: overlay.yaml
cells:
  - id: a
  - id: b
  - id: c
"""
CELLS = 3


@pytest.fixture
def workdir(tmp_path, monkeypatch, shapes_root):
    monkeypatch.chdir(tmp_path)
    write_tiny_overlay(tmp_path / "overlay.yaml", shapes_root)
    write_spec(tmp_path / "crowd.yaml", SPEC)
    return tmp_path


def _drivers(
    workdir: Path, n: int, env: dict[str, str], uri: str
) -> list[subprocess.CompletedProcess]:
    """``n`` drivers of the same sweep started at once (SLURM, --no-wait), all finished.

    The test holds the sweep's lock while they start, so that every driver meets a
    held lock (whatever the timing), then lets go: one submits, the others find it done.
    """
    argv = [
        sys.executable,
        str(REPO / "sweeps" / "run.py"),
        str(workdir / "crowd.yaml"),
        "--smoke",
        "--executor",
        "slurm",
        "--cluster",
        str(REPO / "slurm" / "dev.yaml"),
        "--no-wait",
    ]
    procs, errs = [], []
    with pytest.MonkeyPatch.context() as mp:
        _log_in(mp, env)
        lock = SweepLock(tracking.client(uri), "crowd-smoke")
        assert lock.try_acquire()
        try:
            _start_and_wait_for_holder(argv, workdir, env, n, procs, errs)
        finally:
            lock.release()
    done = []
    for proc, err in zip(procs, errs):
        out = proc.stdout.read()
        proc.wait(timeout=600)
        err.thread.join()
        done.append(subprocess.CompletedProcess(argv, proc.returncode, out, "".join(err)))
    return done


def _log_in(mp: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """This process's environment for the store of ``env`` (URI, server login)."""
    mp.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
    if CREDENTIALS_ENV in env:
        login = json.loads(Path(env[CREDENTIALS_ENV]).read_text())
        mp.setenv("MLFLOW_TRACKING_USERNAME", login["username"])
        mp.setenv("MLFLOW_TRACKING_PASSWORD", login["password"])


def _start_and_wait_for_holder(
    argv: list[str], workdir: Path, env: dict[str, str], n: int, procs: list, errs: list
) -> None:
    """Start ``n`` drivers; return when each says who holds the sweep (this test) and waits."""
    for _ in range(n):
        proc = subprocess.Popen(
            argv, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        procs.append(proc)
        errs.append(_collect(proc.stderr))
    holder = f"pid {os.getpid()}"
    deadline = time.monotonic() + 600  # only catches a hang
    while not all(holder in "".join(e) for e in errs):
        assert time.monotonic() < deadline, "drivers did not report the lock's holder"
        assert all(p.poll() is None for p in procs), "".join(errs[0])[-3000:]
        time.sleep(0.2)


class _Lines(list):
    thread: threading.Thread


def _collect(stream) -> _Lines:
    """The lines of ``stream`` as they come, read by a thread."""
    lines = _Lines()
    lines.thread = threading.Thread(target=lambda: lines.extend(stream), daemon=True)
    lines.thread.start()
    return lines


def _submitted(workdir: Path) -> list[str]:
    """The SLURM array task ids submitit made folders for, whoever submitted them (an
    array also gets a folder of its own id, without a task index: not counted)."""
    folder = workdir / "outputs" / "sweeps" / "crowd-smoke" / "submitit"
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and "_" in p.name)


def _cancel(workdir: Path) -> None:
    ledger = workdir / "outputs" / "sweeps" / "crowd-smoke" / "ledger.json"
    if ledger.is_file():
        ids = [str(e["job_id"]) for e in json.loads(ledger.read_text()).values() if e["job_id"]]
        subprocess.run(["scancel", *ids], capture_output=True)


def _check_once(workdir: Path, results: list, uri: str, env: dict[str, str]) -> None:
    for r in results:
        assert r.returncode == 0, r.stderr[-2000:]
        assert "Traceback" not in r.stderr, r.stderr[-3000:]
        assert "another driver is submitting this sweep" in r.stderr
    submitted = [r for r in results if "after the other driver, 3 jobs to submit" in r.stderr]
    assert len(submitted) == 1, [r.stderr for r in results]  # the others found it done
    assert len(_submitted(workdir)) == CELLS, _submitted(workdir)  # each cell once
    with pytest.MonkeyPatch.context() as mp:
        _log_in(mp, {"MLFLOW_TRACKING_URI": uri, **env})
        # A fifth driver waits for the jobs (each creates its run when it starts).
        argv = [str(workdir / "crowd.yaml"), "--smoke", "--executor", "slurm",
                "--cluster", str(REPO / "slurm" / "dev.yaml"), "--no-report"]
        assert main(argv) == 0
        runs = read_runs("crowd-smoke", uri)
    assert sorted(r.name for r in runs) == ["a", "b", "c"]  # one run per cell
    assert {r.status for r in runs} == {"FINISHED"}
    assert len(_submitted(workdir)) == CELLS  # the fifth submitted nothing either


@pytest.mark.slurm
def test_four_drivers_at_once_on_a_new_local_store_submit_each_cell_once(workdir):
    store = f"sqlite:///{workdir / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": store}
    try:
        results = _drivers(workdir, 4, env, store)
        _check_once(workdir, results, store, {})
    finally:
        _cancel(workdir)
        stop_server(store)  # the SLURM jobs' server the first driver started


@pytest.mark.slurm
def test_four_drivers_at_once_through_a_tracking_server_submit_each_cell_once(workdir):
    backend = f"sqlite:///{workdir / 'served.db'}"
    server = ensure_server(backend)
    env = {**os.environ, **server.env()}
    try:
        results = _drivers(workdir, 4, env, server.url)
        _check_once(workdir, results, server.url, server.env())
    finally:
        _cancel(workdir)
        stop_server(backend)


WRITER = """
import sys
from pss.tracking.logger import Tracker
tracker = Tracker.create("fresh", f"writer-{sys.argv[1]}")
tracker.log_metrics({"x": float(sys.argv[1])}, step=1)
tracker.finish()
"""


def test_eight_processes_on_a_store_that_does_not_exist_yet(tmp_path):
    store = tmp_path / "new" / "mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store}"}
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(i)], env=env, cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(8)
    ]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    for code, err in results:
        assert code == 0 and "Traceback" not in err, err[-3000:]
    runs = read_runs("fresh", f"sqlite:///{store}")
    assert sorted(r.metrics["x"] for r in runs) == [float(i) for i in range(8)]
    assert {r.status for r in runs} == {"FINISHED"}


def _listening(port: int) -> set[str]:
    """The local addresses (IPv4) with a socket listening on ``port``."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


def _get(url: str, login: tuple[str, str] | None = None) -> int:
    request = urllib.request.Request(url)
    if login:
        token = base64.b64encode(f"{login[0]}:{login[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_tracking_server_binds_one_address_and_needs_its_password(tmp_path, monkeypatch):
    backend = f"sqlite:///{tmp_path / 'mlflow.db'}"
    server = ensure_server(backend)
    try:
        host, port = server.url.removeprefix("http://").rsplit(":", 1)
        assert _listening(int(port)) == {socket.gethostbyname(host)} != {"0.0.0.0"}
        credentials = json.loads(server.credentials.read_text())
        assert server.credentials.stat().st_mode & 0o777 == 0o600
        api = f"{server.url}/api/2.0/mlflow/experiments/search?max_results=5"
        assert _get(api) == 401  # no password: refused
        assert _get(api, ("pss", "not-the-password")) == 401
        assert _get(api, (credentials["username"], credentials["password"])) == 200
        assert _get(f"{server.url}/health") == 200  # health stays open
        # A job with the credentials file logs normally, even when it inherited another
        # server's login from the process that started it.
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "pss")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "another-servers-password")
        from pss.tracking.logger import Tracker

        tracker = Tracker.create("served", "job")
        tracker.log_metrics({"mAP_e2e": 12.5}, step=1)
        tracker.finish()
        run = MlflowClient(server.url).get_run(tracker.run_id)
        assert run.data.metrics == {"mAP_e2e": 12.5} and run.info.status == "FINISHED"
        assert server_status(backend) == server  # a second driver reuses it
    finally:
        group = server.pid
        assert main(["server", "stop", "--store", backend]) == 0
    alive = [p for p in Path("/proc").glob("[0-9]*/stat") if _in_group(p, group)]
    assert not alive, f"processes of the server's group still run: {alive}"
    assert server_status(backend) is None


def _in_group(stat: Path, group: int) -> bool:
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return int(fields[2]) == group and fields[0] != "Z"


ARRAYS = """
name: crowd
base: @EXP@/fcos_pss_r50_3x.yaml
smoke: overlay.yaml
seeds: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
cells:
  - id: a
"""


@pytest.mark.slurm
def test_a_sweep_larger_than_max_array_size_is_split_into_arrays(workdir, monkeypatch):
    from pss.sweep.slurm import max_array_size

    limit = max_array_size()
    assert limit == 8, "slurm/dev sets MaxArraySize=8 (PSS_SLURM_MAX_ARRAY_SIZE)"
    write_spec(workdir / "crowd.yaml", ARRAYS)  # 10 jobs: one array of 8, one of 2
    store = f"sqlite:///{workdir / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    argv = [str(workdir / "crowd.yaml"), "--smoke", "--executor", "slurm",
            "--cluster", str(REPO / "slurm" / "dev.yaml"), "--no-wait"]
    try:
        assert main(argv) == 0
        ledger = json.loads((workdir / "outputs/sweeps/crowd-smoke/ledger.json").read_text())
        arrays: dict[str, list[str]] = {}
        for entry in ledger.values():
            arrays.setdefault(entry["job_id"].split("_")[0], []).append(entry["job_id"])
        assert sorted(len(ids) for ids in arrays.values()) == [2, 8], arrays
        assert len({e["token"] for e in ledger.values()}) == 2  # one submission per array
    finally:
        _cancel(workdir)
        stop_server(store)
