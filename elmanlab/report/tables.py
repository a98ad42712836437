"""The report: :class:`Report` and ``write_report``, which write ``report.md`` (the headline of
:mod:`elmanlab.report.headline` with the what-ran checks of :mod:`elmanlab.report.checks`, then ranked
runs with their non-finite steps, kernel path and graph use, gaps to a baseline, scaling tables, best
per scale, best by swept setting, mean and spread over seeds, equal-token / equal-time views, the
scaling fits of :mod:`elmanlab.report.fit` with ``fit.json``, failures) and ``results.csv``, from the
runs :mod:`elmanlab.report.collect` gathers. The sections on swept settings and on equal tokens /
equal time are :class:`elmanlab.report.views.Views`, which Report inherits.

Needs no matplotlib: :meth:`Report.write` draws the plots through :mod:`elmanlab.report.plots`,
imported only then.
"""
from __future__ import annotations

import csv
import io
import json
import re
import statistics
import time
from collections import defaultdict
from pathlib import Path

from elmanlab.errors import ElmanlabError
from elmanlab.fsutil import atomic_write_text
from elmanlab.report.checks import check_implementations, record_notes, unlike_runs
from elmanlab.report.collect import Run, collect_runs
from elmanlab.report.fmt import count, csv_cell, md_table, mean_pm_sd, mean_sd, num, thousands
from elmanlab.report.headline import section_headline
from elmanlab.report.views import Views
from elmanlab.runs import PLOTS_DIR, STATE_FILE

DEFAULT_BASELINES = ("mamba2", "gdn")

# ---------------------------------------------------------------- the report

# the metrics runs can be ranked by (the same as a best_of wave's): (column label, unit, short name); lower is better
METRICS = {"loss_last100": ("loss last-100", "nats/byte", "loss"), "val_bpb": ("val bpb", "bits/byte", "val bpb"),
           "best_val_bpb": ("best val bpb", "bits/byte", "best val bpb")}
Y_LABEL = "val bpb (y)"     # --eval-train-weights' score: a column, not a metric to rank by


