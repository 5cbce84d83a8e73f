"""Reading runs back from the MLflow store: fast, consistent, and without importing MLflow.

    uri = current_uri()                               # MLflow's, resolved like MLflow does
    runs = read_runs("table5-smoke", uri)             # every run, newest first
    history = metric_history(uri, run_ids, "mAP_e2e")  # {run id: [(step, value), ...]}

``sweeps/run.py status``, a re-run of a finished sweep and a report read every
run of an experiment: its tags, status, times and the latest value of each
metric. On a local SQLite store (MLflow's default) that is a few plain SQL
queries in **one read transaction**: a snapshot, so runs that are being logged
meanwhile are either wholly in it or not at all, and no import of MLflow
(which alone costs seconds). Any other store (a tracking server, a file
store, a schema this code does not know) is read through MLflow's own
``MlflowClient.search_runs``, which gives the same records.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import sqlite3
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote

from pss.errors import UserError

# MLflow's default store (mlflow.tracking._tracking_service.utils), resolved the same way.
DEFAULT_DB = "mlflow.db"
LEGACY_FILE_STORE = "mlruns"
# The alembic revision of MLflow 3.17's SQL schema: the tables read below.
KNOWN_SCHEMA = "dc11669786a5"
PAGE = 1000  # runs per search_runs page
T = TypeVar("T")


def _transient(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(s in text for s in ("database is locked", "busy", "connection", "timed out", "503"))


def retry(fn: Callable[..., T], *args: Any, attempts: int = 12, **kwargs: Any) -> T:
    """Call ``fn``, retrying with jittered back-off on transient store errors (locks, network)."""
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - MlflowException, sqlalchemy, requests...
            if attempt == attempts - 1 or not _transient(exc):
                raise
            time.sleep(min(10.0, 0.2 * 2**attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")


def current_uri() -> str:
    """This process's tracking URI, as MLflow resolves it, without importing MLflow.

    ``MLFLOW_TRACKING_URI`` when set; else ``./mlruns`` (as a file URI) where an old
    file store already holds experiments there, else SQLite ``./mlflow.db``; paths
    made absolute.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    mlruns = Path(LEGACY_FILE_STORE)
    if mlruns.is_dir() and any(
        p.is_dir() and p.name.isdigit() and (p / "meta.yaml").exists() for p in mlruns.iterdir()
    ):
        return mlruns.resolve().as_uri()
    return f"sqlite:///{Path(DEFAULT_DB).resolve()}"


CREDENTIALS_ENV = "PSS_TRACKING_CREDENTIALS"  # a file with the tracking server's login


def use_credentials() -> None:
    """Log in to a tracking server with the user name and password in the file named by
    ``PSS_TRACKING_CREDENTIALS`` (mode 600, written by pss.sweep.server).

    The file wins over a ``MLFLOW_TRACKING_PASSWORD`` already in the environment: that
    one may be another server's, inherited from a driver that talked to it before.
    """
    path = os.environ.get(CREDENTIALS_ENV)
    if not path:
        return
    try:
        login = json.loads(Path(path).read_text())
        os.environ["MLFLOW_TRACKING_USERNAME"] = login["username"]
        os.environ["MLFLOW_TRACKING_PASSWORD"] = login["password"]
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"cannot read the tracking server's login ({exc})", path) from None


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(unquote(uri.removeprefix("sqlite:///").split("?")[0]))


@dataclass(frozen=True)
class StoredRun:
    """One run as a sweep reads it back."""

    run_id: str
    name: str
    status: str  # SCHEDULED, RUNNING, FINISHED, FAILED, KILLED
    start_time: int  # ms since the epoch
    end_time: int | None
    artifact_uri: str
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # latest value of each
    params: dict[str, str] = field(default_factory=dict)  # only those asked for
    steps: dict[str, int] = field(default_factory=dict, compare=False)  # of the latest values
    times: dict[str, int] = field(default_factory=dict, compare=False)  # when logged (ms)


def read_runs(
    experiment: str, uri: str | None = None, params: Iterable[str] = (), client: Any = None
) -> list[StoredRun]:
    """Every active run of ``experiment``, newest first ([] if there is no such experiment).

    ``params``: the param keys to read (reports need ``model.name``; nothing else needs
    the flattened config). ``client``: read through this ``MlflowClient`` instead.
    """
    uri = uri or current_uri()
    path = sqlite_path(uri)
    if client is None and path is not None:
        if not path.is_file():
            return []  # reading never creates a store
        check_store(uri)
        found = _read_sqlite(path, experiment, tuple(params))
        if found is not None:
            return found
    return _read_client(client or _client(uri), experiment, tuple(params))


