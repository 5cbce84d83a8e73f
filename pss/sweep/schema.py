"""Sweep specs: what a spec file may say (the schema), and loading one.

A spec (``sweeps/table5.yaml``) names a base experiment, the cells it trains
(a grid of axes and/or explicit cells, each a set of dotted config overrides),
seeds, optional stages (two-step training), resources, the paper's reference
values and the table the report builds. Paths in a spec are relative to the
spec file. :func:`load_spec` validates everything before anything runs: the
schema, the files it names, and what only its cells tell (unique cell ids, stage
dependencies, paper rows, the table's and figure's row keys), which is why the
cells a spec names (:func:`all_cells`: the grid's product, then its explicit
cells) are made here. :func:`pss.sweep.expand.expand` turns them into jobs.

A bad spec raises :class:`~pss.errors.UserError` naming the file, the key and
what was expected (exit status 2 in ``sweeps/run.py``).

A spec's ``engine`` (or a cell's) says what trains its cells: this project's own
loop (``torch``, the default) or mmengine's Runner on the cell's config translated
to mmdet (``mmdet``, :mod:`pss.mmdet.translate`; a setting that has no translation fails
the expansion). The engine is part of a job's fingerprint (an mmdet job never
counts as a finished torch job) and of the experiment's name.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pss import contract
from pss.config import read_yaml
from pss.contract import ENGINES, TORCH
from pss.errors import UserError, nearest, validation_error

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.=+-]*$"
MAX_CELLS = 5000  # a spec's default limit on its cells (its `max_cells` raises it)
MAX_ID_LENGTH = 100  # a grid cell's id, longer ones are cut and end in a hash
# The smoke overlay of this checkout (specs may name their own with `smoke:`).
DEFAULT_SMOKE = Path(__file__).resolve().parents[2] / "experiments" / "smoke" / "overlay.yaml"


class _Strict(BaseModel):
    # No float of a spec (search ranges, the paper's values) means anything at .inf or .nan.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class StageSpec(_Strict):
    """One stage of a staged cell (e.g. two-step training)."""

    name: str = Field(pattern=ID_PATTERN)
    overrides: dict[str, Any] = {}
    smoke_overrides: dict[str, Any] = {}  # on top, with --smoke
    depends_on: list[str] = []  # names of earlier stages of the same cell
    init_from: str | None = None  # stage whose last checkpoint is train.init_from


class CellSpec(_Strict):
    id: str = Field(pattern=ID_PATTERN)
    base: str | None = None  # this cell's experiment file, instead of the spec's base
    labels: dict[str, Any] = {}  # values for the table's row keys (e.g. backbone: R50)
    overrides: dict[str, Any] = {}
    stages: list[StageSpec] = []
    report: bool = True  # a row of the table
    engine: Literal[ENGINES] | None = None  # type: ignore[valid-type]  # None: the spec's


class Resources(_Strict):
    """What one job needs; cluster profiles say where it runs."""

    nodes: int = Field(1, ge=1)
    gpus_per_node: int = Field(8, ge=0)
    cpus_per_task: int = Field(8, ge=1)
    mem_gb: int = Field(64, ge=1)
    timeout_min: int = Field(4320, ge=1)


class PaperRow(_Strict):
    """The paper's values for the cell whose overrides include ``where``."""

    where: dict[str, Any]
    values: dict[str, float]


class ColumnSpec(_Strict):
    # A metric name; '{mode}' becomes the cell's primary mode: e2e for *_pss models,
    # nms for the baselines (Table 1: "mAP" is w/o NMS for ours, w/ NMS for FCOS).
    metric: str
    label: str


class ColumnGroup(_Strict):
    title: str = ""  # the upper header ("mAP (%)"); empty for a single plain column
    columns: list[ColumnSpec] = Field(min_length=1)


class RowKey(_Strict):
    key: str  # dotted config key, or "cell" for the cell id
    header: str
    labels: dict[Any, str] = {}  # value -> display text


