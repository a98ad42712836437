"""Numbers and tables as the report writes them: markdown tables, fixed-decimal values, mean ± sd,
counts (1.2M), durations, CSV cells, and the loss of a run's curve up to a point (``loss_at``).

Shared by :mod:`elmanlab.report.tables`, :mod:`elmanlab.report.headline` and
:mod:`elmanlab.report.plots`; needs nothing beyond the standard library and
:func:`elmanlab.sizing.format_count`.
"""
from __future__ import annotations

import statistics

WINDOW = 100                       # steps averaged for the "last-100" style losses


def mean_sd(vals: list[float]) -> tuple[float, float | None]:
    """The mean and the sample standard deviation (None for one value)."""
    m = statistics.fmean(vals)
    return m, (statistics.stdev(vals) if len(vals) > 1 else None)


def num(v, nd=4, dash="-") -> str:
    """``v`` with ``nd`` decimals, ``dash`` for None."""
    if v is None:
        return dash
    return f"{v:.{nd}f}"


def mean_pm_sd(vals: list[float], nd=4) -> str:
    """"mean ± sd" (just the mean for one value, "-" for none)."""
    if not vals:
        return "-"
    m, sd = mean_sd(vals)
    return f"{m:.{nd}f}" + (f" ± {sd:.{nd}f}" if sd is not None else "")


def thousands(v) -> str:
    """An integer with thousands separators ("-" for None)."""
    return "-" if v is None else f"{v:,.0f}"


def count(v) -> str:
    """A count in the short form of parameter counts (6.5M, 100M)."""
    from elmanlab.sizing import format_count
    return "-" if v is None else format_count(v)


def dur(s) -> str:
    """Seconds as "12.3 s", "2.0 min" or "1.50 h"."""
    if s is None:
        return "-"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def csv_cell(v):
    """A value as a results.csv cell: empty for None, floats to 6 significant digits."""
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def md_table(headers: list[str], rows: list[list]) -> str:
    """A markdown table (``|`` in cells escaped, newlines flattened)."""
    def cell(x):
        return str(x).replace("|", "\\|").replace("\n", " ")
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(cell(x) for x in r) + " |" for r in rows]
    return "\n".join(out)


def names(ids: list[str], most: int = 6) -> str:
    """Run names joined by commas, the first ``most`` of them and then "and N more"."""
    ids = list(ids)
    if len(ids) <= most:
        return ", ".join(ids)
    return ", ".join(ids[:most]) + f" and {len(ids) - most} more"


def loss_at(metrics: list[dict], key: str, limit: float, window: int = WINDOW) -> float | None:
    """Mean loss over the last ``window`` steps logged with ``key`` (tokens / elapsed) <= limit."""
    upto = [m for m in metrics if isinstance(m.get(key), (int, float)) and m[key] <= limit * (1 + 1e-9)]
    if not upto:
        return None
    last = upto[-1]["step"]
    win = [m["loss"] for m in upto if m["step"] > last - window]
    return statistics.fmean(win)
