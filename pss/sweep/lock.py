"""One driver submits a sweep at a time: a lock kept in the tracking store itself.

    with sweep_lock(client, "table5-smoke") as waited_for:
        ...  # read the sweep's state, open runs, submit; nobody else does meanwhile

Two drivers started at once on the same spec and store would each find every
job missing and submit the whole sweep twice. The lock is an MLflow registered
model named ``pss-sweep-lock.<experiment>``: creating a registered model is a
single insert under a unique name in every MLflow store (a local SQLite file,
a tracking server's database), so of several drivers, on one host or many,
exactly one creates it. Its tags say who holds it (host, pid, since when) and
carry a heartbeat the holder refreshes; the others print who holds it and wait
(``--no-wait`` drivers too: the holder is done submitting within seconds). A
lock whose holder died (its pid no longer runs on this host, a zombie included:
:func:`pss.sweep.process.alive`; or its heartbeat is older than :data:`STALE_S`) is
broken. Deleting the registered model releases
it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from mlflow.exceptions import MlflowException

from pss.sweep import process
from pss.tracking.store import retry

PREFIX = "pss-sweep-lock."
HEARTBEAT_S = 10.0  # the holder refreshes its heartbeat this often
STALE_S = 60.0  # a heartbeat older than this means the holder died
POLL_S = 1.0
RACE_ATTEMPTS = 3  # creates that met a release (see try_acquire) before giving up


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    since: float
    heartbeat: float
    token: str

    def describe(self) -> str:
        started = time.strftime("%H:%M:%S", time.localtime(self.since))
        return f"{self.host} pid {self.pid} (since {started})"

    def dead(self, now: float) -> bool:
        if self.host == socket.gethostname() and not process.alive(self.pid):
            return True
        return now - self.heartbeat > STALE_S


def _exists(exc: MlflowException) -> bool:
    return exc.error_code == "RESOURCE_ALREADY_EXISTS" or "already exists" in str(exc).lower()


def _missing(exc: MlflowException) -> bool:
    return exc.error_code == "RESOURCE_DOES_NOT_EXIST" or "not found" in str(exc).lower()


class SweepLock:
    """The lock of one experiment's sweep in the store of ``client`` (an MlflowClient)."""

    def __init__(self, client: Any, experiment: str) -> None:
        self.client = client
        self.name = PREFIX + experiment
        self.token = f"{socket.gethostname()}:{os.getpid()}:{time.time_ns()}"
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def holder(self) -> Holder | None:
        try:
            model = retry(self.client.get_registered_model, self.name)
        except MlflowException as exc:
            if _missing(exc):
                return None
            raise
        tags = model.tags
        try:
            return Holder(
                tags["host"],
                int(tags["pid"]),
                float(tags["since"]),
                float(tags["heartbeat"]),
                tags["token"],
            )
        except (KeyError, ValueError):  # created but not yet tagged: a holder is starting
            now = time.time()
            return Holder("?", -1, now, now, "")

    def try_acquire(self) -> bool:
        now = time.time()
        tags = {
            "host": socket.gethostname(),
            "pid": str(os.getpid()),
            "since": str(now),
            "heartbeat": str(now),
            "token": self.token,
        }
        description = (
            f"Lock of the sweep '{self.name.removeprefix(PREFIX)}': held by the driver that is "
            "submitting its jobs (sweeps/run.py). Not a model; it disappears when released."
        )
        for attempt in range(RACE_ATTEMPTS):
            try:
                retry(self.client.create_registered_model, self.name, tags, description)
                break
            except MlflowException as exc:
                if _exists(exc):
                    return False
                # A create that finds the name taken looks the model up (MLflow's
                # SQL store: is it a prompt?); released in between, it says "not found".
                if not _missing(exc) or attempt == RACE_ATTEMPTS - 1:
                    raise
        self._stop.clear()
        self._beat = threading.Thread(target=self._heartbeat, daemon=True)
        self._beat.start()
        return True

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(Exception):  # a missed beat: the next one catches up
                self.client.set_registered_model_tag(self.name, "heartbeat", str(time.time()))

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
            self._beat = None
        holder = self.holder()
        if holder is not None and holder.token == self.token:
            self._delete()

    def _delete(self) -> None:
        try:
            retry(self.client.delete_registered_model, self.name)
        except MlflowException as exc:
            if not _missing(exc):
                raise

    def break_if_dead(self, holder: Holder) -> bool:
        """Remove the lock of a holder that died; True when it was removed."""
        if not holder.dead(time.time()):
            return False
        current = self.holder()  # still the same dead holder, not a new one
        if current is None or current.token != holder.token:
            return current is None
        self._delete()
        return True


@contextmanager
def sweep_lock(client: Any, experiment: str, timeout_s: float | None = None) -> Iterator[bool]:
    """Hold the sweep's lock for the block; yields whether another driver had to be waited for.

    Prints (to stderr) who holds it while waiting. ``timeout_s``: give up waiting
    (TimeoutError) after this long; None waits as long as the holder lives.
    """
    lock = SweepLock(client, experiment)
    waited = False
    said = None
    start = time.monotonic()
    while not lock.try_acquire():
        holder = lock.holder()
        if holder is None:
            continue  # released meanwhile
        if lock.break_if_dead(holder):
            print(f"{experiment}: removed the stale lock of {holder.describe()}", file=sys.stderr)
            continue
        if said != holder.token:
            print(
                f"{experiment}: another driver is submitting this sweep: {holder.describe()}; "
                "waiting for it",
                file=sys.stderr,
                flush=True,
            )
            said = holder.token
        waited = True
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise TimeoutError(f"{experiment}: the sweep lock is held by {holder.describe()}")
        time.sleep(POLL_S)
    try:
        yield waited
    finally:
        lock.release()
