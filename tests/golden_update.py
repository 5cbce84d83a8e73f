"""Regenerate the golden report files of tests/golden/ (the one way to change them).

    .venv/bin/python -m tests.golden_update

Runs tests/test_report.py's golden tests with ``--update-goldens`` (tests/conftest.py):
they render the golden scenarios (a temporary MLflow store seeded with known runs) and
write tests/golden/ instead of comparing with it, then list each file as unchanged,
updated or new; review the diff before committing it. Without the option the same tests
only compare against these files.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

GOLDEN_TESTS = Path(__file__).resolve().parent / "test_report.py"


def main() -> int:
    tests = f"{GOLDEN_TESTS}::test_golden_tables"
    return int(pytest.main([tests, "--update-goldens", "-q", "-p", "no:cacheprovider"]))


if __name__ == "__main__":
    sys.exit(main())
