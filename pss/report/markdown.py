"""Render a :class:`~pss.report.table.Table` as a Markdown (GFM pipe) table.

Pipe tables have one header row, so a two-level header is written as the
header row (group titles over their first column) followed by a row of column
labels. Columns are padded so the table also reads well in a terminal.
Footnote references are ``[1]``; notes and the legend follow the table.
"""

from __future__ import annotations

from pss.report.table import Cell, Table


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def cell_text(cell: Cell) -> str:
    text = _escape(cell.text)
    if cell.bold and text:
        text = f"**{text}**"
    text += "".join(cell.marks)
    if cell.notes:
        text += "[" + ",".join(map(str, cell.notes)) + "]"
    return text


def _header_rows(table: Table) -> list[list[str]]:
    keys = len(table.row_headers)
    if not table.two_level:
        return [table.row_headers + [c.label for c in table.columns]]
    top = list(table.row_headers)
    bottom = [""] * keys
    for group in table.header:
        for i, column in enumerate(group.columns):
            if group.title:
                top.append(group.title if i == 0 else "")
                bottom.append(column.label)
            else:
                top.append(column.label)
                bottom.append("")
    return [top, bottom]


def _body_rows(table: Table) -> list[list[str]]:
    rows = []
    for group, index, row in table.rows():
        first = cell_text(group.label) if index == 0 else ""
        rows.append([first, *map(cell_text, row.keys), *map(cell_text, row.cells)])
    return rows


def render_table(table: Table) -> str:
    """The pipe table alone."""
    head = [[_escape(t) for t in r] for r in _header_rows(table)]
    body = _body_rows(table)
    grid = head + body
    keys = len(table.row_headers)
    widths = [max(3, *(len(r[i]) for r in grid)) for i in range(len(grid[0]))]

    def line(cells: list[str]) -> str:
        padded = [
            c.ljust(w) if i < keys else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = [":" + "-" * (w - 1) if i < keys else "-" * (w - 1) + ":" for i, w in enumerate(widths)]
    lines = [line(head[0]), "| " + " | ".join(rule) + " |"]
    lines += [line(r) for r in head[1:] + body]
    return "\n".join(lines)


def render(table: Table, heading: str = "###") -> str:
    """Title, caption, table, notes and legend as a Markdown section."""
    parts = [f"{heading} {table.title}", ""]
    if table.caption:
        parts += [table.caption, ""]
    parts += [render_table(table), ""]
    if table.notes:
        parts += ["Notes:", ""]
        parts += [f"- [{i}] {text}" for i, text in enumerate(table.notes, 1)]
        parts.append("")
    if table.legend:
        parts += [f"- {line}" for line in table.legend]
        parts.append("")
    return "\n".join(parts).rstrip() + "\n"
