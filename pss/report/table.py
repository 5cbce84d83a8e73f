"""A neutral table model that the Markdown and LaTeX writers render, and its numbers as CSV.

A :class:`Table` has two-level column headers (:class:`HeaderGroup` titles
over leaf :class:`Column` labels), row groups (the first row key is shown once
per group, as in the paper), cells with display text, a bold flag, marks
(significance, seed noise) and footnote numbers, and the notes and legend
lines that go under the table. Writers decide only how things look.

Its :attr:`Table.frame` holds the numbers for machines (pandas, spreadsheets), one line
per table row, which :meth:`Table.csv` writes: the cell id, the row keys (the group label
repeated on every line), four columns for each of our value columns (the mean, ``std``,
``n`` and the Welch ``p`` against the group's baseline), one for a paper or difference
column, and a ``notes`` column with the footnotes that apply to the row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import pandas as pd

SIGNIFICANT = "†"  # differs from the group's baseline, Welch p < 0.05
NOISE = "≈"  # difference from the baseline smaller than the seed noise
DASH = "–"  # no value

ColumnKind = Literal["ours", "paper", "diff"]


@dataclass(frozen=True)
class Cell:
    """One table cell as displayed."""

    text: str = ""
    bold: bool = False
    marks: tuple[str, ...] = ()
    notes: tuple[int, ...] = ()  # footnote numbers (1-based)


@dataclass(frozen=True)
class Column:
    label: str
    metric: str  # the spec's metric (may contain '{mode}')
    kind: ColumnKind = "ours"
    decimals: int = 1


@dataclass(frozen=True)
class HeaderGroup:
    title: str  # upper header; '' for a plain column
    columns: tuple[Column, ...]


@dataclass
class Row:
    keys: list[Cell]  # one per row key after the first (the group label)
    cells: list[Cell]  # one per leaf column
    cell_id: str | None = None  # None for a reference row from the paper


@dataclass
class RowGroup:
    label: Cell  # the first row key, shown once
    rows: list[Row] = field(default_factory=list)


@dataclass
class Table:
    name: str  # file stem, e.g. "table5"
    title: str
    caption: str
    row_headers: list[str]  # one per row key
    header: list[HeaderGroup]
    groups: list[RowGroup]
    notes: list[str] = field(default_factory=list)  # footnote i+1
    legend: list[str] = field(default_factory=list)
    frame: pd.DataFrame | None = None  # the numbers, one line per row (see the module doc)

    @property
    def columns(self) -> list[Column]:
        return [c for g in self.header for c in g.columns]

    @property
    def two_level(self) -> bool:
        return any(g.title for g in self.header)

    def rows(self) -> list[tuple[RowGroup, int, Row]]:
        """Every row with its group and its index in the group."""
        return [(g, i, r) for g in self.groups for i, r in enumerate(g.rows)]

    def csv(self) -> str:
        """:attr:`frame` as CSV: numbers unrounded (6 decimals at most, 6 significant
        digits), empty where there is none."""
        assert self.frame is not None, "a Table gets its frame from layout.build_table"
        return self.frame.to_csv(index=False, lineterminator="\n", float_format=_number)


class Notes:
    """Numbered footnotes; the same text gets the same number."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def add(self, text: str) -> int:
        if text not in self.texts:
            self.texts.append(text)
        return self.texts.index(text) + 1


def fmt(value: float, decimals: int) -> str:
    text = f"{value:.{decimals}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.0"


def fmt_diff(value: float, decimals: int) -> str:
    text = fmt(value, decimals)
    return text if text.startswith("-") or float(text) == 0 else "+" + text


def _number(value: float) -> str:
    text = f"{round(float(value), 6):.6g}"  # no float noise such as -7.1e-15
    return "0" if text == "-0" else text
