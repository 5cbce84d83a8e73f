"""Reports: MLflow runs of a sweep -> the paper's tables (Markdown, LaTeX, CSV) and figures.

Modules: :mod:`~pss.report.collect` (runs -> cell results), :mod:`~pss.report.stats`
(mean, std, Welch's t-test), :mod:`~pss.report.table` (a neutral table model),
:mod:`~pss.report.layout` (the paper's layout from a spec), the writers
:mod:`~pss.report.markdown`, :mod:`~pss.report.latex`, :mod:`~pss.report.csvfile`,
:mod:`~pss.report.figures` (convergence curves) and :mod:`~pss.report.build`
(:func:`make_report`, which the sweep runner calls when a sweep completes).
"""

from pss.report.build import Report, make_report

__all__ = ["Report", "make_report"]
