"""The report's PNG plots (matplotlib, Agg backend): training loss against tokens and against
wall-clock per run, held-out loss (the evaluations during training) against tokens and against
training time per run, loss and throughput against parameters per model, and the scaling fits
(points, fitted curves, bootstrap bands) against parameters and training FLOPs.

Imported only when plots are drawn (:meth:`elmanlab.report.tables.Report.write`), so the tables
need no matplotlib.
"""
from __future__ import annotations

import math
import os
import statistics
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt                    # noqa: E402  (after choosing the backend)
from matplotlib import ticker                      # noqa: E402

from elmanlab.report.fmt import WINDOW, count, num               # noqa: E402
from elmanlab.report.tables import Report                          # noqa: E402

LN2 = math.log(2.0)
MAX_LINES = 9                      # curves drawn in colour; the rest are grey


def write_plots(report: Report, outdir: Path) -> list[Path]:
    """Draw every plot the report's runs allow into ``outdir``; returns the PNGs written."""
    outdir.mkdir(parents=True, exist_ok=True)
    written = []
    # per run: the training loss and the held-out evaluations, each against tokens and against time
    for what, points, plot in (("loss", lambda r: r.metrics(), plot_loss_curves),
                               ("val", lambda r: r.val_metrics(), plot_val_curves)):
        curves = [r for r in report.ranked() if len(points(r)) >= 2]
        colors = _curve_colors(report, curves)
        for x, key in (("tokens", "tokens"), ("time", "elapsed")):
            fig = plot(report, curves, colors, key)
            if fig is not None:
                written.append(_save(fig, outdir / f"{what}_vs_{x}.png"))
    for name, what in (("loss_vs_params", "loss"), ("tokens_per_s_vs_params", "tokens_per_s")):
        fig = plot_vs_params(report, what)
        if fig is not None:
            written.append(_save(fig, outdir / f"{name}.png"))
    return written


def _curve_colors(report: Report, curves: list) -> dict:
    """Run id -> colour: with many runs, the best MAX_LINES (and the baseline) in colour, the rest
    thin and grey."""
    shown = curves[:MAX_LINES]
    for r in curves[MAX_LINES:]:
        if report.baseline in (r.model, r.id) and len(shown) < MAX_LINES + 2:
            shown.append(r)
    return dict(zip([r.id for r in shown], _colors(len(shown))))


