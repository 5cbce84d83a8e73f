"""``python reports/make_tables.py SPEC``: a sweep's tables and figures from MLflow.

Prints the table as Markdown on stdout (the paths written go to stderr) and
writes ``reports/out/<experiment>/`` (see :mod:`pss.report.build`). Exit
status 0 on success, 2 for a bad spec or option (one message on stderr).
"""

from __future__ import annotations

import argparse
import sys

from pss.contract import ENGINES
from pss.errors import EXIT_INVALID, EXIT_OK, UserError
from pss.report.build import FORMATS, make_report


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="make_tables.py",
        description="Build a sweep's paper tables (Markdown, LaTeX, CSV) and figures "
        "from its MLflow runs.",
    )
    p.add_argument("spec", help="sweep spec, e.g. sweeps/table5.yaml")
    p.add_argument(
        "--format",
        default=",".join(FORMATS),
        help=f"comma list of table formats to write (default {','.join(FORMATS)})",
    )
    p.add_argument("--out", help="output folder (default reports/out/<experiment>)")
    p.add_argument(
        "--with-paper",
        action="store_true",
        help="add the paper's value and the difference (ours - paper) beside ours",
    )
    p.add_argument("--smoke", action="store_true", help="read the <name>-smoke experiment")
    p.add_argument(
        "--cluster",
        metavar="PROFILE",
        help="cluster profile whose estimates (calibration, GPU) the cost table shows",
    )
    p.add_argument(
        "--engine",
        choices=ENGINES,
        default=None,
        help="the runs of `sweeps/run.py SPEC --engine E` (experiment <name>[-smoke]-E)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        report = make_report(
            args.spec,
            smoke=args.smoke,
            formats=args.format,
            out_dir=args.out,
            with_paper=args.with_paper,
            engine=args.engine,
            cluster=args.cluster,
        )
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    if report.markdown:
        print(report.markdown)
    for path in report.files:
        print(f"wrote {path}", file=sys.stderr)
    return EXIT_OK
