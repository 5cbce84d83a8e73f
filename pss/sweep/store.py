"""Which MLflow store sweep jobs log to, and a tracking server when they need one.

Jobs of a local or debug sweep write straight into the store (SQLite takes a
handful of concurrent local writers; :func:`pss.tracking.retry` rides out its
locks). Jobs on SLURM may run on other nodes, where a SQLite file on a shared
file system is not safe for concurrent writers: for them the suite starts an
``mlflow server`` on the local store (or reuses the one it started before) and
the jobs log over HTTP. A ``MLFLOW_TRACKING_URI`` that is already a server is
used as it is.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from pss.errors import UserError
from pss.runs import current_uri

REMOTE = ("http://", "https://", "databricks")


def _local_path(uri: str) -> Path | None:
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).resolve()
    if uri.startswith("file://"):
        return Path(uri.removeprefix("file://")).resolve()
    if "://" not in uri:
        return Path(uri).resolve()
    return None


def _healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def ensure_server(backend_uri: str, wait_s: float = 90.0) -> str:
    """URL of a tracking server on ``backend_uri``, starting one (detached) if needed."""
    path = _local_path(backend_uri)
    if path is None:
        raise UserError(f"cannot serve tracking store {backend_uri}; set MLFLOW_TRACKING_URI")
    state_file = path.parent / f".{path.name}.server.json"
    if state_file.is_file():
        try:
            state = json.loads(state_file.read_text())
            mine = state.get("backend") == backend_uri and _alive(state["pid"])
            if mine and _healthy(state["url"]):
                return state["url"]
        except (ValueError, KeyError):
            pass
    port = _free_port()
    host = socket.gethostname()
    url = f"http://{host}:{port}"
    artifacts = path.parent / "mlartifacts"
    log_file = path.parent / f".{path.name}.server.log"
    command = [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--backend-store-uri",
        backend_uri,
        "--artifacts-destination",
        str(artifacts),
        "--host",
        "0.0.0.0",
        "--port",
        str(port),
        "--workers",
        "2",
        "--allowed-hosts",
        f"{host},{host}:{port},localhost,localhost:{port},127.0.0.1,127.0.0.1:{port},*",
    ]
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if _healthy(url):
            state_file.write_text(json.dumps({"pid": proc.pid, "url": url, "backend": backend_uri}))
            return url
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    proc.terminate()
    tail = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else ""
    raise RuntimeError(f"the MLflow tracking server did not start ({log_file}):\n{tail}")


def uri_for_jobs(executor: str) -> str:
    """The tracking URI jobs of ``executor`` should use (see the module docstring)."""
    uri = current_uri()
    if executor != "slurm" or uri.startswith(REMOTE):
        return uri
    return ensure_server(uri)
