"""Which MLflow store sweep jobs log to, and the tracking server that SLURM jobs log through.

Jobs of a local or debug sweep write straight into the store (SQLite takes a
handful of concurrent local writers; :func:`pss.tracking.store.retry` rides out its
locks). Jobs on SLURM may run on other nodes, where a SQLite file on a shared
file system is not safe for concurrent writers: for them the suite starts an
``mlflow server`` on the local store (one per store, reused by later sweeps)
and the jobs log over HTTP. A ``MLFLOW_TRACKING_URI`` (or a profile's
``tracking_uri``) that is already a server is used as it is.

What the server exposes (docs/cluster.md): it listens on one address, the
profile's ``server_host`` or else the address this host's name resolves to
(what compute nodes use to reach the submit host), never on every interface;
it accepts only the host names of that address in the Host header; and it
requires a user name and password (MLflow's basic-auth app). The password is
made once per store and kept, with the server's other files, beside the store
in files only the user can read (mode 600); jobs read it from the file named by
``PSS_TRACKING_CREDENTIALS`` (:func:`pss.tracking.logger.client`). ``/health`` stays
open.

Lifetime: the server runs detached, in its own process group, so that jobs
submitted with ``--no-wait`` can log after the driver exits. It runs until
``sweeps/run.py server stop`` (which stops its whole process group within
seconds); ``sweeps/run.py server status`` shows it. A driver that finds it
dead starts it again on the same port, so running jobs keep their URL (they
retry while it is down).
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pss.errors import UserError
from pss.sweep import process
from pss.sweep.profile import ClusterProfile
from pss.tracking.store import CREDENTIALS_ENV, check_store, current_uri, sqlite_path

REMOTE = ("http://", "https://", "databricks")
USER = "pss"


@dataclass(frozen=True)
class Server:
    """A tracking server this suite started on a local store."""

    url: str
    pid: int  # leader of its process group
    backend: str
    credentials: Path  # JSON {"username", "password"}, mode 600

    def env(self) -> dict[str, str]:
        """What a process needs in its environment to log through this server."""
        return {"MLFLOW_TRACKING_URI": self.url, CREDENTIALS_ENV: str(self.credentials)}


def _files(backend_uri: str) -> dict[str, Path]:
    """The server's files, beside the store: .<store>.server.{json,log,credentials,...}."""
    path = sqlite_path(backend_uri) or _file_store(backend_uri)
    if path is None:
        raise UserError(f"cannot serve tracking store {backend_uri}; set MLFLOW_TRACKING_URI")
    path = path.resolve()
    base = f".{path.name}.server"
    suffixes = {
        "state": "json",
        "log": "log",
        "credentials": "credentials",
        "auth_ini": "auth.ini",
        "auth_db": "auth.db",
        "lock": "lock",
    }
    return {"store": path, **{k: path.parent / f"{base}.{s}" for k, s in suffixes.items()}}


def _file_store(uri: str) -> Path | None:
    if uri.startswith("sqlite:"):
        return None
    if uri.startswith("file://"):
        return Path(uri.removeprefix("file://"))
    if "://" not in uri:
        return Path(uri)
    return None


def _private(path: Path, text: str) -> None:
    """Write ``text`` to a file only the user can read (created that way, not chmod-ed later)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(path, 0o600)  # an existing file keeps its mode through O_CREAT


def healthy(url: str, timeout: float = 2.0) -> bool:
    """Whether an MLflow server answers on ``url`` (its open ``/health``)."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


def _port_free(host: str, port: int) -> bool:
    """Whether the server could listen on ``port`` (as it does, despite TIME_WAIT sockets)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str) -> int:
    """A port of ``host`` no one listens on now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def default_host() -> str:
    """The address this host's name resolves to: what other nodes use to reach it."""
    return socket.gethostbyname(socket.gethostname())


def server_status(backend_uri: str) -> Server | None:
    """The server this suite runs on ``backend_uri``, if it is up."""
    files = _files(backend_uri)
    try:
        state = json.loads(files["state"].read_text())
        server = Server(state["url"], int(state["pid"]), state["backend"], files["credentials"])
    except (OSError, ValueError, KeyError):
        return None
    if server.backend == backend_uri and process.group_alive(server.pid) and healthy(server.url):
        return server
    return None