class Report(Views):
    """The runs under ``root`` ranked by ``metric``, with gaps to ``baseline`` (a model or a run name;
    default: the study's baseline, else mamba2 or gdn when present). ``done`` are the completed runs
    with a value of the metric, ``notok`` the rest. ``fit``: add the scaling fits
    (:mod:`elmanlab.report.fit`) even when no family ran at three sizes; ``predict``: sizes ("400M")
    to predict each family's value and each pair's gap at; ``bootstrap``: the fits' refits; ``at_step``: fit
    each run's value at that step rather than at its end (``Run.value_at``); ``against``: a
    reference table (CSV) to set the runs beside, with ``speed`` what times its rows alone: a speed
    study's folder or a benchmarks/throughput.py JSON, or a list of them (:mod:`elmanlab.report.against`)."""

    def __init__(self, root, baseline: str | None = None, metric: str = "loss_last100", fit: bool = False,
                 predict=(), bootstrap: int | None = None, against=None, speed=None, at_step: int | None = None,
                 check_fit=None):
        self.root = Path(root)
        if metric not in METRICS:
            raise ElmanlabError(f"--metric must be one of {', '.join(METRICS)}, got {metric!r}")
        if bootstrap is not None and (isinstance(bootstrap, bool) or not isinstance(bootstrap, int)
                                      or bootstrap < 50):
            raise ElmanlabError(f"--bootstrap must be a whole number of refits, at least 50 (default 1000), "
                                f"got {bootstrap!r}")
        self.predict = []
        if predict:
            from elmanlab.report.scaling import parse_predict
            self.predict = parse_predict(predict)
        if at_step is not None and (isinstance(at_step, bool) or not isinstance(at_step, int) or at_step < 1):
            raise ElmanlabError(f"--at-step must be a positive whole number of steps, got {at_step!r}")
        if at_step is not None and metric == "best_val_bpb":
            raise ElmanlabError("--at-step takes the value at one step: use --metric loss_last100 or val_bpb, "
                                "not best_val_bpb")
        self.at_step = at_step
        self.fit_wanted, self.bootstrap, self._fits = bool(fit or self.predict or at_step), bootstrap, None
        self.metric = metric
        self.mlabel, self.munit, self.mshort = METRICS[metric]
        self.runs, self.state = collect_runs(self.root)
        if not self.runs:
            raise ElmanlabError(f"{self.root} holds no runs (no summary.json and no {STATE_FILE}); "
                                f"give a study's --out folder")
        for r in self.runs:
            r.metric = metric
        if metric != "loss_last100":
            missing = [r.id for r in self.runs if r.status == "completed" and r.loss is None]
            if missing:
                raise ElmanlabError(f"{len(missing)} completed run(s) have no {metric} ({', '.join(missing[:5])}"
                                    f"{', ...' if len(missing) > 5 else ''}): score them with `elmanlab eval RUN`, "
                                    f"or rank by --metric loss_last100")
        self.done = [r for r in self.runs if r.status == "completed" and r.loss is not None]
        self.notok = [r for r in self.runs if r not in self.done]
        self.models = list(dict.fromkeys([r.model for r in self.runs]))
        self.baseline = self._pick_baseline(baseline)
        self.budgets = sorted({r.budget for r in self.done}, key=_budget_sort)
        self.scales = sorted({(r.scale_n, r.scale) for r in self.done})
        self._findings = None
        self.check = None
        if check_fit is not None:
            from elmanlab.report.predicted import PredictionCheck
            self.check = PredictionCheck(self, check_fit)
        self.against = None
        if against is not None:
            from elmanlab.report.against import Against
            self.against = Against(self, against, speed)
        elif speed is not None:
            raise ElmanlabError("--speed goes with --against: it times the rows of the reference table")

    def _pick_baseline(self, want: str | None) -> str | None:
        from elmanlab.layers import ALIASES
        cand = want if want is not None else (self.state or {}).get("baseline")
        models = {r.model for r in self.runs}
        if cand is not None:
            c = ALIASES.get(str(cand).lower(), str(cand).lower())
            if c in models:
                return c
            if any(r.id == cand for r in self.runs):
                return cand
            if want is not None:
                raise ElmanlabError(f"baseline {want!r} is not among the runs' models ({', '.join(sorted(models))}) "
                                    f"or run names")
        for m in DEFAULT_BASELINES:
            if m in models:
                return m
        return None

    # groups: comparisons are made within one scale and one budget
    def group_key(self, r: Run):
        return (r.scale_n, r.scale, r.budget)

    def group_name(self, key) -> str:
        return key[1] + (f", {key[2]}" if len(self.budgets) > 1 else "")

    def baseline_loss(self, r: Run) -> float | None:
        if self.baseline is None:
            return None
        if self.baseline in self.models:
            ref = [b.loss for b in self.done if b.model == self.baseline and self.group_key(b) == self.group_key(r)]
        else:
            ref = [b.loss for b in self.done if b.id == self.baseline]
        return statistics.fmean(ref) if ref else None

    def gap(self, r: Run) -> tuple[float, float] | None:
        b = self.baseline_loss(r)
        if b is None or r.loss is None:
            return None
        return r.loss - b, 100.0 * (r.loss - b) / b

    def _gap_str(self, r: Run) -> str:
        g = self.gap(r)
        if g is None:
            return "-"
        if r.id == self.baseline or (self.baseline in self.models and r.model == self.baseline
                                     and abs(g[0]) < 5e-5):
            return "baseline"
        return f"{g[0]:+.4f} ({g[1]:+.1f}%)"

    def ranked(self) -> list[Run]:
        return sorted(self.done, key=lambda r: (r.loss, r.id))

    # -------------------------------------------------------------- sections
    def section_ranked(self) -> str:
        bl = self.baseline or "baseline"
        cols = [self.metric] + [k for k in METRICS if k != self.metric and k != "best_val_bpb"
                                and any(r.get(k) is not None for r in self.done)]
        if self.metric != "best_val_bpb" and any((r.get("val_evals") or 0) > 1 for r in self.done):
            cols.append("best_val_bpb")        # a validation curve was recorded: its best point too
        y_col = any(r.get("val_bpb_y") is not None for r in self.done)
        if y_col:
            cols.append("val_bpb_y")           # --eval-train-weights: the weights being trained, scored too
        labels = [Y_LABEL if k == "val_bpb_y" else METRICS[k][0] for k in cols]
        head = ["rank", "run", "model", "params", "config"] + labels + \
               ["tok/s", "peak mem (GB)", "steps", "tokens", "non-finite", "kernel", "graph", f"gap to {bl}"]
        unlike = self.unlike()
        rows = []
        for i, r in enumerate(self.ranked(), 1):
            rows.append([i, r.id + (" †" if r.id in unlike else ""), r.model, count(r.params), r.label()]
                        + [num(r.get(k)) for k in cols]
                        + [thousands(r.get("tokens_per_s")), num(r.get("peak_memory_gb"), 2),
                           thousands(r.get("steps")), count(r.get("tokens")), _opt(r.nonfinite_steps),
                           _kernel_text(r), _opt(r.cuda_graph), self._gap_str(r)])
        note = (f"Ranked by {self.mlabel}; lower is better. Gap = {self.mlabel} minus the mean {self.mlabel} of "
                f"{bl} at the same scale" + (" and budget" if len(self.budgets) > 1 else "")
                + f" ({self.munit}, and in %)."
                if self.baseline else f"Ranked by {self.mlabel}; lower is better. No baseline model among the "
                                      f"runs: no gap column values.")
        if y_col:
            note += (f" {Y_LABEL} = held-out bits/byte with the weights being trained (Schedule-Free's y, "
                     f"`--eval-train-weights`; - where not recorded); val bpb uses their average x (pure-bf16 runs: y, "
                     f"summary.json's eval_weights).")
        note += (" Non-finite = optimizer steps skipped for a non-finite loss or gradient; kernel = the "
                 "implementation the family's op ran; graph = whether CUDA graphs replayed the steps (- where the "
                 "record does not say).")
        if unlike:
            note += " † = not like-for-like with other runs of its scale (see the headline)."
        return "## Ranked runs\n\n" + note + "\n\n" + md_table(head, rows)

    def findings(self) -> list:
        """How the completed runs were not made alike (:func:`elmanlab.report.checks.check_implementations`)."""
        if self._findings is None:
            self._findings = check_implementations(self.done)
        return self._findings

    def unlike(self) -> dict[str, list[str]]:
        """Run id -> why its scale group's rankings are not like-for-like
        (:func:`elmanlab.report.checks.unlike_runs`)."""
        return unlike_runs(self.done, self.findings())

    def _scale_rows(self):
        keys = sorted({self.group_key(r) for r in self.done}, key=lambda k: (k[0], _budget_sort(k[2])))
        return keys

    def section_scaling(self) -> str:
        if len(self.scales) < 2:
            return ""
        models = [m for m in self.models if any(r.model == m for r in self.done)]
        out = []
        for title, getter, fmt in (
                (f"Scaling: {self.mlabel} ({self.munit}; mean ± sd over seeds)", lambda r: r.loss,
                 lambda v: mean_pm_sd(v)),
                ("Scaling: throughput (tokens/s)", lambda r: r.get("tokens_per_s"),
                 lambda v: f"{statistics.fmean(v):,.0f}" if v else "-")):
            rows = []
            for key in self._scale_rows():
                cells = [self.group_name(key)]
                for m in models:
                    vals = [getter(r) for r in self.done if r.model == m and self.group_key(r) == key
                            and getter(r) is not None]
                    cells.append(fmt(vals) if vals else "-")
                rows.append(cells)
            out.append(f"## {title}\n\n" + md_table(["scale"] + models, rows))
        return "\n\n".join(out)

    def section_best_per_scale(self) -> str:
        rows = []
        for key in self._scale_rows():
            grp = sorted((r for r in self.done if self.group_key(r) == key), key=lambda r: r.loss)
            best = grp[0]
            second = next((r for r in grp if r.model != best.model), None)
            rows.append([self.group_name(key), best.model, best.id, num(best.loss),
                         f"{second.model} {num(second.loss)} ({second.loss - best.loss:+.4f})" if second else "-",
                         self._gap_str(best)])
        return "## Best model per scale\n\n" + md_table(
            ["scale", "best model", "run", self.mlabel, "next other model", f"gap to {self.baseline or '-'}"], rows)

    def section_seeds(self) -> str:
        groups = defaultdict(list)
        for r in self.done:
            groups[r.config_key()].append(r)
        multi = [g for g in groups.values() if len({r.seed for r in g}) > 1]
        if not multi:
            return ""
        rows = []
        other = "val_bpb" if self.metric != "val_bpb" else "loss_last100"     # the metric not ranked by
        for g in sorted(multi, key=lambda g: statistics.fmean(r.loss for r in g)):
            losses = [r.loss for r in g]
            m, sd = mean_sd(losses)
            vb = [r.get(other) for r in g if r.get(other) is not None]
            r0 = g[0]
            rows.append([r0.model, count(r0.params), r0.label(), len(g), ", ".join(str(r.seed) for r in g),
                         num(m), num(sd), f"{min(losses):.4f} - {max(losses):.4f}", mean_pm_sd(vb) if vb else "-"])
        return ("## Mean and spread over seeds\n\nSame configuration, different seeds: sd is the sample "
                "standard deviation; compare it with the gaps above.\n\n"
                + md_table(["model", "params", "config", "runs", "seeds", f"mean {self.mshort}", "sd", "range",
                            METRICS[other][0]], rows))

    def section_failed(self) -> str:
        if not self.notok:
            return ""
        rows = [[r.id, r.model, count(r.params), r.status, (r.error or "-")[:240]] for r in self.notok]
        return "## Failed and unfinished runs\n\n" + md_table(["run", "model", "params", "status", "reason"], rows)

    def section_data(self) -> str:
        """Whether runs with the same seed and step count saw the same data stream."""
        groups = defaultdict(set)
        for r in self.done:
            fp = r.summary.get("data_fingerprint")
            if fp is not None and r.get("steps") is not None:
                groups[(r.seed, r.get("steps"), r.train.get("batch_size"), r.train.get("seq_len"))].add(str(fp))
        if not groups:
            return ""
        comparable = {k: v for k, v in groups.items()}
        same = all(len(v) == 1 for v in comparable.values())
        return ("Data: runs with the same seed, steps, batch and sequence length "
                + ("saw identical data streams (same data_fingerprint)." if same
                   else "**did not all see the same data stream** (data_fingerprint differs); check --data."))

    def title(self) -> str:
        return (self.state or {}).get("name") or self.root.resolve().name

    def fits(self):
        """The scaling fits (:func:`elmanlab.report.fit.fit_study`), when asked for (``fit``) or when some
        family completed runs at three sizes or more; else None."""
        if self._fits is None and self.done:
            from elmanlab.report.fit import BOOTSTRAP
            from elmanlab.report.scaling import fit_study, multi_scale
            if self.fit_wanted or multi_scale(self.done):
                self._fits = fit_study(self, self.predict, self.bootstrap or BOOTSTRAP, at_step=self.at_step)
        return self._fits

    def section_fit(self) -> str:
        f = self.fits()
        return f.markdown() if f is not None else ""

    # -------------------------------------------------------------- outputs
    def csv_text(self) -> str:
        rank = {r.id: i for i, r in enumerate(self.ranked(), 1)}
        opt_keys = sorted({k for r in self.runs for k in r.options})
        tr_keys = sorted({k for r in self.runs for k in r.train})
        cols = ["rank", "run", "status", "model", "scale", "params", "dim", "depth", "config"] + \
               [f"opt_{k}" for k in opt_keys] + [f"train_{k}" for k in tr_keys] + \
               ["budget", "loss_last100", "final_loss", "val_bpb", "val_bpb_y", "best_val_bpb", "best_val_step",
                "epochs",
                "tokens_per_s", "peak_memory_gb", "steps",
                "tokens", "wall_s", "mfu", "nonfinite_steps", "loss_spike_steps", "early_blowup_loss", "late_rise_nats", "grad_bursts", "grad_burst_max", "kernel_family", "kernel_path", "kernel_fast",
                "implementations", "allow_reference", "cuda_graph", "warmup_s", "elmanlab_version", "commit", "dirty",
                "like_for_like", "baseline", "gap_to_baseline", "gap_pct", "wave", "error"]
        unlike = self.unlike()
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(cols)
        for r in sorted(self.runs, key=lambda r: (rank.get(r.id, 10 ** 9), r.id)):
            g = self.gap(r)
            w.writerow([rank.get(r.id, ""), r.id, r.status, r.model, r.scale, r.params or "", r.dim or "",
                        r.depth or "", r.label()]
                       + [csv_cell(r.options.get(k)) for k in opt_keys] + [csv_cell(r.train.get(k)) for k in tr_keys]
                       + [r.budget] + [csv_cell(r.get(k)) for k in ("loss_last100", "final_loss", "val_bpb",
                                                                "val_bpb_y", "best_val_bpb", "best_val_step",
                                                                "epochs",
                                                                "tokens_per_s", "peak_memory_gb", "steps",
                                                                "tokens", "wall_s", "mfu")]
                       + [csv_cell(r.nonfinite_steps), " ".join(str(ev["step"]) for ev in r.loss_spikes()),
                          csv_cell((r.early_blowup() or {}).get("loss_max")),
                          csv_cell((r.late_rise() or {}).get("rise")), *_burst_cells(r), r.kernel_family or "", r.kernel_path or "",
                          csv_cell(r.kernel_fast),
                          "; ".join(f"{op}: {p}" for op, p in sorted(r.implementations().items())),
                          csv_cell(r.allow_reference), csv_cell(r.cuda_graph), csv_cell(r.get("warmup_s")),
                          r.elmanlab_version or "", r.commit or "", csv_cell(r.dirty), self._like(r, unlike)]
                       + [self.baseline or "", csv_cell(g[0] if g else None), csv_cell(g[1] if g else None),
                          r.wave or "", r.error or ""])
        return buf.getvalue()

    def _like(self, r: Run, unlike: dict) -> str:
        """results.csv's like_for_like: "no" (see the headline), "yes" (what ran is recorded and matches),
        empty where the run is not ranked or its record does not say."""
        if r not in self.done:
            return ""
        if r.id in unlike:
            return "no"
        return "yes" if r.kernel_path is not None and r.cuda_graph is not None else ""

    def markdown(self, plot_paths: list[Path]) -> str:
        n_fail = sum(1 for r in self.notok if r.status not in ("pending", "interrupted", "running"))
        n_wait = len(self.notok) - n_fail
        head = [f"# Study report: {self.title()}", ""]
        desc = (self.state or {}).get("description")
        if desc:
            head += [desc, ""]
        head.append(f"{len(self.runs)} runs: {len(self.done)} completed, {n_fail} failed"
                    + (f", {n_wait} not run or unfinished" if n_wait else "")
                    + f". Baseline: {self.baseline or 'none'}. "
                    + f"Budgets: {', '.join(self.budgets) or '-'}. Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} "
                      f"by `elmanlab report`.")
        head.append("")
        head.append("Loss = training cross-entropy in nats/byte averaged over the last 100 steps (divide by "
                    "ln 2 = 0.693 for bits/byte); val bpb = bits/byte on held-out bytes, scored at the end of "
                    "training (the same bytes for every run of a data file).")
        d = self.section_data()
        if d:
            head += ["", d]
        secs = ["\n".join(head)]
        if self.done:
            secs += [section_headline(self, self.findings(), record_notes(self.done)), self.section_ranked(),
                     self.section_scaling(), self.section_best_per_scale(),
                     self.section_by_option(), self.section_seeds(), self.section_iso(), self.section_fit()]
        else:
            secs.append("No run has completed yet.")
        if self.against is not None:
            secs.append(self.against.section())
        if self.check is not None:
            secs.append(self.check.section())
        secs.append(self.section_failed())
        if plot_paths:
            secs.append("## Plots\n\n" + "\n\n".join(
                f"![{p.stem.replace('_', ' ')}]({p.relative_to(self.root).as_posix()})" for p in plot_paths))
        return "\n\n".join(s for s in secs if s) + "\n"

    def write(self) -> dict:
        """Write report.md, results.csv and the plots; returns their paths and the markdown."""
        plot_paths = []
        fits = self.fits()
        if self.done:
            from elmanlab.report.plots import write_fit_plots, write_plots
            plot_paths = write_plots(self, self.root / PLOTS_DIR)
            if fits is not None and fits.any_fitted():
                plot_paths += write_fit_plots(self, fits, self.root / PLOTS_DIR)
            if self.check is not None and any(ln.interval is not None for ln in self.check.lines):
                from elmanlab.report.plots import write_check_plot
                plot_paths.append(write_check_plot(self.check, self.root / PLOTS_DIR))
        md = self.markdown(plot_paths)
        atomic_write_text(self.root / "report.md", md)
        atomic_write_text(self.root / "results.csv", self.csv_text())
        if self.against is not None:
            atomic_write_text(self.root / "against.csv", self.against.csv_text())
        if self.check is not None:
            atomic_write_text(self.root / "prediction-check.json", json.dumps(self.check.to_json(), indent=2) + "\n")
        fit_json = self.root / "fit.json"
        if fits is not None:
            atomic_write_text(fit_json, json.dumps(fits.to_json(), indent=2) + "\n")
        elif fit_json.exists():                 # from an earlier report of runs that fitted then
            fit_json.unlink()
        return {"report": self.root / "report.md", "csv": self.root / "results.csv", "plots": plot_paths,
                "markdown": md, "fit": fit_json if fits is not None else None,
                "against": self.root / "against.csv" if self.against is not None else None,
                "check": self.root / "prediction-check.json" if self.check is not None else None}


