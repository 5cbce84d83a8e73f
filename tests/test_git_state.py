"""The code a run records (``pss.git_commit``, ``pss.git_dirty``): read from the checkout
``pss`` is imported from, in a fresh process, as a sweep's cell would."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRINT = "from pss.tracking.logger import git_commit, git_dirty; print(git_commit(), git_dirty())"


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    out = subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def _state(checkout: Path) -> list[str]:
    """(commit, dirty) as a process importing pss from ``checkout`` records them."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    out = subprocess.run(
        [sys.executable, "-c", PRINT], cwd=checkout, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_edits_to_tracked_files_mark_the_code_dirty(tmp_path: Path):
    checkout = tmp_path / "checkout"
    shutil.copytree(ROOT / "pss", checkout / "pss", ignore=shutil.ignore_patterns("__pycache__"))
    assert _state(checkout) == ["unknown", "unknown"]  # not a git checkout

    _git(checkout, "init", "-q")
    _git(checkout, "add", "pss")
    _git(checkout, "commit", "-q", "-m", "pss")
    commit = _git(checkout, "rev-parse", "HEAD")
    assert _state(checkout) == [commit, "false"]

    (checkout / "notes.txt").write_text("untracked files are not the code\n")
    assert _state(checkout) == [commit, "false"]

    with (checkout / "pss" / "__init__.py").open("a") as f:
        f.write("# an edit made while a sweep runs\n")
    assert _state(checkout) == [commit, "true"]