class ReferenceRow(_Strict):
    """A row shown from the paper only (e.g. DeFCN in Table 1)."""

    labels: list[str]  # one per row key
    values: dict[str, float]
    after: str | None = None  # cell id it follows; default: the end
    note: str = "from the paper; not trained here"


class TableSpec(_Strict):
    title: str
    caption: str = ""
    rows: list[RowKey] = Field(min_length=1)  # the first is the row group
    columns: list[ColumnGroup] = Field(min_length=1)
    # Which row of each group the others are compared with (Welch's t-test), given as
    # row values, e.g. {model.pss.stop_grad: true}; or {cell: <id>} for one cell.
    baseline: dict[str, Any] | None = None
    # Also test every compared row's difference from its baseline together (a legend line:
    # mean difference, one-sample t-test, rows above): is there a systematic sign?
    paired: bool = False
    reference_rows: list[ReferenceRow] = []


class FigureSpec(_Strict):
    """A convergence figure: ``metric`` against epoch, one panel per ``panels`` value."""

    title: str
    metric: str = "mAP_e2e"
    panels: str | None = None  # a row key (dotted config key) splitting panels
    series: str  # the row key that tells curves apart
    labels: dict[str, dict[Any, str]] = {}  # key -> value -> display text


class SearchParam(_Strict):
    key: str  # dotted config key
    low: float
    high: float
    log: bool = False
    kind: Literal["float", "int"] = "float"

    @model_validator(mode="after")
    def _range(self) -> SearchParam:
        if not self.low < self.high:
            raise ValueError(f"search parameter {self.key}: low must be < high")
        if self.log and self.low <= 0:
            raise ValueError(f"search parameter {self.key}: log scale needs low > 0")
        return self


class SearchSpec(_Strict):
    params: list[SearchParam] = Field(min_length=1)
    n_trials: int = Field(20, ge=1)
    smoke_n_trials: int = Field(4, ge=1)  # with --smoke
    workers: int = Field(2, ge=1)
    metric: str = "mAP_e2e"
    direction: Literal["maximize", "minimize"] = "maximize"
    storage: str | None = None  # SQLAlchemy URL; default: SQLite beside the MLflow store
    seed: int = 0
    pruner_warmup_epochs: int = Field(1, ge=0)