def ensure_server(backend_uri: str, host: str | None = None, wait_s: float = 90.0) -> Server:
    """The tracking server on ``backend_uri``, started (detached) if it is not up."""
    files = _files(backend_uri)
    check_store(backend_uri)  # not an MLflow store: refused before any file is made beside it
    files["store"].parent.mkdir(parents=True, exist_ok=True)
    with open(files["lock"], "w") as lock:  # one server per store, whoever asks at once
        fcntl.flock(lock, fcntl.LOCK_EX)
        running = server_status(backend_uri)
        if running is not None:
            return running
        return _start(backend_uri, files, host or default_host(), wait_s)


def _start(backend_uri: str, files: dict[str, Path], host: str, wait_s: float) -> Server:
    from pss.tracking.logger import ensure_store  # MLflow: only to start a server

    ensure_store(backend_uri)  # the server must not migrate a new store itself
    port = _previous_port(files, host) or free_port(host)
    password = _credentials(files)
    _private(
        files["auth_ini"],
        "[mlflow]\n"
        "default_permission = NO_PERMISSIONS\n"
        f"database_uri = sqlite:///{files['auth_db']}\n"
        f"admin_username = {USER}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n",
    )
    names = sorted({host, socket.gethostname(), socket.getfqdn()})
    allowed = ",".join([*names, *(f"{n}:{port}" for n in names)])
    command = [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--backend-store-uri",
        backend_uri,
        "--artifacts-destination",
        str(files["store"].parent / "mlartifacts"),
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "2",
        "--app-name",
        "basic-auth",
        "--allowed-hosts",
        allowed,
    ]
    env = {
        **os.environ,
        "MLFLOW_AUTH_CONFIG_PATH": str(files["auth_ini"]),
        "MLFLOW_AUTH_ADMIN_USERNAME": USER,
        "MLFLOW_AUTH_ADMIN_PASSWORD": password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32),
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # no job runner: tracking only
    }
    url = f"http://{host}:{port}"
    with open(files["log"], "ab") as log:
        proc = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=files["store"].parent,
            start_new_session=True,  # its own process group: stopped as a whole
        )
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if healthy(url):
            state = {"pid": proc.pid, "url": url, "backend": backend_uri, "started": time.time()}
            _private(files["state"], json.dumps(state))
            return Server(url, proc.pid, backend_uri, files["credentials"])
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    process.stop_group(proc.pid)
    tail = files["log"].read_text(errors="replace")[-2000:] if files["log"].exists() else ""
    raise RuntimeError(f"the MLflow tracking server did not start ({files['log']}):\n{tail}")


def _previous_port(files: dict[str, Path], host: str) -> int | None:
    """The port a dead server had, when it is free: running jobs know that URL."""
    try:
        port = int(json.loads(files["state"].read_text())["url"].rsplit(":", 1)[1])
    except (OSError, ValueError, KeyError, IndexError):
        return None
    return port if _port_free(host, port) else None


def _credentials(files: dict[str, Path]) -> str:
    """The store's server password: made once, kept in a file only the user can read."""
    try:
        return json.loads(files["credentials"].read_text())["password"]
    except (OSError, ValueError, KeyError):
        password = secrets.token_urlsafe(24)
        _private(files["credentials"], json.dumps({"username": USER, "password": password}))
        return password


def stop_server(backend_uri: str) -> bool:
    """Stop the server of ``backend_uri`` (its whole process group); False if none ran."""
    files = _files(backend_uri)
    try:
        pid = int(json.loads(files["state"].read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return False
    stopped = process.stop_group(pid)
    files["state"].unlink(missing_ok=True)
    return stopped


def uri_for_jobs(executor: str, profile: ClusterProfile) -> tuple[str, dict[str, str]]:
    """The tracking URI jobs of ``executor`` should use, and the environment they need.

    The profile's ``tracking_uri`` if it names one; else this process's store, through a
    server of this suite's (started if needed) for SLURM jobs when it is a local file.
    """
    if profile.tracking_uri:
        return profile.tracking_uri, {}
    uri = current_uri()
    if executor != "slurm" or uri.startswith(REMOTE):
        return uri, {}
    server = ensure_server(uri, profile.server_host)
    return server.url, {CREDENTIALS_ENV: str(server.credentials)}
