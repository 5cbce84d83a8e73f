r"""Render a :class:`~pss.report.table.Table` as a LaTeX ``table`` with booktabs rules.

The fragment needs ``\usepackage{booktabs,amssymb,graphicx}`` (``\checkmark``
is from amssymb; a table wider than the line is scaled down to it with graphicx);
:func:`document` wraps fragments in a minimal article that compiles with
pdflatex. Text is escaped: ``_ % & # $ { } ~ ^ \``, and the Unicode symbols
the tables use (✓, ±, –, Δ, α, λ1, ...) become LaTeX commands.
"""

from __future__ import annotations

import re

from pss.report.table import DASH, NOISE, SIGNIFICANT, Cell, Column, Table

PACKAGES = ("booktabs", "amssymb", "graphicx")

_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"$<$",
    ">": r"$>$",
    "|": r"$|$",
    "✓": r"\checkmark{}",
    "✔": r"\checkmark{}",
    "±": r"$\pm$",
    "–": "--",
    "—": "---",
    "−": "$-$",
    "≈": r"$\approx$",
    "≥": r"$\geq$",
    "≤": r"$\leq$",
    "×": r"$\times$",
    "†": r"$\dagger$",
    "°": r"$^\circ$",
    "’": "'",
    "‘": "`",
    "“": "``",
    "”": "''",
}
_GREEK = {
    "α": "alpha",
    "β": "beta",
    "γ": "gamma",
    "δ": "delta",
    "ε": "epsilon",
    "λ": "lambda",
    "μ": "mu",
    "σ": "sigma",
    "τ": "tau",
    "Δ": "Delta",
}
_GREEK_RE = re.compile("([" + "".join(_GREEK) + r"])(\d*)")
_MARKS = {SIGNIFICANT: r"\dagger", NOISE: r"\approx"}
_CAPTION_PREFIX = re.compile(r"^\s*(Table|Figure|Fig\.)\s*\d+\s*[:.]\s*", re.IGNORECASE)


def escape(text: str) -> str:
    """Plain text -> LaTeX source that prints the same (math for Greek and symbols)."""
    out: list[str] = []
    pos = 0
    for match in _GREEK_RE.finditer(text):
        out.append(_escape_plain(text[pos : match.start()]))
        letter, digits = match.groups()
        sub = f"_{{{digits}}}" if digits else ""
        out.append(f"$\\{_GREEK[letter]}{sub}$")
        pos = match.end()
    out.append(_escape_plain(text[pos:]))
    return "".join(out)


def _escape_plain(text: str) -> str:
    chars = []
    for ch in text:
        if ch in _SPECIAL:
            chars.append(_SPECIAL[ch])
        elif ord(ch) < 128 or ch.encode("latin-1", "ignore"):
            chars.append(ch)  # ASCII, or Latin-1 letters that utf8 inputenc knows
        else:
            chars.append("?")
    return "".join(chars)


def _superscript(cell: Cell) -> str:
    parts = [_MARKS.get(m, escape(m)) for m in cell.marks]
    parts += [str(n) for n in cell.notes]
    return f"$^{{{','.join(parts)}}}$" if parts else ""


def cell_tex(cell: Cell, column: Column | None = None) -> str:
    if cell.text == DASH:
        text = "--"
    elif column is not None and column.kind == "diff" and cell.text:
        text = f"${cell.text}$"
    else:
        text = escape(cell.text)
    if cell.bold and text:
        text = rf"\textbf{{{text}}}"
    return text + _superscript(cell)


def caption(table: Table) -> str:
    """The title without its 'Table N:' (LaTeX numbers tables itself), then the caption."""
    title = _CAPTION_PREFIX.sub("", table.title).strip()
    text = title[:1].upper() + title[1:]
    if table.caption:
        text = text.rstrip(".") + ". " + table.caption
    return escape(text)


def _header(table: Table) -> list[str]:
    keys = len(table.row_headers)
    lines = []
    heads = [escape(h) for h in table.row_headers]
    if table.two_level:
        top, rules, col = [""] * keys, [], keys + 1
        bottom = list(heads)
        for group in table.header:
            span = len(group.columns)
            if group.title:
                top.append(rf"\multicolumn{{{span}}}{{c}}{{{escape(group.title)}}}")
                rules.append(rf"\cmidrule(lr){{{col}-{col + span - 1}}}")
                bottom += [escape(c.label) for c in group.columns]
            else:
                top += [escape(c.label) for c in group.columns]
                bottom += [""] * span
            col += span
        lines.append(" & ".join(top) + r" \\")
        lines.append(" ".join(rules))
        lines.append(" & ".join(bottom) + r" \\")
    else:
        lines.append(" & ".join(heads + [escape(c.label) for c in table.columns]) + r" \\")
    return lines


def render(table: Table, label: str | None = None) -> str:
    """A ``table`` environment: caption, booktabs tabular, then notes and legend."""
    columns = table.columns
    spec = "l" * len(table.row_headers) + "c" * len(columns)
    body: list[str] = []
    grouped = any(len(group.rows) > 1 for group in table.groups)  # else no rules between rows
    for g, group in enumerate(table.groups):
        if g and grouped:
            body.append(r"\midrule")
        for i, row in enumerate(group.rows):
            first = cell_tex(group.label) if i == 0 else ""
            cells = [first, *(cell_tex(k) for k in row.keys)]
            cells += [cell_tex(c, col) for c, col in zip(row.cells, columns)]
            body.append(" & ".join(cells) + r" \\")
    tabular = [
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        *_header(table),
        r"\midrule",
        *body,
        r"\bottomrule",
        r"\end{tabular}",
    ]
    tabular = [
        r"\ifdefined\psstablebox\else\newsavebox{\psstablebox}\fi",
        r"\sbox{\psstablebox}{%",
        *tabular,
        "}",
        r"\ifdim\wd\psstablebox>\linewidth",
        r"\resizebox{\linewidth}{!}{\usebox{\psstablebox}}%",
        r"\else\usebox{\psstablebox}\fi",
    ]
    lines = [
        f"% {table.name}: generated by pss.report; needs "
        + "".join(rf"\usepackage{{{p}}}" for p in PACKAGES),
        r"\begin{table}[htbp]",
        r"\centering",
        rf"\caption{{{caption(table)}}}",
        rf"\label{{{label or 'tab:' + table.name}}}",
        *tabular,
    ]
    foot = [rf"$^{{{i}}}$ {escape(t)}" for i, t in enumerate(table.notes, 1)]
    foot += [escape(t) for t in table.legend]
    if foot:
        lines += [r"\par\smallskip", r"\begin{minipage}{\linewidth}\footnotesize"]
        lines += [f"{t}\\par" for t in foot]
        lines.append(r"\end{minipage}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def document(*fragments: str) -> str:
    """A minimal article around table fragments (for pdflatex)."""
    return "\n".join(
        [
            r"\documentclass{article}",
            r"\usepackage[utf8]{inputenc}",
            *(rf"\usepackage{{{p}}}" for p in PACKAGES),
            r"\begin{document}",
            *fragments,
            r"\end{document}",
            "",
        ]
    )
