"""Regenerate the golden report files of tests/golden/ (the one way to change them).

    .venv/bin/python -m tests.golden_update

Renders the golden scenarios of tests/test_report.py (a temporary MLflow store seeded
with known runs) and rewrites tests/golden/; review the diff before committing it. The
tests themselves only compare against these files.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))  # test_report and its helpers import as in pytest

import test_report  # noqa: E402


def main() -> int:
    test_report.GOLDEN.mkdir(parents=True, exist_ok=True)
    with test_report.seeded_store() as store, tempfile.TemporaryDirectory() as tmp:
        for name in test_report.GOLDEN_TABLES:
            for with_paper in (False, True):
                out = Path(tmp) / f"{name}-{with_paper}"
                rendered = test_report.render_golden_tables(store, name, with_paper, out)
                for file, text in rendered.items():
                    path = test_report.GOLDEN / file
                    old = path.read_text(encoding="utf-8") if path.is_file() else None
                    path.write_text(text, encoding="utf-8")
                    state = "unchanged" if old == text else "new" if old is None else "updated"
                    print(f"{state:9} {path.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