class Spec(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    description: str = ""
    base: str
    smoke: str | None = None  # overlay for --smoke; default experiments/smoke/overlay.yaml
    smoke_overrides: dict[str, Any] = {}
    overrides: dict[str, Any] = {}  # for every cell
    engine: Literal[ENGINES] = TORCH  # type: ignore[valid-type]  # what trains the cells
    seeds: list[int] = Field([0], min_length=1)
    grid: dict[str, list[Any]] = {}
    grid_id: str | None = None  # e.g. "{model.name}-c{model.pss.num_convs}"
    cells: list[CellSpec] = []
    # The most cells (grid points and explicit cells) the spec may name: a guard against
    # a grid that multiplies out to millions; raise it here to run more.
    max_cells: int = Field(MAX_CELLS, ge=1)
    resources: Resources = Resources()
    paper: list[PaperRow] = []
    # Where the values of ``paper`` come from: the header of their column in reports
    # ("authors' README" for sweeps/authors_readme.yaml).
    paper_source: str = Field("paper", min_length=1)
    table: TableSpec | None = None
    figure: FigureSpec | None = None
    search: SearchSpec | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Spec:
        for key, values in self.grid.items():
            if not values:
                raise ValueError(f"grid.{key}: empty axis (expected a non-empty list of values)")
        if not self.grid and not self.cells and self.search is None:
            raise ValueError("a spec needs grid axes, cells or a search block")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds: repeated seed")
        if self.search is not None and self.engine != TORCH:
            raise ValueError(f"engine: a search trains on {TORCH} only (got {self.engine})")
        return self


@dataclass
class LoadedSpec:
    """A validated spec and the file it was read from (its paths are relative to it)."""

    spec: Spec
    path: Path

    @property
    def root(self) -> Path:
        return self.path.parent

    def resolve(self, relative: str) -> Path:
        return (self.root / relative).resolve()

    def experiment(self, smoke: bool) -> str:
        return contract.experiment_name(self.spec.name, smoke, self.spec.engine)

    def config_files(self, smoke: bool, cell: CellSpec | None = None) -> list[Path]:
        """The experiment files a cell's config is read from: its base (or the spec's),
        then, with ``smoke``, the smoke overlay."""
        files = [self.resolve(cell.base if cell is not None and cell.base else self.spec.base)]
        if smoke:
            files.append(self.resolve(self.spec.smoke) if self.spec.smoke else DEFAULT_SMOKE)
        return files


def load_spec(path: str | Path, engine: str | None = None) -> LoadedSpec:
    """Read and validate a whole spec file before anything runs.

    Schema, experiment files, cells, stages and their dependencies, paper rows,
    and the table and figure layout (metrics, row keys, baseline): a spec that
    loads can be expanded (:func:`pss.sweep.expand.expand` then checks every cell's
    config) and reported. ``engine`` (``sweeps/run.py --engine``) trains every cell on that
    engine, whatever the spec and its cells say.
    """
    path = Path(path)
    data = read_yaml(path, "spec")
    if not isinstance(data, dict):
        raise UserError("a spec must be a mapping (name, base, grid/cells, ...)", str(path))
    if engine is not None:
        data["engine"] = engine
        for cell in data.get("cells") or []:
            if isinstance(cell, dict):
                cell.pop("engine", None)
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, Spec, str(path)) from None
    size = cell_count(spec)
    if size > spec.max_cells:
        axes = " x ".join(str(len(v)) for v in spec.grid.values()) or "0"
        listed = f" + {len(spec.cells)} listed" if spec.cells else ""
        raise UserError(
            f"grid: {size} cells ({axes}{listed}) are over the limit of {spec.max_cells}; "
            f"set max_cells: {size} in the spec to run them",
            str(path),
        )
    loaded = LoadedSpec(spec, path)
    for i, file in enumerate(loaded.config_files(smoke=True)):
        key = "base" if i == 0 else "smoke"
        if not file.is_file():
            raise UserError(f"{key}: experiment file not found: {file}", str(path))
    for cell in spec.cells:
        if cell.base and not loaded.resolve(cell.base).is_file():
            raise UserError(
                f"cells.{cell.id}.base: experiment file not found: {loaded.resolve(cell.base)}",
                str(path),
            )
    _check_cells(loaded)
    if spec.table is not None:
        _check_table(loaded)
    if spec.figure is not None:
        _check_figure(loaded)
    return loaded


# ---------------------------------------------------------------- the cells of a spec


def _grid_cells(spec: Spec) -> list[CellSpec]:
    """A cell per point of the grid; its id from ``grid_id``, or by default the axes' names
    and values, ``num_convs=1+stop_grad=true`` (:func:`_axis_names`, :func:`id_text`).
    Raises ValueError (one line) for an id that is not valid or that two points share."""
    if not spec.grid:
        return []
    keys = list(spec.grid)
    names = _axis_names(keys)
    cells: list[CellSpec] = []
    made: dict[str, dict[str, Any]] = {}
    for values in itertools.product(*(spec.grid[k] for k in keys)):
        overrides = dict(zip(keys, values))
        if spec.grid_id:
            cell_id = re.sub(
                r"\{([^{}]+)\}",
                lambda m, o=overrides: _axis_value(o, m[1]),
                spec.grid_id,
            )
        else:
            cell_id = "+".join(f"{names[k]}={id_text(v)}" for k, v in overrides.items())
        cell_id = _short(cell_id)
        if not re.match(ID_PATTERN, cell_id):
            raise ValueError(
                f"cell id '{cell_id}' of {overrides} is not valid: it must start with a "
                "letter or digit and hold only letters, digits and _ . = + -"
            )
        if cell_id in made:
            hint = "put every axis in grid_id" if spec.grid_id else "set grid_id"
            raise ValueError(
                f"cells {made[cell_id]} and {overrides} both get the id '{cell_id}' "
                f"({hint} to tell them apart)"
            )
        made[cell_id] = overrides
        cells.append(CellSpec(id=cell_id, overrides=overrides))
    return cells


