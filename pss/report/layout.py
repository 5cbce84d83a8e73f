"""The paper's table layout: from a spec's ``table:`` block and cell results to a :class:`Table`.

Rows are grouped by the first row key (shown once per group), in spec order;
reference rows from the paper (DeFCN in Table 1) go after their ``after``
cell. The numbers are one frame (:func:`cell_stats`): each cell's finished runs
grouped over seeds (mean, std, n), compared with its group's baseline row
(Welch's p, seed noise), the best of each group, the paper's value. Each value
cell shows the mean (with ± std and n where there are several seeds), bold where
it is the best of its group, marked where it differs significantly from the
group's baseline row or lies within seed noise of it. Cells without a value show
a dash and a footnote saying why. The same numbers in the table's row order are
the table's :attr:`~pss.report.table.Table.frame`, which the CSV holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pss.errors import UserError
from pss.report import metrics
from pss.report.collect import CellResult
from pss.report.stats import compare, paired, seed_stats
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
from pss.sweep.schema import ColumnSpec, LoadedSpec, ReferenceRow, RowKey, Spec

NO_PSS_HEAD = "no PSS head: NMS only"  # the note of a baseline's end-to-end value


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
            cols = [col for c in group.columns for col in _with_paper(c, c.label, spec)]
            header.append(HeaderGroup(group.title, tuple(cols)))
        else:
            for c in group.columns:
                header.append(HeaderGroup(c.label, tuple(_with_paper(c, "ours", spec))))
    return header


def _column(spec: ColumnSpec, text: str, kind: ColumnKind = "ours") -> Column:
    return Column(text, spec.metric, kind, metrics.decimals(spec.metric))


def _with_paper(column: ColumnSpec, text: str, spec: Spec) -> list[Column]:
    """Our column, the reference's (headed by ``spec.paper_source``) and the difference."""
    source = _column(column, spec.paper_source, "paper")
    return [_column(column, text), source, _column(column, "Δ", "diff")]


def paper_value(spec: Spec, row: dict[str, Any], metric: str, mode: str | None) -> float | None:
    """The paper's value of ``metric`` for the cell with these row values, or None."""
    for paper in spec.paper:
        if matches(row, paper.where):
            for key in metrics.paper_keys(metric, mode):
                if key in paper.values:
                    return paper.values[key]
    return None


def _baseline(group: _Group, where: dict[str, Any] | None) -> str | None:
    """The id of the group's baseline cell (the first that ``where`` matches), or None."""
    results = (e.result for e in group.entries if e.result is not None)
    return next((r.id for r in results if where and matches(r.row, where)), None)


def cell_stats(spec: Spec, groups: list[_Group], specs: list[ColumnSpec]) -> pd.DataFrame:
    """The numbers of the cells' rows: one row per cell (its id, in table order), columns
    ``(k, field)`` for the k-th value column: ``mean``, ``std`` and ``n`` over the cell's
    seeds, Welch's ``p`` against its group's baseline row, ``significant``,
    ``within_noise``, ``best`` (of its group), the ``paper``'s value and ``diff`` (ours -
    paper)."""
    assert spec.table is not None
    results = [e.result for g in groups for e in g.entries if e.result is not None]
    ids = [r.id for r in results]
    group = pd.Series([i for i, g in enumerate(groups) for e in g.entries if e.result], ids)
    base = group.map({i: _baseline(g, spec.table.baseline) for i, g in enumerate(groups)})
    compared = base.notna() & (base != base.index)  # not the baseline itself
    runs = []  # one row per finished run: its cell and the metric of each column
    for r in results:
        names = [metrics.resolve(c.metric, r.mode) for c in specs]
        runs += [(r.id, *(run.metrics.get(m, math.nan) for m in names)) for run in r.runs]
    columns = list(range(len(specs)))
    values = pd.DataFrame(runs, columns=["cell", *columns]).astype(dict.fromkeys(columns, float))
    seeds = seed_stats(values[columns], values["cell"]).reindex(ids)
    out = {}
    for k, column in enumerate(specs):
        ours = seeds[k].assign(n=seeds[k]["n"].fillna(0).astype(int))
        cmp = compare(ours, ours.reindex(base).set_axis(ids))
        rounded = ours["mean"].apply(round, args=(metrics.decimals(column.metric),))
        in_group = rounded.groupby(group)
        top = in_group.transform("min" if metrics.lower_is_better(column.metric) else "max")
        paper = pd.Series(
            [paper_value(spec, r.row, column.metric, r.mode) for r in results], ids, dtype=float
        )
        out[k] = ours.assign(
            vs_base=cmp["diff"].where(compared),
            p=cmp["p"].where(compared),
            significant=cmp["significant"] & compared,
            within_noise=cmp["within_noise"] & compared,
            best=(rounded == top) & (in_group.transform("count") >= 2),  # of two rows or more
            paper=paper,
            diff=ours["mean"] - paper,
        )
    return pd.concat(out, axis=1)


