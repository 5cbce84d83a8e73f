"""Whether a process (or a process group) still runs, and stopping a group: the one check.

    alive(pid)             # a local sweep's driver, a sweep lock's holder
    group_alive(pgid)      # the tracking server's process group
    stop_group(pgid)       # SIGTERM, then SIGKILL what is left

A zombie (a process that has exited and waits for its parent to reap it) does not
run: it is not alive. Linux's ``/proc/<pid>/stat`` tells its state; its second
field, the command name, is in parentheses and may itself hold spaces or ``)``,
so the fields are read after the last ``)``.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

STOP_GRACE_S = 5.0  # SIGTERM, then SIGKILL for what is left of a process group


def _stat(pid: int | str) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state, ppid, pgrp, ...)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def alive(pid: int | str) -> bool:
    """Whether process ``pid`` of this host runs (a zombie does not; nor does a pid that is
    not a number)."""
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:  # another user's process: it exists
        pass
    fields = _stat(pid)
    return fields is None or fields[0] != "Z"  # no /proc: what kill said


def group_alive(pgid: int) -> bool:
    """Whether any process of the process group ``pgid`` runs (zombies do not)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        fields = _stat(stat.parent.name)
        if fields is not None and int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def stop_group(pgid: int, grace_s: float = STOP_GRACE_S) -> bool:
    """SIGTERM the process group, SIGKILL what is left after ``grace_s``; True if it ran."""
    if not group_alive(pgid):
        return False
    os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and group_alive(pgid):
        time.sleep(0.1)
    if group_alive(pgid):
        os.killpg(pgid, signal.SIGKILL)
    return True
