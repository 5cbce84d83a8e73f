"""Support shared by tests and benchmarks: synthetic inputs, not measurements.

- :mod:`pss.testing.mlflow_runs`: an MLflow store seeded with runs that follow the
  tracking contract (reports, scale benchmarks).
- :mod:`pss.testing.checkpoints`: comparing two training checkpoints (resume tests).
- :mod:`pss.testing.deploy`: lively random checkpoints, images and detection
  comparisons for the predict / export / visualize tests.
- :mod:`pss.testing.score_maps`: head outputs that look like a trained detector's,
  and synthetic training targets (post-processing and training benchmarks).
- :mod:`pss.testing.waiting`: waiting on a cluster event (SLURM, fault tests).

Installed with the library (like ``torch.testing``), so tests and benchmarks import
it as ``pss.testing`` with no ``sys.path`` edits; :mod:`pss.testing.configs` holds the
small model configs both use. Nothing in the rest of ``pss`` imports it.
"""