def _summary_text(s: dict[str, Any], decimals: int, multi_seed: bool) -> str:
    text = fmt(s["mean"], decimals)
    if s["n"] > 1:
        return f"{text} ± {fmt(s['std'], decimals)} (n={s['n']})"
    return f"{text} (n=1)" if multi_seed else text


def _value_cell(s: dict[str, Any], decimals: int, notes: tuple[int, ...], multi_seed: bool) -> Cell:
    """Our value: mean (± std, n), bold, marks; ``s`` is the cell's row of :func:`cell_stats`."""
    if not s["n"]:
        return Cell(DASH, notes=notes)
    marks = [m for m, on in ((SIGNIFICANT, s["significant"]), (NOISE, s["within_noise"])) if on]
    text = _summary_text(s, decimals, multi_seed)
    return Cell(text, bold=bool(s["best"]), marks=tuple(marks), notes=notes)


def _paper_cells(s: dict[str, Any], decimals: int) -> list[Cell]:
    if math.isnan(s["paper"]):
        return [Cell(), Cell()]
    diff = Cell(DASH) if math.isnan(s["diff"]) else Cell(fmt_diff(s["diff"], decimals))
    return [Cell(fmt(s["paper"], decimals)), diff]


def _result_row(
    spec: Spec,
    result: CellResult,
    stats: list[dict[str, Any]],
    specs: list[ColumnSpec],
    notes: Notes,
    with_paper: bool,
) -> Row:
    """A cell's row; ``stats``: its row of :func:`cell_stats`, one dict per column."""
    assert spec.table is not None
    row_note = result.note()
    cells: list[Cell] = []
    for column, s in zip(specs, stats):
        metric = metrics.resolve(column.metric, result.mode)
        texts = [row_note] if row_note else []
        missing = result.without(metric)
        if result.mode != "e2e" and metrics.mode_of(metric) == "e2e":
            texts.append(NO_PSS_HEAD)  # never logged: a baseline has no end-to-end mode
        elif missing:
            ids = ", ".join(r.short_id for r in missing)
            what = "not logged" if len(missing) == len(result.runs) else "missing"
            texts.append(f"{result.id}: {metric} {what} (run {ids})")
        numbers = tuple(notes.add(t) for t in texts)
        decimals = metrics.decimals(column.metric)
        cells.append(_value_cell(s, decimals, numbers, result.multi_seed))
        if with_paper:
            cells.extend(_paper_cells(s, decimals))
    keys = [Cell(label(key, result.row.get(key.key))) for key in spec.table.rows[1:]]
    return Row(keys=keys, cells=cells, cell_id=result.id)


def _reference_row(
    keys: list[RowKey],
    ref: ReferenceRow,
    specs: list[ColumnSpec],
    notes: Notes,
    with_paper: bool,
) -> tuple[Row, list[float | None]]:
    """A row of the paper's values (not trained here), and those values."""
    note = notes.add(ref.note)
    labels = [Cell(label(k, v)) for k, v in zip(keys[1:], ref.labels[1:])]
    if labels:
        labels[-1] = Cell(labels[-1].text, notes=(note,))
    values = [
        next((ref.values[k] for k in metrics.paper_keys(c.metric, None) if k in ref.values), None)
        for c in specs
    ]
    cells: list[Cell] = []
    for column, value in zip(specs, values):
        text = fmt(value, metrics.decimals(column.metric)) if value is not None else ""
        cells.append(Cell(text, notes=() if labels else (note,)))
        if with_paper:
            cells.extend([Cell(), Cell()])
    return Row(keys=labels, cells=cells, cell_id=None), values


