"""Build a sweep's paper tables and figures from MLflow runs.

    python reports/make_tables.py sweeps/table5.yaml [--format md,tex,csv]
        [--out DIR] [--with-paper] [--smoke]

The logic lives in :mod:`pss.report` (see pss/report/cli.py).
"""

import sys

from pss.report.cli import main

if __name__ == "__main__":
    sys.exit(main())
