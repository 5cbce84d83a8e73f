"""Reports: MLflow runs of a sweep -> the paper's tables (Markdown, LaTeX, CSV) and figures.

A DataFrame pipeline: :mod:`~pss.report.collect` reads the runs from the store into a
frame and picks each cell's newest finished run per seed,
:mod:`~pss.report.stats` groups them by cell over seeds (mean, std, n, Welch's t-test),
:mod:`~pss.report.layout` lays the numbers out as the paper does into a
:mod:`~pss.report.table` (whose frame is the CSV), which :mod:`~pss.report.markdown`
and :mod:`~pss.report.latex` render; :mod:`~pss.report.figures` draws convergence
curves and :mod:`~pss.report.build` has :func:`make_report`, which the sweep driver
calls when a sweep completes.
"""

from pss.report.build import Report, make_report

__all__ = ["Report", "make_report"]