def build_table(loaded: LoadedSpec, results: list[CellResult], with_paper: bool = False) -> Table:
    """The spec's table from cell results (see the module docstring)."""
    spec = loaded.spec
    table = spec.table
    if table is None:
        raise UserError("no table: block in the spec", str(loaded.path))
    specs = [c for g in table.columns for c in g.columns]
    groups = _groups(spec, results)
    stats = cell_stats(spec, groups, specs)
    by_cell = [stats[k].to_dict("index") for k in range(len(specs))]
    notes = Notes()
    out: list[RowGroup] = []
    order: list[str] = []  # the rows' ids in stats: a cell's id, '(paper) i' for a reference
    papers: dict[str, list[float | None]] = {}
    for group in groups:
        rows = RowGroup(label=Cell(group.label))
        for entry in group.entries:
            if entry.reference is not None:
                row, values = _reference_row(table.rows, entry.reference, specs, notes, with_paper)
                order.append(f"(paper) {len(papers)}")
                papers[order[-1]] = values
            else:
                result = entry.result
                assert result is not None
                row = _result_row(
                    spec, result, [s[result.id] for s in by_cell], specs, notes, with_paper
                )
                order.append(result.id)
            rows.rows.append(row)
        out.append(rows)
    tested = bool(stats.xs("p", axis=1, level=1).notna().any(axis=None))
    bold = any(c.bold for g in out for r in g.rows for c in r.cells)
    made_header = _header(spec, with_paper)
    made = Table(
        name=spec.name,
        title=table.title,
        caption=table.caption,
        row_headers=[k.header for k in table.rows],
        header=made_header,
        groups=out,
        notes=notes.texts,
        legend=_legend(spec, results, with_paper, tested, bold)
        + (_paired_legend(made_header, stats) if table.paired else []),
    )
    numbers = stats.reindex(order)
    for ref, values in papers.items():  # the paper's values stand where our means do
        numbers.loc[ref, [(k, "mean") for k in range(len(specs))]] = np.array(values, float)
    made.frame = _frame(made, numbers, len(specs), with_paper)
    return made


def _frame(table: Table, numbers: pd.DataFrame, count: int, with_paper: bool) -> pd.DataFrame:
    """What the CSV holds (:mod:`pss.report.table`): ``numbers`` (one row per table row)
    under CSV names, after the row's cell id and keys and before its notes."""
    fields = ("mean", "std", "n", "p") + (("paper", "diff") if with_paper else ())
    numbers = numbers[[(k, f) for k in range(count) for f in fields]]
    numbers = numbers.astype({(k, "n"): "Int64" for k in range(count)})
    numbers.columns = _csv_names(table.header)
    rows = table.rows()
    keys = [
        [row.cell_id or "(paper)", group.label.text, *(k.text for k in row.keys)]
        for group, _, row in rows
    ]
    notes = [
        " | ".join(
            table.notes[n - 1]
            for n in sorted({n for c in (group.label, *row.keys, *row.cells) for n in c.notes})
        )
        for group, _, row in rows
    ]
    return pd.concat(
        [
            pd.DataFrame(keys, columns=["cell", *table.row_headers]),
            numbers.reset_index(drop=True),
            pd.DataFrame({"notes": notes}),
        ],
        axis=1,
    )


def _csv_names(header: list[HeaderGroup]) -> list[str]:
    """'mAP (%) w/o NMS', its 'std', 'n' and 'p'; 'mAP (%) w/o NMS paper' and '... Δ'."""
    names: list[str] = []
    ours = ""
    for group in header:
        for column in group.columns:
            if column.kind != "ours":
                names.append(f"{ours} {column.label}")
                continue
            if not group.title:
                ours = column.label
            else:
                ours = group.title if column.label == "ours" else f"{group.title} {column.label}"
            names += [ours, f"{ours} std", f"{ours} n", f"{ours} p"]
    return names


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


def _paired_legend(header: list[HeaderGroup], stats: pd.DataFrame) -> list[str]:
    """One line testing every row's difference from its baseline together, per column,
    where three rows or more were compared: a systematic sign or not."""
    ours = [
        g.title if c.label == "ours" else f"{g.title} {c.label}".strip()
        for g in header
        for c in g.columns
        if c.kind == "ours"
    ]
    parts = []
    for k, name in enumerate(ours):
        if (k, "vs_base") not in stats:
            continue
        t = paired(stats[(k, "vs_base")])
        if t["n"] >= 3:
            p = "n/a" if math.isnan(t["p"]) else f"{t['p']:.2f}"
            parts.append(
                f"{name} {t['mean']:+.2f} (p = {p}, {t['above']:.0f} of {t['n']:.0f} above)"
            )
    if not parts:
        return []
    return [
        "Paired over the rows compared with their baseline (mean difference, one-sample "
        "t-test of the differences, rows above the baseline): " + "; ".join(parts) + "."
    ]


def _legend(
    spec: Spec, results: list[CellResult], with_paper: bool, tested: bool, bold: bool
) -> list[str]:
    """The lines under the table; ``bold``: whether some cell is bold (else no line on it)."""
    lines = []
    if len(spec.seeds) > 1 or any(len(r.runs) > 1 for r in results):
        lines.append(
            "Values: mean ± sample std over seeds (n = number of seeds, the newest finished "
            "run of each); a single value is one seed."
        )
    if bold:
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
        src = spec.paper_source
        where = "the paper" if src == "paper" else f"the {src}"
        lines.append(f"{src}: the value reported in {where}; Δ = ours − {src}.")
    return lines
