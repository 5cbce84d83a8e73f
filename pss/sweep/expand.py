"""A spec's jobs: each cell x stage x seed, its config resolved, validated and fingerprinted.

    loaded = load_spec("sweeps/table5.yaml")           # pss.sweep.schema
    jobs = expand(loaded, smoke=True)                  # one Job per cell x stage x seed

A job's config is the cell's experiment files (its base, the smoke overlay with
``--smoke``) with the spec's, the cell's and the stage's overrides and the seed on
top; its fingerprint says what is trained (a finished run with the same
fingerprint is this job done). A stage started from another stage points at that
stage's checkpoint, and its fingerprint includes that stage's. A cell on mmdet's
engine must translate (:func:`pss.mmdet.translate.check_translatable`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pss import contract
from pss.config import ExperimentConfig, load_config
from pss.contract import TORCH
from pss.errors import UserError
from pss.mmdet.translate import check_translatable
from pss.sweep.schema import CellSpec, LoadedSpec, StageSpec, all_cells, cell_overrides, stage_needs


@dataclass
class Job:
    """One training job: a cell (and stage) for one seed."""

    cell: str
    seed: int
    stage: str | None
    overrides: dict[str, Any]  # everything on top of the base (and smoke overlay)
    config: ExperimentConfig
    fingerprint: str
    depends_on: list[str] = field(default_factory=list)  # cell ids (the dry-run JSON)
    after: list[str] = field(default_factory=list)  # stages of this cell that must finish first
    report: bool = True
    engine: str = TORCH  # what trains it (contract.ENGINES)
    config_files: list[Path] = field(default_factory=list)  # base (and smoke overlay)

    @property
    def key(self) -> str:
        """Unique within a sweep: cell[@stage]/s<seed>."""
        return contract.job_key(self.cell, self.stage, self.seed)

    @property
    def run_name(self) -> str:
        return contract.run_name(self.cell, self.stage)

    @property
    def parent_keys(self) -> list[str]:
        """Keys of the jobs (same cell and seed) that must finish before this one starts."""
        return [contract.job_key(self.cell, stage, self.seed) for stage in self.after]

    def tags(self, sweep: str) -> dict[str, str]:
        """The MLflow tags of this job's run (docs/tracking.md)."""
        return contract.job_tags(
            sweep, self.cell, self.stage, self.seed, self.fingerprint, self.engine
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "cell": self.cell,
            "seed": self.seed,
            "overrides": self.overrides,
            "fingerprint": self.fingerprint,
            "stage": self.stage,
            "depends_on": self.depends_on,
            "engine": self.engine,
        }

def _stage_order(cell: CellSpec) -> list[StageSpec]:
    """The cell's stages, each after the stages it needs."""
    done: list[str] = []
    ordered: list[StageSpec] = []
    pending = list(cell.stages)
    while pending:
        for stage in pending:
            if set(stage_needs(stage)) <= set(done):
                ordered.append(stage)
                done.append(stage.name)
                pending.remove(stage)
                break
    return ordered


def _combine(*fingerprints: str) -> str:
    """One fingerprint for several (a stage and the stages it starts from; a job and its
    engine)."""
    return hashlib.sha256("+".join(fingerprints).encode()).hexdigest()[:12]


def expand(
    loaded: LoadedSpec,
    smoke: bool = False,
    output_root: Path | None = None,
    extra_overrides: dict[str, Any] | None = None,
) -> list[Job]:
    """All jobs of a spec, configs resolved and validated (errors name the spec and cell).

    Each job's ``train.init_from`` (for a stage started from another stage) points at
    that stage's checkpoint under ``output_root``, and a stage's fingerprint
    includes the fingerprints of the stages it starts from.
    """
    spec, src = loaded.spec, str(loaded.path)
    output_root = output_root or contract.OUTPUT_ROOT
    experiment = loaded.experiment(smoke)
    jobs: list[Job] = []
    for cell in all_cells(spec):
        files = loaded.config_files(smoke, cell)
        stages: list[StageSpec | None] = _stage_order(cell) if cell.stages else [None]
        for seed in spec.seeds:
            by_stage: dict[str, Job] = {}
            for stage in stages:
                overrides = {
                    **(spec.smoke_overrides if smoke else {}),
                    **cell_overrides(spec, cell),
                    **(stage.overrides if stage else {}),
                    **(stage.smoke_overrides if stage and smoke else {}),
                    "train.seed": seed,
                    **(extra_overrides or {}),
                }
                parents = []
                if stage and stage.init_from:
                    parent = by_stage[stage.init_from]
                    overrides["train.init_from"] = str(
                        Path(parent.config.run_dir) / contract.CHECKPOINT
                    )
                    parents.append(parent.fingerprint)
                name = f"{spec.name}-{cell.id}" + (f"-{stage.name}" if stage else "")
                engine = cell.engine or spec.engine
                try:
                    cfg = load_config(files, {"name": name, **overrides})
                    if engine != TORCH:
                        check_translatable(cfg)
                except UserError as exc:
                    where = f"cells.{cell.id}" + (f".stages.{stage.name}" if stage else "")
                    on = f" (engine {engine})" if engine != TORCH else ""
                    raise UserError(f"{where}{on}: {exc}", src) from None
                if parents:
                    # The parent's checkpoint path says where outputs go, not what is
                    # trained: the parent's fingerprint stands for it.
                    own = cfg.model_copy(
                        update={"train": cfg.train.model_copy(update={"init_from": None})}
                    )
                    fp = _combine(own.fingerprint(), *parents)
                else:
                    fp = cfg.fingerprint()
                if engine != TORCH:  # a torch run never counts as this job's
                    fp = _combine(fp, engine)
                after = stage_needs(stage) if stage else []
                stage_name = stage.name if stage else None
                out = contract.run_dir(experiment, cell.id, stage_name, seed, fp, output_root)
                job = Job(
                    cell=cell.id,
                    seed=seed,
                    stage=stage_name,
                    overrides={k: v for k, v in overrides.items() if k != "train.init_from"},
                    config=cfg.model_copy(update={"output_dir": str(out)}),
                    fingerprint=fp,
                    depends_on=[cell.id] if after else [],
                    after=after,
                    report=cell.report and (stage is None or stage is stages[-1]),
                    engine=engine,
                    config_files=files,
                )
                by_stage[job.stage or ""] = job
                jobs.append(job)
    return jobs
