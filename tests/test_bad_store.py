"""A tracking URI whose database is not an MLflow store is refused at the door.

Another application's SQLite database, a file that is not a database at all and a store
of a newer (or older) MLflow are refused with one line naming the file (exit 2) by every
command that opens a store, and not one byte of the file changes; a new or empty file
still becomes a store.
"""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pytest

from pss.errors import UserError
from pss.testing import REPO
from pss.testing.commands import assert_refused as refused
from pss.testing.commands import run_command
from pss.testing.configs import tiny_train_overrides
from pss.tracking.store import KNOWN_SCHEMA, check_store

TABLE5 = REPO / "sweeps" / "table5.yaml"


def other_app(path: Path) -> Path:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE notes (id INTEGER, body TEXT)")
    db.execute("INSERT INTO notes VALUES (1, 'keep me')")
    db.commit()
    db.close()
    return path


def not_a_database(path: Path) -> Path:
    path.write_text("id,body\n1,keep me\n")
    return path


def mlflow_store(path: Path, revision: str) -> Path:
    """A store whose schema is at ``revision`` (the tables a store has, as far as needed)."""
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
    db.execute("INSERT INTO alembic_version VALUES (?)", (revision,))
    db.execute("CREATE TABLE experiments (experiment_id INTEGER, name TEXT)")
    db.execute("CREATE TABLE runs (run_uuid TEXT)")
    db.commit()
    db.close()
    return path


BROKEN = {
    "other-app": (other_app, "another application"),
    "not-a-database": (not_a_database, "not an SQLite database"),
    "newer-mlflow": (lambda p: mlflow_store(p, "ffffffffffff"), "newer MLflow"),
    "older-mlflow": (lambda p: mlflow_store(p, "451aebb31d03"), "older MLflow"),
}


def run(argv: list[str], store: Path, cwd: Path) -> subprocess.CompletedProcess:
    return run_command(argv, cwd, {"MLFLOW_TRACKING_URI": f"sqlite:///{store}"})


def assert_refused(proc: subprocess.CompletedProcess, store: Path, said: str) -> None:
    refused(proc, store, said)


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_status_refuses_a_store_that_is_not_mlflows(case, tmp_path):
    make, said = BROKEN[case]
    store = make(tmp_path / "mlflow.db")
    before = store.read_bytes()
    proc = run([str(REPO / "sweeps" / "run.py"), "status", str(TABLE5), "--smoke"], store, tmp_path)
    assert_refused(proc, store, said)
    assert store.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db"]  # no lock, no ledger


def test_train_refuses_it_before_training(tmp_path, shapes_root):
    store = other_app(tmp_path / "mlflow.db")
    before = store.read_bytes()
    out = tmp_path / "out"
    argv = ["-m", "pss.train", str(REPO / "experiments" / "fcos_pss_r50_3x.yaml")]
    for override in tiny_train_overrides(shapes_root, out):
        argv += ["--set", override]
    proc = run(argv, store, tmp_path)
    assert_refused(proc, store, "another application")
    assert store.read_bytes() == before
    assert not out.exists()  # nothing trained


def test_report_refuses_it(tmp_path):
    store = not_a_database(tmp_path / "mlflow.db")
    before = store.read_bytes()
    proc = run(
        [str(REPO / "reports" / "make_tables.py"), str(TABLE5), "--smoke", "--out", "rep"],
        store,
        tmp_path,
    )
    assert_refused(proc, store, "not an SQLite database")
    assert store.read_bytes() == before
    assert not (tmp_path / "rep").exists()


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_every_opener_refuses_it(case, tmp_path):
    """The client a run logs through, and the tracking server's start, check first."""
    from pss.sweep.server import ensure_server
    from pss.tracking.logger import client

    make, said = BROKEN[case]
    store = make(tmp_path / "mlflow.db")
    before = store.read_bytes()
    for opener in (client, ensure_server):
        with pytest.raises(UserError, match=said):
            opener(f"sqlite:///{store}")
    assert store.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db"]


def test_new_empty_or_known_files_are_stores(tmp_path):
    from pss.tracking.logger import client

    check_store(f"sqlite:///{tmp_path / 'new.db'}")  # does not exist yet
    empty = tmp_path / "empty.db"
    empty.touch()
    check_store(f"sqlite:///{empty}")
    sqlite3.connect(tmp_path / "blank.db").close()  # an SQLite file without tables
    check_store(f"sqlite:///{tmp_path / 'blank.db'}")
    check_store(f"sqlite:///{mlflow_store(tmp_path / 'known.db', KNOWN_SCHEMA)}")
    client(f"sqlite:///{empty}").create_experiment("x")  # the empty file became a store
    check_store(f"sqlite:///{empty}")
