"""A neutral table model that the Markdown, LaTeX and CSV writers render.

A :class:`Table` has two-level column headers (:class:`HeaderGroup` titles
over leaf :class:`Column` labels), row groups (the first row key is shown once
per group, as in the paper), cells with display text, a bold flag, marks
(significance, seed noise) and footnote numbers, and the notes and legend
lines that go under the table. Writers decide only how things look.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

SIGNIFICANT = "†"  # differs from the group's baseline, Welch p < 0.05
NOISE = "≈"  # difference from the baseline smaller than the seed noise
DASH = "–"  # no value

ColumnKind = Literal["ours", "paper", "diff"]


@dataclass(frozen=True)
class Cell:
    """One table cell. ``data`` holds the raw numbers for machine-readable writers."""

    text: str = ""
    bold: bool = False
    marks: tuple[str, ...] = ()
    notes: tuple[int, ...] = ()  # footnote numbers (1-based)
    data: dict[str, float | int | None] = field(default_factory=dict, compare=False)


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

    @property
    def columns(self) -> list[Column]:
        return [c for g in self.header for c in g.columns]

    @property
    def two_level(self) -> bool:
        return any(g.title for g in self.header)

    def rows(self) -> list[tuple[RowGroup, int, Row]]:
        """Every row with its group and its index in the group."""
        return [(g, i, r) for g in self.groups for i, r in enumerate(g.rows)]


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
