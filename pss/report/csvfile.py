"""Render a :class:`~pss.report.table.Table` as CSV for machines (pandas, spreadsheets).

One line per table row; the group label is repeated on every line. Each of our
value columns becomes four: the mean, ``std``, ``n`` and the Welch ``p``
against the group's baseline; paper and difference columns hold one number.
Numbers are unrounded (6 decimals at most, 6 significant digits); a ``notes`` column carries the
footnotes that apply to the row.
"""

from __future__ import annotations

import csv
import io

from pss.report.table import Column, HeaderGroup, Table


def _name(group: HeaderGroup, column: Column) -> str:
    """'mAP (%) w/o NMS'; just 'mAP (%)' for a plain column ('ours' beside the paper's)."""
    if not group.title:
        return column.label
    if column.label == "ours":
        return group.title
    return f"{group.title} {column.label}"


def _number(value: float | int | None) -> str:
    if value is None:
        return ""
    if isinstance(value, int):
        return str(value)
    text = f"{round(value, 6):.6g}"  # no float noise such as -7.1e-15
    return "0" if text == "-0" else text


def render(table: Table) -> str:
    names: list[str] = []
    kinds: list[Column] = []
    last_ours = ""
    for group in table.header:
        for column in group.columns:
            if column.kind == "ours":
                last_ours = _name(group, column)
                names += [last_ours, f"{last_ours} std", f"{last_ours} n", f"{last_ours} p"]
            else:
                names.append(f"{last_ours} {column.label}")
            kinds.append(column)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["cell", *table.row_headers, *names, "notes"])
    for group, _, row in table.rows():
        values: list[str] = []
        numbers: set[int] = set(group.label.notes)
        for cell in row.keys:
            numbers.update(cell.notes)
        for cell, column in zip(row.cells, kinds):
            numbers.update(cell.notes)
            if column.kind == "ours":
                values += [_number(cell.data.get(k)) for k in ("mean", "std", "n", "p")]
            else:
                values.append(_number(cell.data.get("value")))
        notes = " | ".join(table.notes[n - 1] for n in sorted(numbers))
        keys = [group.label.text, *(k.text for k in row.keys)]
        writer.writerow([row.cell_id or "(paper)", *keys, *values, notes])
    return out.getvalue()
