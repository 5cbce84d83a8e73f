"""The paper's table layout: from a spec's ``table:`` block and cell results to a :class:`Table`.

Rows are grouped by the first row key (shown once per group), in spec order;
reference rows from the paper (DeFCN in Table 1) go after their ``after``
cell. Each value cell is the mean over seeds (with ± std and n where there are
several), bold where it is the best of its group, marked where it differs
significantly from the group's baseline row or lies within seed noise of it.
Cells without a value show a dash and a footnote saying why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pss.errors import UserError
from pss.report import metrics
from pss.report.collect import CellResult
from pss.report.stats import Summary, compare, summarize
from pss.report.table import (
    DASH,
    NOISE,
    SIGNIFICANT,
    Cell,
    Column,
    ColumnKind,
    HeaderGroup,
    Notes,
    Row,
    RowGroup,
    Table,
    fmt,
    fmt_diff,
)
from pss.sweep.schema import (
    ColumnSpec,
    LoadedSpec,
    ReferenceRow,
    RowKey,
    Spec,
)


def label(key: RowKey, value: Any) -> str:
    """The display text of a row key's value."""
    try:
        if value in key.labels:
            return key.labels[value]
    except TypeError:  # unhashable
        pass
    return str(value)


def matches(row: dict[str, Any], where: dict[str, Any]) -> bool:
    return all(k in row and row[k] == v for k, v in where.items())


# --------------------------------------------------------------------- layout


@dataclass
class _Entry:
    """A row before its cells are made: a cell result or a reference row."""

    result: CellResult | None = None
    reference: ReferenceRow | None = None


@dataclass
class _Group:
    value: Any
    label: str
    entries: list[_Entry]


def _groups(spec: Spec, results: list[CellResult]) -> list[_Group]:
    table = spec.table
    assert table is not None
    first = table.rows[0]
    groups: list[_Group] = []
    for result in results:
        value = result.row.get(first.key)
        group = next((g for g in groups if g.value == value), None)
        if group is None:
            group = _Group(value, label(first, value), [])
            groups.append(group)
        group.entries.append(_Entry(result=result))
    for ref in table.reference_rows:
        _place(groups, ref, label(first, ref.labels[0]))
    return groups


def _place(groups: list[_Group], ref: ReferenceRow, group_label: str) -> None:
    for group in groups:
        for i, entry in enumerate(group.entries):
            if ref.after is not None and entry.result is not None and entry.result.id == ref.after:
                group.entries.insert(i + 1, _Entry(reference=ref))
                return
    same = [g for g in groups if g.label == group_label]
    if same:
        same[-1].entries.append(_Entry(reference=ref))
    else:
        groups.append(_Group(ref.labels[0], group_label, [_Entry(reference=ref)]))


def _header(spec: Spec, with_paper: bool) -> list[HeaderGroup]:
    table = spec.table
    assert table is not None
    header = []
    for group in table.columns:
        if not with_paper:
            header.append(
                HeaderGroup(group.title, tuple(_column(c, c.label) for c in group.columns))
            )
        elif group.title:
            cols = [col for c in group.columns for col in _with_paper(c, c.label)]
            header.append(HeaderGroup(group.title, tuple(cols)))
        else:
            for c in group.columns:
                header.append(HeaderGroup(c.label, tuple(_with_paper(c, "ours"))))
    return header


def _column(spec: ColumnSpec, text: str, kind: ColumnKind = "ours") -> Column:
    return Column(text, spec.metric, kind, metrics.decimals(spec.metric))


def _with_paper(spec: ColumnSpec, text: str) -> list[Column]:
    return [_column(spec, text), _column(spec, "paper", "paper"), _column(spec, "Δ", "diff")]


def paper_value(spec: Spec, row: dict[str, Any], metric: str, mode: str | None) -> float | None:
    """The paper's value of ``metric`` for the cell with these row values, or None."""
    for paper in spec.paper:
        if matches(row, paper.where):
            for key in metrics.paper_keys(metric, mode):
                if key in paper.values:
                    return paper.values[key]
    return None


