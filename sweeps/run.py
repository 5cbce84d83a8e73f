#!/usr/bin/env python
"""Run a sweep spec: every cell of a paper table as a training job, tracked in MLflow.

    python sweeps/run.py sweeps/table5.yaml [--smoke] [--executor auto|slurm|local|debug]
                         [--cluster slurm/<profile>.yaml] [--no-wait] [--dry-run --json]
    python sweeps/run.py status sweeps/table5.yaml [--smoke]
    python sweeps/run.py server status|stop [--store URI]   # the tracking server of SLURM sweeps

Exit status: 0 all cells finished (or submitted, with --no-wait); 1 some cell failed;
2 the spec is invalid (one message on stderr; nothing submitted, nothing logged).
"""

import sys

from pss.sweep.driver import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
