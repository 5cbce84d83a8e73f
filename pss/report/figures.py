"""Convergence figures (Fig. 3, Fig. 4): a metric against epoch, from per-epoch MLflow metrics.

A spec's ``figure:`` block names the metric, the row key that splits panels
(one panel per value, stacked as in the paper) and the row key that tells
curves apart. Each curve is the mean over the cell's seeds (the newest
finished run of each) with a ±std band where there are several. Figures are
drawn with matplotlib's object API on the Agg canvas (no pyplot, no display)
and written as PNG and PDF.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pss.report import metrics
from pss.report.collect import CellResult
from pss.report.stats import seed_stats
from pss.sweep.schema import FigureSpec, LoadedSpec
from pss.tracking.store import metric_history

History = Callable[[str, str], list[tuple[int, float]]]  # (run id, metric) -> [(epoch, value)]


@dataclass(frozen=True)
class Curve:
    label: str
    epochs: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float | None, ...]
    n: int  # seeds


@dataclass(frozen=True)
class Panel:
    title: str
    curves: tuple[Curve, ...]


def _label(figure: FigureSpec, key: str | None, value: Any) -> str:
    labels = figure.labels.get(key or "", {})
    try:
        if value in labels:
            return labels[value]
    except TypeError:
        pass
    return f"{key} = {value}"


def mlflow_history(client: Any) -> History:
    """A :data:`History` asking an ``MlflowClient`` (the last value logged per epoch)."""
    return lambda run_id, metric: metric_history(None, [run_id], metric, client)[run_id]


def store_history(
    results: list[CellResult], metric: str, uri: str | None = None, client: Any = None
) -> History:
    """A :data:`History` of ``metric`` for every run of ``results``, read in one go."""
    ids = [run.run_id for result in results for run in result.runs]
    points = metric_history(uri, ids, metric, client)
    return lambda run_id, name: points.get(run_id, []) if name == metric else []


def _curve(label: str, result: CellResult, metric: str, history: History) -> Curve | None:
    """The mean (± std) over the cell's seeds at each epoch; None without a finite value."""
    points = pd.DataFrame(
        [(run.run_id, e, v) for run in result.runs for e, v in history(run.run_id, metric)],
        columns=["run", "epoch", "value"],
    )
    stats = seed_stats(points[["value"]].astype(float), points["epoch"])["value"].sort_index()
    stats = stats[stats["n"] > 0]
    if stats.empty:
        return None
    return Curve(
        label=label,
        epochs=tuple(stats.index.tolist()),
        mean=tuple(stats["mean"].tolist()),
        std=tuple(None if math.isnan(s) else s for s in stats["std"].tolist()),
        n=points["run"].nunique(),  # the seeds with a history
    )


def figure_panels(
    loaded: LoadedSpec, results: list[CellResult], history: History
) -> tuple[list[Panel], list[str]]:
    """The panels of the spec's figure, and a note for every cell without a curve."""
    figure = loaded.spec.figure
    assert figure is not None
    order: list[Any] = []
    curves: dict[Any, list[Curve]] = defaultdict(list)
    notes: list[str] = []
    for result in results:
        panel = result.row.get(figure.panels) if figure.panels else None
        if panel not in order:
            order.append(panel)
        label = _label(figure, figure.series, result.row.get(figure.series))
        curve = _curve(label, result, figure.metric, history)
        note = result.note()
        if curve is None:
            notes.append(note or f"{result.id}: no {figure.metric} history logged")
        else:
            curves[panel].append(curve)
            if note:
                notes.append(note)
    panels = [
        Panel(_label(figure, figure.panels, p) if figure.panels else "", tuple(curves[p]))
        for p in order
    ]
    return panels, notes


def plot(figure: FigureSpec, panels: list[Panel], base: Path) -> list[Path]:
    """Draw the panels and write ``base``.png and ``base``.pdf; returns both paths."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(6.4, 0.6 + 3.0 * len(panels)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    series = list(dict.fromkeys(c.label for p in panels for c in p.curves))
    for ax, panel in zip(axes, panels):
        for curve in panel.curves:
            color = f"C{series.index(curve.label) % 10}"  # a series keeps its colour in all panels
            label = curve.label + (f" (n={curve.n})" if curve.n > 1 else "")
            ax.plot(curve.epochs, curve.mean, marker="o", markersize=3, color=color, label=label)
            if any(s is not None for s in curve.std):
                lo = [m - (s or 0.0) for m, s in zip(curve.mean, curve.std)]
                hi = [m + (s or 0.0) for m, s in zip(curve.mean, curve.std)]
                ax.fill_between(curve.epochs, lo, hi, color=color, alpha=0.2, linewidth=0)
        if panel.curves:
            ax.legend(loc="lower right")
        else:
            ax.text(
                0.5, 0.5, "no finished runs yet", ha="center", va="center", transform=ax.transAxes
            )
        if panel.title:
            ax.set_title(panel.title)
        ax.set_ylabel(metrics.axis_label(figure.metric))
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("Epoch")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(figure.title)
    base.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for suffix, meta in ((".png", {"Software": None}), (".pdf", {"CreationDate": None})):
        path = base.with_suffix(suffix)
        tmp = path.with_name(path.name + ".tmp")
        fig.savefig(tmp, format=suffix[1:], dpi=150, metadata=meta)
        tmp.replace(path)
        paths.append(path)
    return paths