def metric_history(
    uri: str | None, run_ids: list[str], metric: str, client: Any = None
) -> dict[str, list[tuple[int, float]]]:
    """Per run, the metric's value at each step (the last logged one per step), by step."""
    uri = uri or current_uri()
    path = sqlite_path(uri)
    if client is None and path is not None and path.is_file() and _known_schema(path):
        with _snapshot(path) as db:
            rows = db.execute(
                "SELECT run_uuid, step, value, is_nan FROM metrics WHERE key = ? AND run_uuid IN "
                f"({','.join('?' * len(run_ids))}) ORDER BY timestamp",
                (metric, *run_ids),
            ).fetchall()
        by_run: dict[str, dict[int, float]] = defaultdict(dict)
        for run_id, step, value, is_nan in rows:
            by_run[run_id][step] = math.nan if is_nan else value
        return {r: sorted(by_run[r].items()) for r in run_ids}
    client = client or _client(uri)
    out = {}
    for run_id in run_ids:
        points = sorted(retry(client.get_metric_history, run_id, metric), key=lambda m: m.timestamp)
        out[run_id] = sorted({m.step: m.value for m in points}.items())
    return out


def experiment_tags(experiment: str, uri: str | None = None) -> tuple[str, dict[str, str]] | None:
    """The id and tags of an active experiment, read from a local SQLite store without
    MLflow; None where the store is not such a file or has no such experiment."""
    path = sqlite_path(uri or current_uri())
    if path is None or not path.is_file() or not _known_schema(path):
        return None
    with _snapshot(path) as db:
        row = _active_experiment(db, experiment)
        if row is None:
            return None
        tags = db.execute(
            "SELECT key, value FROM experiment_tags WHERE experiment_id = ?", (row[0],)
        ).fetchall()
    return str(row[0]), dict(tags)


# ------------------------------------------------------------------------ SQLite