def _axis_names(keys: list[str]) -> dict[str, str]:
    """Each dotted key's shortest ending that no other key shares: ``num_convs`` for
    ``model.pss.num_convs``, ``train.seed`` beside ``data.synthetic.seed``."""
    names = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            name = ".".join(parts[-n:])
            if not any(other != key and other.split(".")[-n:] == parts[-n:] for other in keys):
                break
        names[key] = name
    return names


def id_text(value: Any) -> str:
    """A grid value as it reads in a cell id: ``true``, ``0.0001``, ``-1``, ``fcos_pss``.
    A value with characters an id cannot hold (spaces, slashes, brackets) has each run of
    them made '-' and ends in 6 hex digits of its hash, so that ids stay distinct."""
    text = str(value).lower() if isinstance(value, bool) else str(value)
    text = "null" if value is None else text
    parts = [p for p in re.split(r"[^A-Za-z0-9_.=+-]+", text) if p]
    if "-".join(parts) == text:
        return text
    digest = hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
    return "-".join([*parts, digest[:6]])


def _short(cell_id: str) -> str:
    """A cell id of at most MAX_ID_LENGTH characters: a longer one is cut and ends in a
    hash of the whole (ids name folders and runs)."""
    if len(cell_id) <= MAX_ID_LENGTH:
        return cell_id
    digest = hashlib.sha256(cell_id.encode()).hexdigest()[:8]
    return f"{cell_id[: MAX_ID_LENGTH - 9]}-{digest}"


def _axis_value(overrides: dict[str, Any], key: str) -> str:
    if key not in overrides:
        raise ValueError(f"'{{{key}}}' is not a grid axis (axes: {list(overrides)})")
    return id_text(overrides[key])


def cell_count(spec: Spec) -> int:
    """How many cells a spec names (its grid's product and its listed cells), without
    making them."""
    return (math.prod(len(v) for v in spec.grid.values()) if spec.grid else 0) + len(spec.cells)


def all_cells(spec: Spec) -> list[CellSpec]:
    """The cells a spec names: every point of its grid (ids from ``grid_id``), then its
    explicit cells."""
    return _grid_cells(spec) + list(spec.cells)


def cell_overrides(spec: Spec, cell: CellSpec) -> dict[str, Any]:
    """Spec-wide overrides, then the cell's own."""
    return {**spec.overrides, **cell.overrides}


def row_values(spec: Spec, cell: CellSpec) -> dict[str, Any]:
    """What identifies a cell in tables: its id, overrides and labels (labels win)."""
    return {"cell": cell.id, **cell_overrides(spec, cell), **cell.labels}


def stage_needs(stage: StageSpec) -> list[str]:
    """The stages that must finish before ``stage`` starts: depends_on and init_from."""
    needs = [*stage.depends_on, *([stage.init_from] if stage.init_from else [])]
    return list(dict.fromkeys(needs))


# ---------------------------------------------------------------- checks


def _check_cells(loaded: LoadedSpec) -> None:
    spec, src = loaded.spec, str(loaded.path)
    try:
        cells = all_cells(spec)
    except ValueError as exc:
        raise UserError(f"{'grid_id' if spec.grid_id else 'grid'}: {exc}", src) from None
    ids = [c.id for c in cells]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise UserError(f"cells: duplicate cell id '{dupes[0]}'", src)
    for cell in cells:
        names = [s.name for s in cell.stages]
        if len(set(names)) != len(names):
            raise UserError(f"cells.{cell.id}.stages: duplicate stage name", src)
        for stage in cell.stages:
            for dep in stage_needs(stage):
                if dep not in names:
                    raise UserError(
                        f"cells.{cell.id}.stages.{stage.name}: unknown stage '{dep}'"
                        f"{nearest(dep, names)} (expected one of {names})",
                        src,
                    )
        _check_acyclic(cell, src)
    for i, row in enumerate(spec.paper):
        matches = [c.id for c in cells if _matches(row_values(spec, c), row.where)]
        if len(matches) != 1:
            raise UserError(
                f"paper.{i}.where: matches {len(matches)} cells (expected exactly one): "
                f"{row.where}",
                src,
            )


