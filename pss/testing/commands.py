"""Running a real command as a person would, and what a refusal of bad input looks like."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pss.errors import EXIT_FAILED, EXIT_INVALID


def run_command(
    argv: list[str | Path], cwd: Path, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """``python ARGV...`` (e.g. ``["-m", "pss.predict", ...]``) in ``cwd``, stdin closed,
    output captured; ``env`` adds to this process's environment."""
    return subprocess.run(
        [sys.executable, *map(str, argv)],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_refused(proc: subprocess.CompletedProcess, named: Path | str, said: str) -> str:
    """Bad input refused as docs/cli.md says: exit 2, no traceback, one ``error:`` line
    naming ``named`` and saying ``said``. Returns that line."""
    return assert_one_error(proc, EXIT_INVALID, named, said)


def assert_failed(proc: subprocess.CompletedProcess, named: Path | str, said: str) -> str:
    """A run that could not go on, as docs/cli.md says: exit 1, no traceback, one
    ``error:`` line naming ``named`` and saying ``said``. Returns that line."""
    return assert_one_error(proc, EXIT_FAILED, named, said)


def assert_one_error(
    proc: subprocess.CompletedProcess, code: int, named: Path | str, said: str
) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == code, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, out[-3000:]
    assert str(named) in errors[0] and said in errors[0], out[-3000:]
    return errors[0]
