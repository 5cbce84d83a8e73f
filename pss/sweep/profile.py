"""Cluster profiles (``slurm/<name>.yaml``): where and how jobs run on a SLURM cluster.

A spec says what a job needs (``resources``); a profile says what the cluster
is (partition, account, qos, constraint, set-up lines, logs folder) and may
override any resource (e.g. a CPU-only test cluster sets ``gpus_per_node: 0``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pss.config import read_yaml
from pss.errors import UserError, nearest
from pss.sweep.schema import Resources

# What a --smoke job asks for, whatever the spec says: one CPU task.
SMOKE_RESOURCES = Resources(nodes=1, gpus_per_node=0, cpus_per_task=2, mem_gb=4, timeout_min=60)


Precision = Literal["fp32", "tf32", "fp16", "bf16"]


class GpuSpec(BaseModel):
    """The GPU of a profile, for cost estimates (pss.sweep.cost): its peak throughput per
    precision (TFLOP/s, from the vendor's datasheet) and the share of the peak of
    ``precision`` a detector's training reaches (``utilisation``, 0-1, with its source
    in a comment)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str
    peak_tflops: dict[Precision, float]
    precision: Precision = "fp32"  # the peak the utilisation is a share of
    utilisation: float = Field(gt=0, le=1)

    @model_validator(mode="after")
    def _peak_of_precision(self) -> GpuSpec:
        if self.precision not in self.peak_tflops:
            raise ValueError(
                f"peak_tflops has no {self.precision} (the precision utilisation is of)"
            )
        if any(not 0 < v < 1e5 for v in self.peak_tflops.values()):
            raise ValueError(f"peak_tflops must be TFLOP/s above 0, got {self.peak_tflops}")
        return self


class ClusterProfile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    # Resource overrides (None: what the spec asks for).
    nodes: int | None = Field(None, ge=1)
    # DDP processes per node (default: one per GPU, or one on a CPU-only profile); each
    # task of a job is one rank, its rank and world size from submitit's job environment.
    tasks_per_node: int | None = Field(None, ge=1)
    gpus_per_node: int | None = Field(None, ge=0)
    cpus_per_task: int | None = Field(None, ge=1)
    mem_gb: int | None = Field(None, ge=1)
    timeout_min: int | None = Field(None, ge=1)
    setup: list[str] = []  # shell lines run before the job (module load, venv activation...)
    logs_folder: str | None = None  # default: outputs/sweeps/<experiment>/submitit
    array_parallelism: int = Field(64, ge=1)
    max_requeues: int = Field(3, ge=0)  # timeouts/preemptions before a job is given up
    tracking_uri: str | None = None  # MLflow server for the jobs (default: see pss.sweep.server)
    # Address the tracking server a SLURM sweep starts listens on: one compute nodes
    # reach this host by (default: what this host's name resolves to). Never 0.0.0.0.
    server_host: str | None = None
    gpu: GpuSpec | None = None  # what a GPU of the cluster does, for cost estimates


def load_profile(path: str | Path | None) -> ClusterProfile:
    if path is None:
        return ClusterProfile()
    data = read_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError("a cluster profile must be a mapping", str(path))
    try:
        return ClusterProfile.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()  # an unknown key first: a misspelt one is also "missing"
        err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            fields = GpuSpec.model_fields if loc.startswith("gpu.") else ClusterProfile.model_fields
            hint = nearest(loc.removeprefix("gpu."), fields)
            raise UserError(f"unknown key '{loc}'{hint}", str(path)) from None
        raise UserError(f"{loc}: {err['msg']} (got {err.get('input')!r})", str(path)) from None


def for_local_jobs(profile: ClusterProfile, max_parallel: int) -> ClusterProfile:
    """The profile of jobs run on this machine, ``max_parallel`` at a time: unless it says
    ``cpus_per_task``, each gets its share of this machine's cores (two jobs with two
    threads each on two cores run slower than one)."""
    if profile.cpus_per_task is not None:
        return profile
    share = max(1, len(os.sched_getaffinity(0)) // max(max_parallel, 1))
    return profile.model_copy(update={"cpus_per_task": share})


def effective_resources(
    spec_resources: Resources, profile: ClusterProfile, smoke: bool
) -> Resources:
    base = SMOKE_RESOURCES if smoke else spec_resources
    updates: dict[str, Any] = {
        k: getattr(profile, k) for k in Resources.model_fields if getattr(profile, k) is not None
    }
    return base.model_copy(update=updates)
