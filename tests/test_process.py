"""One liveness check for the sweep's processes: a zombie is not alive (pss.sweep.process)."""

from __future__ import annotations

import os
import socket
import subprocess
import time

from pss.sweep import process
from pss.sweep.lock import Holder


def _zombie() -> subprocess.Popen:
    """A child that has exited and that this process has not reaped."""
    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 30
    while process._stat(child.pid)[0] != "Z":
        assert time.monotonic() < deadline, "the child did not exit"
        time.sleep(0.05)
    return child


def test_a_running_process_is_alive_and_a_zombie_or_a_gone_one_is_not():
    running = subprocess.Popen(["sleep", "30"])
    zombie = _zombie()
    try:
        assert process.alive(running.pid) and process.alive(str(running.pid))
        assert process.alive(os.getpid())
        assert not process.alive(zombie.pid)
        assert not process.alive("not a pid")
    finally:
        running.kill()
        running.wait()
        zombie.wait()
    assert not process.alive(zombie.pid)  # reaped: gone


def test_a_sweep_lock_held_by_a_zombie_is_dead():
    zombie = _zombie()
    try:
        now = time.time()
        holder = Holder(socket.gethostname(), zombie.pid, now, now, "token")
        assert holder.dead(now)
        assert not Holder(socket.gethostname(), os.getpid(), now, now, "token").dead(now)
    finally:
        zombie.wait()


def test_a_process_group_of_zombies_is_not_alive_and_stops():
    leader = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        assert process.group_alive(leader.pid)
        assert process.stop_group(leader.pid, grace_s=5)
        deadline = time.monotonic() + 10
        while process.group_alive(leader.pid):  # a zombie until reaped: not alive
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        leader.kill()
        leader.wait()
    assert not process.stop_group(leader.pid)