def _check_table(loaded: LoadedSpec) -> None:
    """What the schema lets through but a table cannot use: metrics, row keys, baseline."""
    spec, src = loaded.spec, str(loaded.path)
    table = spec.table
    assert table is not None
    cells = all_cells(spec)
    for i, group in enumerate(table.columns):
        for j, column in enumerate(group.columns):
            if not contract.is_known_metric(column.metric):
                known = contract.known_metrics()
                raise UserError(
                    f"table.columns.{i}.columns.{j}.metric: unknown metric '{column.metric}'"
                    f"{nearest(column.metric, known)} (expected one of "
                    f"{', '.join(known)}, or a name with '{contract.MODE_PLACEHOLDER}')",
                    src,
                )
    for i, key in enumerate(table.rows):
        _check_row_key(spec, cells, key.key, f"table.rows.{i}.key", src)
    ids = {c.id for c in cells}
    for i, ref in enumerate(table.reference_rows):
        if ref.after is not None and ref.after not in ids:
            raise UserError(
                f"table.reference_rows.{i}.after: unknown cell '{ref.after}'"
                f"{nearest(ref.after, ids)}",
                src,
            )
        if len(ref.labels) != len(table.rows):
            raise UserError(
                f"table.reference_rows.{i}.labels: expected {len(table.rows)} labels "
                "(one per row key)",
                src,
            )
    base = table.baseline
    if base is not None and not any(_matches(row_values(spec, c), base) for c in cells):
        raise UserError(f"table.baseline: no cell has {base}", src)


def _check_figure(loaded: LoadedSpec) -> None:
    """What the schema lets through but a figure cannot use: its metric and row keys."""
    spec, src = loaded.spec, str(loaded.path)
    figure = spec.figure
    assert figure is not None
    if (
        not contract.is_known_metric(figure.metric)
        or contract.MODE_PLACEHOLDER in figure.metric
    ):
        raise UserError(
            f"figure.metric: unknown metric '{figure.metric}'"
            f"{nearest(figure.metric, contract.known_metrics())}",
            src,
        )
    cells = all_cells(spec)
    for name in ("panels", "series"):
        key = getattr(figure, name)
        if key is not None:
            _check_row_key(spec, cells, key, f"figure.{name}", src)


def _check_row_key(spec: Spec, cells: list[CellSpec], key: str, where: str, src: str) -> None:
    """Every reported cell must have a value for a row key (its id, an override or a label)."""
    for cell in cells:
        row = row_values(spec, cell)
        if cell.report and key not in row:
            raise UserError(
                f"{where}: '{key}' is not a cell id, override or label of cell "
                f"'{cell.id}'{nearest(key, row)}",
                src,
            )


def _check_acyclic(cell: CellSpec, src: str) -> None:
    deps = {s.name: set(stage_needs(s)) for s in cell.stages}
    state: dict[str, int] = {}

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == 1:
            cycle = " -> ".join([*trail[trail.index(name) :], name])
            raise UserError(f"cells.{cell.id}.stages: cyclic dependency {cycle}", src)
        if state.get(name) == 2:
            return
        state[name] = 1
        for dep in sorted(deps[name]):
            visit(dep, [*trail, name])
        state[name] = 2

    for name in deps:
        visit(name, [])


def _matches(overrides: dict[str, Any], where: dict[str, Any]) -> bool:
    return all(k in overrides and overrides[k] == v for k, v in where.items())