def _summary_text(summary: Summary, decimals: int, multi_seed: bool) -> str:
    text = fmt(summary.mean, decimals)
    if summary.std is not None:
        return f"{text} ± {fmt(summary.std, decimals)} (n={summary.n})"
    return f"{text} (n=1)" if multi_seed else text


def _best(values: list[tuple[int, float]], metric: str) -> set[int]:
    """Indices of the best (rounded) values; none when fewer than two rows have one."""
    if len(values) < 2:
        return set()
    rounded = [(i, round(v, metrics.decimals(metric))) for i, v in values]
    pick = min if metrics.lower_is_better(metric) else max
    best = pick(v for _, v in rounded)
    return {i for i, v in rounded if v == best}


@dataclass
class _GroupStats:
    """Per group: the rows with results, their summaries (one per column), the baseline
    row and the best row indices per column."""

    rows: list[CellResult]
    summaries: dict[str, list[Summary | None]]
    base: CellResult | None
    best: list[set[int]]


def _group_stats(spec: Spec, group: _Group, specs: list[ColumnSpec]) -> _GroupStats:
    baseline = spec.table.baseline if spec.table else None
    rows = [e.result for e in group.entries if e.result is not None]
    summaries = {
        r.id: [summarize(r.values(metrics.resolve(c.metric, r.mode))) for c in specs] for r in rows
    }
    best = []
    for k, c in enumerate(specs):
        values = [(i, s.mean) for i, r in enumerate(rows) if (s := summaries[r.id][k])]
        best.append(_best(values, c.metric))
    base = next((r for r in rows if baseline and matches(r.row, baseline)), None)
    return _GroupStats(rows, summaries, base, best)


def _result_row(
    spec: Spec,
    result: CellResult,
    stats: _GroupStats,
    specs: list[ColumnSpec],
    notes: Notes,
    with_paper: bool,
) -> Row:
    assert spec.table is not None
    index = next(i for i, r in enumerate(stats.rows) if r is result)
    row_note = result.note()
    cells: list[Cell] = []
    for k, column in enumerate(specs):
        summary = stats.summaries[result.id][k]
        metric = metrics.resolve(column.metric, result.mode)
        texts = [row_note] if row_note else []
        missing = result.without(metric)
        if missing:
            ids = ", ".join(r.short_id for r in missing)
            what = "not logged" if len(missing) == len(result.runs) else "missing"
            texts.append(f"{result.id}: {metric} {what} (run {ids})")
        numbers = tuple(notes.add(t) for t in texts)
        base = stats.summaries[stats.base.id][k] if stats.base is not None else None
        cmp = None
        if stats.base is not result and summary is not None and base is not None:
            cmp = compare(summary, base)
        bold = index in stats.best[k]
        cells.append(_value_cell(summary, column, bold, cmp, numbers, result.multi_seed))
        if with_paper:
            cells.extend(_paper_cells(spec, result, column, summary))
    keys = [Cell(label(key, result.row.get(key.key))) for key in spec.table.rows[1:]]
    return Row(keys=keys, cells=cells, cell_id=result.id)


def build_table(loaded: LoadedSpec, results: list[CellResult], with_paper: bool = False) -> Table:
    """The spec's table from cell results (see the module docstring)."""
    spec = loaded.spec
    table = spec.table
    if table is None:
        raise UserError("no table: block in the spec", str(loaded.path))
    specs = [c for g in table.columns for c in g.columns]
    notes = Notes()
    groups: list[RowGroup] = []
    for group in _groups(spec, results):
        stats = _group_stats(spec, group, specs)
        out = RowGroup(label=Cell(group.label))
        for entry in group.entries:
            if entry.reference is not None:
                row = _reference_row(table.rows, entry.reference, specs, notes, with_paper)
            else:
                assert entry.result is not None
                row = _result_row(spec, entry.result, stats, specs, notes, with_paper)
            out.rows.append(row)
        groups.append(out)
    tested = any(c.data.get("p") is not None for g in groups for r in g.rows for c in r.cells)
    return Table(
        name=spec.name,
        title=table.title,
        caption=table.caption,
        row_headers=[k.header for k in table.rows],
        header=_header(spec, with_paper),
        groups=groups,
        notes=notes.texts,
        legend=_legend(spec, results, with_paper, tested),
    )


