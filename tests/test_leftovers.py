"""The suite's last check (conftest.pytest_sessionfinish) fails a session that leaves a
process it started running, and names it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from pss.testing import REPO

LEAKY = """
import subprocess

def test_starts_a_server_and_forgets_it():
    subprocess.Popen(["sleep", "600"])
"""


def test_a_process_left_running_fails_the_session(tmp_path):
    (tmp_path / "test_leaky.py").write_text(LEAKY)
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests"), "PSS_LEFTOVER_GRACE_S": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "conftest",
         str(tmp_path / "test_leaky.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    leaked = [line.split()[1].rstrip(":") for line in proc.stderr.splitlines()
              if "sleep 600" in line]
    try:
        assert "1 passed" in proc.stdout  # the test itself passed ...
        assert proc.returncode == 1  # ... and the session failed
        assert "processes started by the tests are still running" in proc.stderr
        assert len(leaked) == 1, proc.stderr
    finally:
        for pid in leaked:
            os.kill(int(pid), signal.SIGKILL)
