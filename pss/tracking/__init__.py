"""Tracking: runs in MLflow (docs/tracking.md; the names: :mod:`pss.contract`).

:mod:`~pss.tracking.logger` writes runs (one per cell and seed) through MLflow's client,
:mod:`~pss.tracking.store` reads them back fast (plain SQL on a local SQLite store,
without importing MLflow) and :mod:`~pss.tracking.ui` opens a sweep in MLflow's UI.
"""