def _value_cell(
    summary: Summary | None,
    column: ColumnSpec,
    bold: bool,
    cmp: Any,
    notes: tuple[int, ...],
    multi_seed: bool,
) -> Cell:
    if summary is None:
        return Cell(DASH, notes=notes, data={"mean": None, "std": None, "n": 0, "p": None})
    marks = []
    if cmp is not None and cmp.significant:
        marks.append(SIGNIFICANT)
    if cmp is not None and cmp.within_noise:
        marks.append(NOISE)
    return Cell(
        _summary_text(summary, metrics.decimals(column.metric), multi_seed),
        bold=bold,
        marks=tuple(marks),
        notes=notes,
        data={
            "mean": summary.mean,
            "std": summary.std,
            "n": summary.n,
            "p": cmp.p if cmp is not None else None,
        },
    )


def _paper_cells(
    spec: Spec, result: CellResult, column: ColumnSpec, summary: Summary | None
) -> list[Cell]:
    decimals = metrics.decimals(column.metric)
    paper = paper_value(spec, result.row, column.metric, result.mode)
    if paper is None:
        return [Cell(data={"value": None}), Cell(data={"value": None})]
    diff = summary.mean - paper if summary is not None else None
    return [
        Cell(fmt(paper, decimals), data={"value": paper}),
        Cell(fmt_diff(diff, decimals), data={"value": diff})
        if diff is not None
        else Cell(DASH, data={"value": None}),
    ]


def _reference_row(
    keys: list[RowKey],
    ref: ReferenceRow,
    specs: list[ColumnSpec],
    notes: Notes,
    with_paper: bool,
) -> Row:
    note = notes.add(ref.note)
    labels = [Cell(label(k, v)) for k, v in zip(keys[1:], ref.labels[1:])]
    if labels:
        labels[-1] = Cell(labels[-1].text, notes=(note,))
    cells: list[Cell] = []
    for column in specs:
        keys_ = metrics.paper_keys(column.metric, None)
        value = next((ref.values[k] for k in keys_ if k in ref.values), None)
        text = fmt(value, metrics.decimals(column.metric)) if value is not None else ""
        data = {"mean": value, "std": None, "n": None, "p": None}
        cells.append(Cell(text, notes=() if labels else (note,), data=data))
        if with_paper:
            cells.extend([Cell(data={"value": None}), Cell(data={"value": None})])
    return Row(keys=labels, cells=cells, cell_id=None)


def _baseline_text(spec: Spec, results: list[CellResult]) -> str:
    table = spec.table
    assert table is not None and table.baseline is not None
    parts = []
    for key, value in table.baseline.items():
        row_key = next((k for k in table.rows if k.key == key), None)
        if key == "cell":
            parts.append(f"cell {value}")
        elif row_key is not None:
            parts.append(f"{row_key.header} = {label(row_key, value) or '(blank)'}")
        else:
            parts.append(f"{key} = {value}")
    return ", ".join(parts)


def _legend(spec: Spec, results: list[CellResult], with_paper: bool, tested: bool) -> list[str]:
    lines = []
    if len(spec.seeds) > 1 or any(len(r.runs) > 1 for r in results):
        lines.append(
            "Values: mean ± sample std over seeds (n = number of seeds, the newest finished "
            "run of each); a single value is one seed."
        )
    lines.append("Bold: the best value of its group (highest accuracy, lowest time).")
    if spec.table is not None and spec.table.baseline is not None:
        base = _baseline_text(spec, results)
        lines.append(
            f"{SIGNIFICANT}: differs from its group's baseline ({base}) with p < 0.05, "
            "Welch's t-test (needs n ≥ 2 seeds on both sides"
            + ("" if tested else "; no row has that yet")
            + ")."
        )
        lines.append(
            f"{NOISE}: the difference from the baseline is smaller than the larger seed std "
            "(within seed noise)."
        )
    if with_paper:
        lines.append("paper: the value reported in the paper; Δ = ours − paper.")
    return lines