def write_report(root, baseline: str | None = None, metric: str = "loss_last100", **fit) -> dict:
    """Report on the runs under ``root`` (see :meth:`Report.write`; ``fit``: Report's fit, predict and
    bootstrap)."""
    return Report(root, baseline, metric, **fit).write()


# ---------------------------------------------------------------- small helpers

def _budget_sort(b: str):
    m = re.match(r"([0-9.]+) (min|steps)", b or "")
    return (m.group(2), float(m.group(1))) if m else ("~", 0.0)


def _opt(v) -> str:
    """A recorded count or flag; - where the record predates it."""
    return "-" if v is None else "yes" if v is True else "no" if v is False else str(v)


def _kernel_text(r: Run) -> str:
    p = r.kernel_path
    return "-" if p is None else p + (" (reference)" if r.kernel_fast is False and p != "reference" else "")


def _burst_cells(r: Run) -> list[str]:
    """results.csv's grad_bursts (how many training lines past step 100 had a step gradient norm of 10 or
    more) and grad_burst_max (the largest of them); both empty where the record has no grad_norm_max."""
    bursts = r.gradient_bursts()
    if bursts is None:
        return ["", ""]
    return [str(len(bursts)), csv_cell(max((b["grad_norm_max"] for b in bursts), default=None))]
