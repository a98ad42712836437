"""Study reports: a headline (both rankings, equal tokens and equal time, with n, the seed spread and
ties), what ran (kernel paths, CUDA graphs, non-finite steps), ranked tables, gaps to a baseline,
scaling tables, iso-token / iso-time views, plots.

``write_report(DIR)`` reads every run record under DIR (each folder with a ``summary.json``, plus
the study's ``study.json`` for runs that failed before writing one or never ran) and writes
``DIR/report.md``, ``DIR/results.csv`` and PNG plots under ``DIR/plots/`` (and ``DIR/fit.json``
when it fits scaling laws: with ``fit=True``, or where a family ran at three sizes or more).

The loss is the training cross-entropy in nats per byte averaged over the last 100 steps
(``loss_last100``), the seeds' metric; bits per byte = nats / ln 2.

- :mod:`elmanlab.report.collect`: the run records (:class:`Run`, :func:`collect_runs`), read through
  :mod:`elmanlab.runs`;
- :mod:`elmanlab.report.checks`: what ran, and where runs of one study were not made alike;
- :mod:`elmanlab.report.headline`: the two rankings with the seed spread;
- :mod:`elmanlab.report.tables`: :class:`Report`, report.md and results.csv (no matplotlib needed);
- :mod:`elmanlab.report.views`: Report's sections on swept settings and on equal tokens / equal
  time;
- :mod:`elmanlab.report.fit`: scaling-law fits L = E + A x^-alpha with bootstrap intervals, crossings
  and predictions (numpy only; imported when a report fits);
- :mod:`elmanlab.report.fmt`: number and table formatting, ``loss_at``;
- :mod:`elmanlab.report.against`: the runs beside a published table (``elmanlab report --against``): gaps to
  the baseline against the table's, the order, tokens/s and memory ratios;
- :mod:`elmanlab.report.predicted`: the runs against a scaling fit's predictions (``elmanlab report
  --check-fit``): held, held within the seed noise, or missed;
- :mod:`elmanlab.report.plots`: the PNG plots (matplotlib), imported only when plots are drawn.
"""
from elmanlab.report.checks import Finding, check_implementations
from elmanlab.report.collect import Run, collect_runs
from elmanlab.report.fmt import loss_at
from elmanlab.report.headline import build_headline
from elmanlab.report.tables import METRICS, Report, write_report

__all__ = ["METRICS", "Finding", "Report", "Run", "build_headline", "check_implementations", "collect_runs",
           "loss_at", "write_report"]