class _snapshot:
    """A read-only connection inside one read transaction (a consistent snapshot)."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60)
        self.db.isolation_level = None  # transactions as written below

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN")
        return self.db

    def __exit__(self, *exc: object) -> None:
        self.db.execute("COMMIT")
        self.db.close()


def _active_experiment(db: sqlite3.Connection, name: str) -> tuple[str] | None:
    """The (experiment_id,) row of the active experiment ``name``, or None."""
    return db.execute(
        "SELECT experiment_id FROM experiments WHERE name = ? AND workspace = 'default' "
        "AND lifecycle_stage = 'active'",
        (name,),
    ).fetchone()


SQLITE_HEADER = b"SQLite format 3\x00"
MLFLOW_TABLES = {"alembic_version", "experiments", "runs"}


def check_store(uri: str) -> None:
    """Refuse a local SQLite store that MLflow would break or fail on, before anything opens it.

    A missing or empty file, or an SQLite database without tables, becomes a new
    store; a store of the schema this code reads (:data:`KNOWN_SCHEMA`) or of the
    installed MLflow's newest one is used. Anything else raises a :class:`UserError`
    naming the file, and nothing is created, migrated or written in it: a file that
    is not an SQLite database, another application's database (MLflow would add its
    tables to it), a store of a newer MLflow (a schema revision the installed MLflow
    does not know) or of an older one (MLflow refuses it until ``mlflow db upgrade``).
    Costs a stat and one read-only query; imports no MLflow.
    """
    path = sqlite_path(uri)
    if path is None or not path.exists():
        return
    if path.is_dir():
        raise UserError("is a folder, not an MLflow store (an SQLite file)", str(path))
    try:
        with open(path, "rb") as handle:
            header = handle.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise UserError(f"cannot read the MLflow store ({exc.strerror})", str(path)) from None
    if not header:
        return  # an empty file: MLflow makes it a store
    if header != SQLITE_HEADER:
        raise UserError(
            "is not an SQLite database, so not an MLflow store; "
            "point MLFLOW_TRACKING_URI at a store or at a new file",
            str(path),
        )
    try:
        with _snapshot(path) as db:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            row = None
            if "alembic_version" in tables:
                row = db.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.Error as exc:
        raise UserError(f"cannot read it as an SQLite database ({exc})", str(path)) from None
    if not tables:
        return
    if row is None or not MLFLOW_TABLES.issubset(tables):
        shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise UserError(
            f"is an SQLite database of another application (tables: {shown}), not an MLflow "
            "store; point MLFLOW_TRACKING_URI at a store or at a new file",
            str(path),
        )
    if row[0] == KNOWN_SCHEMA:
        return
    version, revisions, head = _mlflow_schema()
    if row[0] not in revisions:
        raise UserError(
            f"is an MLflow store of a newer MLflow (schema revision {row[0]}, unknown to the "
            f"installed MLflow {version}); use that MLflow's environment or another store",
            str(path),
        )
    if row[0] != head:
        raise UserError(
            f"is an MLflow store of an older MLflow (schema revision {row[0]}, MLflow {version} "
            f"uses {head}); back it up and run: mlflow db upgrade {uri}",
            str(path),
        )


def _mlflow_schema() -> tuple[str, set[str], str]:
    """The installed MLflow's version, every alembic revision of its SQL schema, and the
    newest one, read from its migration scripts (no import of MLflow)."""
    from importlib.metadata import version
    from importlib.util import find_spec

    spec = find_spec("mlflow")
    folder = Path(next(iter(spec.submodule_search_locations or [])) if spec else ".")
    down: set[str] = set()
    revisions: set[str] = set()
    for script in (folder / "store" / "db_migrations" / "versions").glob("*.py"):
        text = script.read_text()
        found = re.search(r"^revision\s*=\s*['\"](\w+)['\"]", text, re.M)
        if found:
            revisions.add(found.group(1))
            down.update(re.findall(r"['\"](\w+)['\"]", _line(text, "down_revision")))
    heads = sorted(revisions - down)
    return version("mlflow"), revisions, heads[0] if len(heads) == 1 else KNOWN_SCHEMA


def _line(text: str, name: str) -> str:
    found = re.search(rf"^{name}\s*=\s*(.*)$", text, re.M)
    return found.group(1) if found else ""


def _known_schema(path: Path) -> bool:
    try:
        with _snapshot(path) as db:
            row = db.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.Error:
        return False
    return row is not None and row[0] == KNOWN_SCHEMA


def _read_sqlite(path: Path, experiment: str, params: tuple[str, ...]) -> list[StoredRun] | None:
    """None when the file is not a store of the schema this code knows."""
    if not _known_schema(path):
        return None
    with _snapshot(path) as db:
        row = _active_experiment(db, experiment)
        if row is None:
            return []
        runs = db.execute(
            "SELECT run_uuid, name, status, start_time, end_time, artifact_uri FROM runs "
            "WHERE experiment_id = ? AND lifecycle_stage = 'active' "
            "ORDER BY start_time DESC, run_uuid",
            (row[0],),
        ).fetchall()
        scope = "SELECT run_uuid FROM runs WHERE experiment_id = ? AND lifecycle_stage = 'active'"
        tags: dict[str, dict[str, str]] = defaultdict(dict)
        for run_id, key, value in db.execute(
            f"SELECT run_uuid, key, value FROM tags WHERE run_uuid IN ({scope})", (row[0],)
        ):
            tags[run_id][key] = value
        metrics: dict[str, dict[str, float]] = defaultdict(dict)
        steps: dict[str, dict[str, int]] = defaultdict(dict)
        times: dict[str, dict[str, int]] = defaultdict(dict)
        for run_id, key, value, is_nan, step, stamp in db.execute(
            "SELECT run_uuid, key, value, is_nan, step, timestamp FROM latest_metrics "
            f"WHERE run_uuid IN ({scope})",
            (row[0],),
        ):
            metrics[run_id][key] = math.nan if is_nan else value
            steps[run_id][key] = step
            times[run_id][key] = stamp
        wanted: dict[str, dict[str, str]] = defaultdict(dict)
        if params:
            marks = ",".join("?" * len(params))
            for run_id, key, value in db.execute(
                f"SELECT run_uuid, key, value FROM params WHERE key IN ({marks}) "
                f"AND run_uuid IN ({scope})",
                (*params, row[0]),
            ):
                wanted[run_id][key] = value
    return [
        StoredRun(
            run_id=run_id,
            name=name or "",
            status=status,
            start_time=start or 0,
            end_time=end,
            artifact_uri=artifacts or "",
            tags=tags[run_id],
            metrics=metrics[run_id],
            params=wanted[run_id],
            steps=steps[run_id],
            times=times[run_id],
        )
        for run_id, name, status, start, end, artifacts in runs
    ]


# ------------------------------------------------------------------------ MLflow


def _client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient  # only for stores SQL cannot read

    check_store(uri)
    use_credentials()
    return MlflowClient(uri)


def search(client: Any, experiment: str, filter_string: str = "") -> list[Any]:
    """MLflow's own runs (``mlflow.entities.Run``) of an active experiment matching a
    filter, every page, newest first ([] if there is no such experiment)."""
    exp = retry(client.get_experiment_by_name, experiment)
    if exp is None or exp.lifecycle_stage != "active":
        return []
    runs: list[Any] = []
    token = None
    while True:
        page = retry(
            client.search_runs,
            [exp.experiment_id],
            filter_string=filter_string,
            max_results=PAGE,
            order_by=["attributes.start_time DESC"],
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _read_client(client: Any, experiment: str, params: tuple[str, ...]) -> list[StoredRun]:
    return [
        StoredRun(
            run_id=r.info.run_id,
            name=r.info.run_name or "",
            status=r.info.status,
            start_time=r.info.start_time or 0,
            end_time=r.info.end_time,
            artifact_uri=r.info.artifact_uri or "",
            tags=dict(r.data.tags),
            metrics=dict(r.data.metrics),
            params={k: v for k, v in r.data.params.items() if k in params},
            steps={m.key: m.step for m in r.data._metric_objs},  # of the latest values
            times={m.key: m.timestamp for m in r.data._metric_objs},
        )
        for r in search(client, experiment)
    ]