def plot_loss_curves(report: Report, curves: list, colors: dict, key: str):
    """Smoothed training loss of each run against ``key`` ("tokens" or "elapsed"); None if no run
    logged it."""
    sel, xlabel, xscale, n_leg, fig, ax = _curve_figure(curves, colors, key, lambda r: r.metrics(), "wall-clock")
    if not sel:
        return None
    hi, lo = [], []
    others = 0
    for r in sel:
        xs = [m[key] * xscale for m in r.metrics()]
        steps = [m["step"] for m in r.metrics()]
        ys = _smooth([m["loss"] for m in r.metrics()], steps, window=max(1, min(WINDOW, steps[-1] // 20)))
        if r.id in colors:
            ax.plot(xs, ys, color=colors[r.id], lw=1.4, label=f"{r.id} ({num(r.get('loss_last100'), 3)})", zorder=3)
        else:
            others += 1
            _grey_line(ax, xs, ys, sel, colors, first=others == 1)
        n0 = max(1, len(ys) // 5 if len(sel) > MAX_LINES else len(ys) // 10)
        hi.append(max(ys[n0:]) if len(ys) > n0 else max(ys))
        lo.append(min(ys))
    if hi:
        top, bot = max(hi), min(lo)
        pad = 0.05 * max(top - bot, 1e-3)
        ax.set_ylim(bot - pad, top + pad)
    ends = [r.metrics()[-1][key] for r in sel]
    starts = [min(m[key] for m in r.metrics() if m[key] > 0) for r in sel if any(m[key] > 0 for m in r.metrics())]
    if starts and min(ends) > 0 and max(ends) / min(ends) > 10:     # very different lengths: log x
        ax.set_xscale("log")
        ax.set_xlim(min(starts) * xscale / 1.2, max(ends) * xscale * 1.2)
        xlabel += ", log scale"
    _finish_curve_axes(ax, key, xlabel, "train loss (nats/byte, smoothed)", n_leg,
                       f"{report.title()}: loss vs {'tokens' if key == 'tokens' else 'wall-clock'}"
                       " (legend: run, last-100 loss)")
    return fig


def _grey_line(ax, xs, ys, sel, colors, first: bool) -> None:
    """A run without a colour of its own: a thin grey line, one legend entry for all of them."""
    ax.plot(xs, ys, color="0.6", lw=0.7, alpha=0.6, zorder=2,
            label=f"{len(sel) - len([x for x in sel if x.id in colors])} other runs (grey)" if first else None)


def _finish_curve_axes(ax, key: str, xlabel: str, ylabel: str, n_leg: int, title: str) -> None:
    """Labels (nats/byte with bits/byte on the right), the x axis's tick format, grid, title, legend."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    sec = ax.secondary_yaxis("right", functions=(lambda x: x / LN2, lambda x: x * LN2))
    sec.set_ylabel("bits/byte")
    if key == "tokens":
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: count(v) if v else "0"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    elif ax.get_xscale() == "log":
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.grid(True, alpha=0.3)
    ax.set_title(title)
    _legend(ax, n_leg)


def _curve_figure(curves: list, colors: dict, key: str, points, time_label: str):
    """The runs whose ``points(run)`` all have ``key``, the x label and scale (tokens, or time in
    seconds, minutes or hours by the longest run), the legend size, and a figure sized for it; the
    figure is None (and nothing drawn) when no run qualifies."""
    sel = [r for r in curves if all(isinstance(m.get(key), (int, float)) for m in points(r))]
    if not sel:
        return sel, None, None, 0, None, None
    if key == "tokens":
        xlabel, xscale = "tokens (bytes)", 1.0
    else:
        longest = max(points(r)[-1][key] for r in sel)
        xlabel, xscale = ((f"{time_label} (seconds)", 1.0) if longest < 180 else
                          (f"{time_label} (minutes)", 1 / 60.0) if longest < 3 * 3600 else
                          (f"{time_label} (hours)", 1 / 3600.0))
    n_leg = sum(r.id in colors for r in sel) + (len(sel) > len(colors))
    fig, ax = plt.subplots(figsize=(10, 5.5 if n_leg <= 8 else 5.5 + 0.2 * math.ceil(n_leg / 2)))
    return sel, xlabel, xscale, n_leg, fig, ax


def plot_val_curves(report: Report, curves: list, colors: dict, key: str):
    """Held-out loss of each run (its evaluations during training, unsmoothed, a marker per
    evaluation) against ``key`` ("tokens" or "elapsed": training time); None if no run has a curve."""
    sel, xlabel, xscale, n_leg, fig, ax = _curve_figure(curves, colors, key, lambda r: r.val_metrics(),
                                                        "training time")
    if not sel:
        return None
    others = 0
    for r in sel:
        pts = r.val_metrics()
        xs, ys = [m[key] * xscale for m in pts], [m["val_loss"] for m in pts]
        best = min(pts, key=lambda m: m["val_loss"])
        if r.id in colors:
            ax.plot(xs, ys, color=colors[r.id], lw=1.4, marker="o", ms=3, zorder=3,
                    label=f"{r.id} (best {num(best['val_loss'] / LN2, 3)} bpb at step {best['step']:,})")
            ax.plot([best[key] * xscale], [best["val_loss"]], marker="*", ms=11, color=colors[r.id], zorder=4)
        else:
            others += 1
            _grey_line(ax, xs, ys, sel, colors, first=others == 1)
    _finish_curve_axes(ax, key, xlabel, "held-out loss (nats/byte)", n_leg,
                       f"{report.title()}: held-out loss vs {'tokens' if key == 'tokens' else 'training time'}"
                       " (star: each run's best)")
    return fig


def plot_vs_params(report: Report, what: str):
    """The ranking metric (``what`` = "loss") or throughput ("tokens_per_s") against parameters, one
    line per model: the best configuration per scale, mean over seeds with sd bars. None if no
    run has the value."""
    if what == "loss":
        getter, ylabel, logy = (lambda r: r.loss), f"{report.mlabel} ({report.munit})", False
    else:
        getter, ylabel, logy = (lambda r: r.get("tokens_per_s")), "throughput (tokens/s)", True
    fig, ax = plt.subplots(figsize=(8, 6))
    drawn = 0
    all_x: list[float] = []
    for m, c in zip(report.models, _colors(len(report.models))):
        pts = defaultdict(list)
        for r in report.done:
            if r.model == m and getter(r) is not None and r.params:
                pts[(r.scale_n, r.config_key())].append(r)
        if not pts:
            continue
        by_x = defaultdict(list)   # best config per scale (sweeps would otherwise zig-zag)
        for rs in pts.values():
            by_x[rs[0].scale_n].append(rs)
        xs, ys, es = [], [], []
        for sx in sorted(by_x):
            rs = min(by_x[sx], key=lambda rs: statistics.fmean(r.loss for r in rs))
            vals = [getter(r) for r in rs]
            xs.append(statistics.fmean(r.params for r in rs))
            ys.append(statistics.fmean(vals))
            es.append(statistics.stdev(vals) if len(vals) > 1 else 0.0)
        ax.errorbar(xs, ys, yerr=es if any(es) else None, color=c, marker="o", ms=6, lw=1.6, capsize=3, label=m)
        all_x += xs
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xscale("log")
    px = sorted(all_x)
    ax.set_xlim(px[0] / 1.25, px[-1] * 1.25)
    ticks = sorted({(r.scale_n, r.scale) for r in report.done if r.scale_n})
    if 0 < len(ticks) <= 8:                    # tick at the study's scales
        ax.set_xticks([t for t, _ in ticks], [lab for _, lab in ticks])
    else:
        ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5)))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: count(v)))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    ax.set_xlabel("parameters (log scale)")
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1, 2, 3, 5)))
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: count(v)))
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    if not logy and report.metric == "loss_last100":      # nats -> bits; val bpb is in bits already
        sec = ax.secondary_yaxis("right", functions=(lambda x: x / LN2, lambda x: x * LN2))
        sec.set_ylabel("bits/byte")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(f"{report.title()}: {'loss' if not logy else 'tokens/s'} vs parameters"
                 " (best config per scale, mean ± sd over seeds)", fontsize=10)
    ax.margins(y=0.08)
    ax.legend(title="model", fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.13),
              ncol=min(drawn, 6), frameon=False)
    return fig


def write_fit_plots(report: Report, fits, outdir: Path) -> list[Path]:
    """The scaling fits (:class:`elmanlab.report.fit.FitReport`): the runs, each family's fitted curve
    and its bootstrap band, against parameters (``fit_vs_params.png``) and against training FLOPs
    (``fit_vs_flops.png``); a study fitted at several token counts gets one pair per count (the count
    with the most runs unsuffixed, the others suffixed with their token count)."""
    outdir.mkdir(parents=True, exist_ok=True)
    written = []
    groups = sorted((g for g in fits.groups if g.params.fitted), key=lambda g: (-len(g.runs), g.tokens))
    for i, g in enumerate(groups):
        suffix = "" if i == 0 else f"-{count(g.tokens)}-tokens"
        for fs, name in ((g.params, "fit_vs_params"), (g.flops, "fit_vs_flops")):
            written.append(_save(plot_fit(report, fs, g.tokens), outdir / f"{name}{suffix}.png"))
    return written


def plot_fit(report: Report, fs, tokens: float):
    """One :class:`elmanlab.report.fit.FitSet`: points, fitted curves, 95% bootstrap bands, log x; the
    sizes predicted at dashed; families not fitted as open markers; a misfit family's curve dotted, without
    a band, and MISFIT in its label."""
    import numpy as np
    from elmanlab.report.fit import LEVEL, XKINDS
    sym, word = XKINDS[fs.xkind]
    fig, ax = plt.subplots(figsize=(9, 6))
    px = [p.x for f in fs.fits for p in f.points]
    lo, hi = min(px) / 1.5, max(px) * 1.5
    for pr in fs.predictions:
        lo, hi = min(lo, pr.x / 1.3), max(hi, pr.x * 1.3)
    xs = np.geomspace(lo, hi, 240)
    ys_seen = [p.y for f in fs.fits for p in f.points]
    q = (100 - LEVEL) / 2
    for f, c in zip(fs.fits, _colors(len(fs.fits))):
        x, y = [p.x for p in f.points], [p.y for p in f.points]
        if f.refused:
            ax.scatter(x, y, s=30, facecolors="none", edgecolors=[c], zorder=3,
                       label=f"{f.label}: not fitted ({len(f.sizes)} size{'s' if len(f.sizes) != 1 else ''})")
            continue
        ax.scatter(x, y, s=24, color=c, zorder=3)
        fy = f(xs)
        ys_seen += list(fy)
        law = f"{f.E:.3f} + {f.A:.3g} {sym}^-{f.alpha:.3f} (RMS {f.rms:.4f})"
        if f.misfit:                                     # the curve does not describe its runs: dotted
            ax.plot(xs, fy, color=c, lw=1.4, ls=":", zorder=2, label=f"{f.label}: MISFIT, {law}")
            continue
        ax.plot(xs, fy, color=c, lw=1.6, zorder=2, label=f"{f.label}: {law}")
        bc = f.boot_curves(xs)
        if bc is not None:
            blo, bhi = np.percentile(bc, [q, 100 - q], axis=0)
            ax.fill_between(xs, blo, bhi, color=c, alpha=0.15, lw=0, zorder=1)
    for pr in fs.predictions:
        ax.axvline(pr.x, color="0.4", ls="--", lw=1)
        ax.text(pr.x, 1.0, f" {count(pr.x)}", transform=ax.get_xaxis_transform(), va="top", fontsize=8,
                color="0.3")
    top, bot = max(ys_seen), min(ys_seen)                # the bands may run far out when extrapolated
    pad = 0.08 * max(top - bot, 1e-3)
    ax.set_ylim(bot - pad, top + pad)
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    if fs.xkind == "params":
        ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5)))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: count(v)))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel(f"{word} {sym} (log scale)")
    ax.set_ylabel(f"{report.mlabel} ({report.munit})")
    if report.metric == "loss_last100":
        sec = ax.secondary_yaxis("right", functions=(lambda v: v / LN2, lambda v: v * LN2))
        sec.set_ylabel("bits/byte")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(f"{report.title()}: L({sym}) = E + A {sym}^-α at {count(tokens)} tokens, "
                 f"{LEVEL}% bootstrap bands", fontsize=10)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)
    return fig


def write_check_plot(check, outdir: Path) -> Path:
    """``fit_check.png``: the runs of ``report --check-fit`` against the fit's curves (:func:`plot_check`)."""
    outdir.mkdir(parents=True, exist_ok=True)
    return _save(plot_check(check), outdir / "fit_check.png")


def plot_check(check):
    """:class:`elmanlab.report.predicted.PredictionCheck`: each judged family's fitted curve and the runs
    it was fitted to (from the fit.json), the predicted interval at the checked runs' size (thick: the
    fit's; thin: with the seed noise) and the checked runs (stars)."""
    import numpy as np
    judged = [ln for ln in check.lines if ln.interval is not None]
    fams = {f["family"]: f for f in check.group["params"]["families"] if f.get("fitted")}
    fig, ax = plt.subplots(figsize=(9, 6))
    names = sorted({ln.family for ln in judged})
    for name, c in zip(names, _colors(len(names))):
        f = fams[name]
        px, py = [p["x"] for p in f["points"]], [p["y"] for p in f["points"]]
        mine = [ln for ln in judged if ln.family == name]
        xs = np.geomspace(min(px) / 1.3, max(px + [ln.params for ln in mine]) * 1.3, 200)
        ax.plot(xs, f["E"] + f["A"] * xs ** -f["alpha"], color=c, lw=1.4, label=f"{name}: fit")
        ax.scatter(px, py, s=22, color=c, zorder=3)
        for ln in mine:
            if ln.with_noise is not None:
                ax.plot([ln.params] * 2, ln.with_noise, color=c, lw=1, alpha=0.6)
            ax.plot([ln.params] * 2, ln.interval, color=c, lw=5, alpha=0.45, solid_capstyle="butt")
            ax.scatter([ln.params] * ln.n, ln.values, marker="*", s=130, color=c, edgecolors="k", linewidths=0.6,
                       zorder=4, label=f"{name} {ln.label}: observed (n = {ln.n}), {ln.verdict.split(':')[0]}")
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5)))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: count(v)))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel("parameters N (log scale)")
    ax.set_ylabel(check.metric + (f" at step {check.at_step}" if check.at_step else ""))
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(f"Against the predictions of {check.path.name}: fit's interval (thick), with seed noise (thin)",
                 fontsize=10)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=1, frameon=False)
    return fig


def _smooth(ys: list[float], steps: list[int], window: int = WINDOW) -> list[float]:
    """Trailing mean over the last ``window`` steps (the same window as loss_last100)."""
    out, acc, j = [], 0.0, 0
    for i, y in enumerate(ys):
        acc += y
        while steps[j] <= steps[i] - window:
            acc -= ys[j]
            j += 1
        out.append(acc / (i - j + 1))
    return out


def _colors(n: int):
    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _legend(ax, n: int) -> None:
    if n <= 8:
        ax.legend(fontsize=8, loc="best")
    else:                               # below the axes, two columns
        ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, frameon=False)


def _save(fig, path: Path) -> Path:
    """Write ``fig`` to ``path`` atomically and close it."""
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path
