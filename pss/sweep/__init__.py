"""Sweeps: declarative specs expanded into jobs, submitted through submitit, tracked in MLflow."""
