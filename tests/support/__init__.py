"""Test support shared by tests and benchmarks: synthetic inputs, not measurements.

- :mod:`support.mlflow_runs`: an MLflow store seeded with runs that follow the
  tracking contract (reports, scale benchmarks).
- :mod:`support.checkpoints`: comparing two training checkpoints (resume tests).
- :mod:`support.deploy`: lively random checkpoints, images and detection
  comparisons for the predict / export / visualize tests.
- :mod:`support.score_maps`: head outputs that look like a trained detector's,
  and synthetic training targets (post-processing and training benchmarks).
- :mod:`support.waiting`: waiting on a cluster event (SLURM, fault tests).

Tests import it as ``support`` (pytest puts ``tests/`` on ``sys.path``);
benchmarks put ``tests/`` on ``sys.path`` themselves.
"""
