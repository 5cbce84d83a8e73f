"""Support shared by tests and benchmarks: synthetic inputs, not measurements.

- :mod:`pss.testing.mlflow_runs`: an MLflow store seeded with runs that follow the
  tracking contract (reports, scale benchmarks).
- :mod:`pss.testing.checkpoints`: comparing two training checkpoints (resume tests).
- :mod:`pss.testing.deploy`: lively random checkpoints, images and detection
  comparisons for the predict / export / visualize tests.
- :mod:`pss.testing.score_maps`: head outputs that look like a trained detector's,
  and training targets (loss tests, post-processing and training benchmarks).
- :mod:`pss.testing.configs`: small model configs, a training of seconds on a tiny
  shapes set, and the overlay and spec files sweep tests write.
- :mod:`pss.testing.waiting`: waiting on a cluster event (SLURM, fault tests).
- :mod:`pss.testing.slurm`: the test SLURM cluster's jobs (requeue tests).

Installed with the library (like ``torch.testing``), so tests and benchmarks import
it as ``pss.testing`` with no ``sys.path`` edits (tests/conftest.py keeps only
fixtures). Nothing in the rest of ``pss`` imports it.
"""

from pathlib import Path

# The checkout this editable install runs from: tests and benchmarks read its
# experiments/ and sweeps/.
REPO = Path(__file__).resolve().parents[2]
