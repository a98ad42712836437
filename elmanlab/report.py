"""Study reports: ranked tables, gaps to a baseline, scaling tables, iso-token / iso-time views, plots.

``write_report(DIR)`` reads every run record under DIR (each folder with a ``summary.json``, plus
the study's ``study.json`` for runs that failed before writing one or never ran) and writes
``DIR/report.md``, ``DIR/results.csv`` and PNG plots under ``DIR/plots/``.

The loss is the training cross-entropy in nats per byte averaged over the last 100 steps
(``loss_last100``), the seeds' metric; bits per byte = nats / ln 2.
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from elmanlab.errors import ElmanlabError
from elmanlab.fsutil import atomic_write_text, read_json_or_none
from elmanlab.study import LOG_DIR, STATE_FILE

LN2 = math.log(2.0)
WINDOW = 100                       # steps averaged for the "last-100" style losses
MAX_LINES = 9                      # curves drawn in colour; the rest are grey
DEFAULT_BASELINES = ("mamba2", "gdn")
ASIDE = re.compile(r"\.(failed|interrupted)-\d+$")
# train settings that are bookkeeping, not part of what a configuration is
NOT_CONFIG = {"seed", "data", "val_data", "device", "out", "resume", "checkpoint_every", "log_every",
              "eval_every", "debug"}
# train settings that do not change what is learned (left out of tables and of "swept" settings)
BOOKKEEPING = {"out", "data", "val_data", "device", "progress", "log_every", "eval_bytes", "max_nonfinite",
               "checkpoint_every", "resume"}
SWEEP_ORDER = ("dim", "depth", "n_state", "n_heads", "expansion", "balance")


@dataclass
class Run:
    id: str
    path: Path
    status: str
    model: str
    error: str | None = None
    params: int | None = None
    target: int | None = None
    dim: int | None = None
    depth: int | None = None
    options: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    wave: str | None = None
    scale: str = "-"
    scale_n: float = 0.0
    _metrics: list | None = None
    metric: str = "loss_last100"          # what ``loss`` ranks by (set by Report)

    # summary values
    def get(self, key):
        v = self.summary.get(key)
        return v if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None

    @property
    def loss(self):
        """The ranking metric: last-100 training loss, or val bits/byte with ``--metric val_bpb``."""
        return self.get(self.metric)

    @property
    def seed(self):
        s = self.summary.get("seed", self.train.get("seed"))
        return s

    @property
    def budget(self) -> str:
        t = self.train
        b = self.summary.get("budget")
        if isinstance(b, dict):
            t = {**t, **b}
        if t.get("minutes") is not None:
            return f"{_num(t['minutes'])} min"
        if t.get("steps") is not None:
            return f"{_num(t['steps'])} steps"
        if isinstance(b, str):
            return b
        return "-"

    def config_key(self) -> str:
        """Everything that defines the configuration except the seed (to pool seeds)."""
        tr = {k: v for k, v in self.train.items() if k not in NOT_CONFIG}
        return json.dumps([self.model, self.dim, self.depth, self.options, tr], sort_keys=True, default=str)

    def label(self) -> str:
        parts = [f"{self.dim}x{self.depth}" if self.dim else "?"]
        o = self.options
        if self.model == "e88" and o.get("n_heads") is not None:
            parts.append(f"H{o.get('n_heads')} n{o.get('n_state')}")
        for k, v in self.nondefault_options().items():
            if self.model == "e88" and k in ("n_heads", "n_state", "balance"):
                continue
            parts.append(k if v is True else f"no {k}" if v is False else f"{k}={_num(v)}")
        return " ".join(parts)

    def active_options(self) -> dict:
        """The options that had an effect (see RecurrentLayer.inactive_options)."""
        try:
            from elmanlab.layers import get_family
            off = get_family(self.model).inactive_options(self.options)
        except ElmanlabError:
            off = set()
        return {k: v for k, v in self.options.items() if k not in off}

    def nondefault_options(self) -> dict:
        try:
            from elmanlab.config import option_fields
            fields_ = option_fields(self.model)
        except ElmanlabError:
            return dict(self.options)
        out = {}
        for k, v in self.options.items():
            f = fields_.get(k)
            if f is None or f.default != v:
                out[k] = v
        return out

    def metrics(self) -> list[dict]:
        if self._metrics is None:
            self._metrics = read_metrics(self.path / "metrics.jsonl")
        return self._metrics


def _num(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl rows with finite loss, tokens and elapsed (a torn last line is ignored)."""
    rows = []
    try:
        with open(path) as f:
            for line in f:
                try:
                    r = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(r, dict):
                    continue
                if all(isinstance(r.get(k), (int, float)) for k in ("step", "loss", "tokens")) \
                        and math.isfinite(r["loss"]):
                    rows.append(r)
    except OSError:
        return []
    rows.sort(key=lambda r: r["step"])
    return rows


# ---------------------------------------------------------------- collecting runs

def _first(*vals):
    for v in vals:
        if v is not None:
            return v
    return None


def _model_fields(summ: dict, cfg: dict) -> tuple:
    """(model, dim, depth, options) from summary.json / config.json, whatever their nesting."""
    cands = [summ, summ.get("config") if isinstance(summ.get("config"), dict) else {},
             cfg, cfg.get("model") if isinstance(cfg.get("model"), dict) else {},
             cfg.get("model_config") if isinstance(cfg.get("model_config"), dict) else {}]
    model = dim = depth = None
    options = None
    for c in cands:
        if not isinstance(c, dict):
            continue
        if isinstance(c.get("model"), str):
            model = model or c["model"]
        dim = _first(dim, c.get("dim") if isinstance(c.get("dim"), int) else None)
        depth = _first(depth, c.get("depth") if isinstance(c.get("depth"), int) else None)
        if options is None and isinstance(c.get("options"), dict) and c is not summ:
            options = c["options"]
    if options is None and isinstance(summ.get("options"), dict):
        options = summ["options"]
    return model, dim, depth, dict(options or {})


def _train_fields(summ: dict, cfg: dict, job: dict | None) -> dict:
    """The run's train settings: config.json's ``train`` block (scalars), else the study's job."""
    out = {}
    tr = cfg.get("train") if isinstance(cfg.get("train"), dict) else None
    if tr:
        for k, v in tr.items():
            if k not in BOOKKEEPING and isinstance(v, (int, float, str, bool)):
                out[k] = v
    elif job:
        out.update({k: v for k, v in (job.get("train") or {}).items() if k not in BOOKKEEPING})
    for k in ("seed", "batch_size", "seq_len", "lr", "weight_decay"):
        if isinstance(summ.get(k), (int, float)):
            out.setdefault(k, summ[k])
    b = summ.get("budget")
    if isinstance(b, dict):
        for k in ("steps", "minutes"):
            if b.get(k) is not None:
                out.setdefault(k, b[k])
    return out


def _parse_target(v) -> int | None:
    if v is None:
        return None
    try:
        from elmanlab.sizing import parse_count
        return parse_count(v)
    except (ElmanlabError, ValueError, TypeError):
        return None


def collect_runs(root) -> tuple[list[Run], dict | None]:
    """Every run under ``root``: finished ones from summary.json, the rest from study.json."""
    root = Path(root)
    if not root.is_dir():
        raise ElmanlabError(f"{root} is not a folder; give the study's --out folder (or a folder of runs)")
    state = read_json_or_none(root / STATE_FILE)
    state = state if isinstance(state, dict) and isinstance(state.get("jobs"), list) else None
    jobs = {j.get("run_dir") or j.get("id"): j for j in (state or {}).get("jobs", []) if isinstance(j, dict)}
    runs: list[Run] = []
    seen: set[str] = set()
    for sp in sorted(root.rglob("summary.json")):
        rdir = sp.parent
        rel = rdir.relative_to(root).as_posix() if rdir != root else rdir.name
        if any(ASIDE.search(part) for part in rdir.relative_to(root).parts) or \
                rel.split("/")[0] in (LOG_DIR, "plots"):
            continue
        summ = read_json_or_none(sp)
        if not isinstance(summ, dict):
            continue
        cfg = read_json_or_none(rdir / "config.json") or {}
        cfg = cfg if isinstance(cfg, dict) else {}
        job = jobs.get(rel)
        model, dim, depth, options = _model_fields(summ, cfg)
        if job and not options:
            options = dict(job.get("options") or {})
        status = summ.get("status") or "completed"
        runs.append(Run(
            id=rel, path=rdir, status=status, model=str(model or (job or {}).get("model") or "?"),
            error=summ.get("error") or (None if status == "completed" else status),
            params=summ.get("params") if isinstance(summ.get("params"), int) else None,
            target=_parse_target((job or {}).get("params") or cfg.get("params") or summ.get("target")),
            dim=dim, depth=depth, options=options, train=_train_fields(summ, cfg, job), summary=summ,
            wave=(job or {}).get("wave")))
        seen.add(rel)
    for rel, job in jobs.items():
        if rel in seen or job.get("in_study_file") is False and job.get("status") == "dropped":
            continue
        size = job.get("size") or {}
        status = job.get("status") or "pending"
        if status == "completed":          # recorded done, but its summary.json is gone
            status, err = "missing", "summary.json is missing from its folder"
        else:
            err = job.get("error")
        opts = dict(job.get("options") or {})
        if job.get("model") == "e88" and size.get("n_heads") is not None:
            opts.setdefault("n_heads", size["n_heads"])
        runs.append(Run(id=rel, path=root / rel, status=status, model=job.get("model", "?"), error=err,
                        params=size.get("params"), target=_parse_target(job.get("params")),
                        dim=size.get("dim"), depth=size.get("depth"), options=opts,
                        train=dict(job.get("train") or {}), wave=job.get("wave")))
    _assign_scales(runs)
    return runs, state


def _assign_scales(runs: list[Run]) -> None:
    """Scale = the parameter target when the study gave one; otherwise clusters of similar size."""
    from elmanlab.sizing import format_count
    targets = sorted({r.target for r in runs if r.target})
    loose = []
    for r in runs:
        if r.target:
            r.scale_n, r.scale = r.target, format_count(r.target)
            continue
        if r.params:
            near = [t for t in targets if abs(r.params - t) / t <= 0.10]
            if near:
                t = min(near, key=lambda t: abs(r.params - t))
                r.scale_n, r.scale = t, format_count(t)
                continue
            loose.append(r)
    loose.sort(key=lambda r: r.params)
    cluster: list[Run] = []

    def flush():
        if cluster:
            med = statistics.median(r.params for r in cluster)
            for r in cluster:
                r.scale_n, r.scale = med, "~" + format_count(med)

    for r in loose:
        if cluster and r.params > 1.25 * cluster[0].params:
            flush()
            cluster = []
        cluster.append(r)
    flush()


# ---------------------------------------------------------------- numbers

def _mean_sd(vals: list[float]) -> tuple[float, float | None]:
    m = statistics.fmean(vals)
    return m, (statistics.stdev(vals) if len(vals) > 1 else None)


def _f(v, nd=4, dash="-") -> str:
    if v is None:
        return dash
    return f"{v:.{nd}f}"


def _ms(vals: list[float], nd=4) -> str:
    if not vals:
        return "-"
    m, sd = _mean_sd(vals)
    return f"{m:.{nd}f}" + (f" ± {sd:.{nd}f}" if sd is not None else "")


def _int(v) -> str:
    return "-" if v is None else f"{v:,.0f}"


def _count(v) -> str:
    from elmanlab.sizing import format_count
    return "-" if v is None else format_count(v)


def md_table(headers: list[str], rows: list[list]) -> str:
    def cell(x):
        return str(x).replace("|", "\\|").replace("\n", " ")
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(cell(x) for x in r) + " |" for r in rows]
    return "\n".join(out)


def loss_at(metrics: list[dict], key: str, limit: float, window: int = WINDOW) -> float | None:
    """Mean loss over the last ``window`` steps logged with ``key`` (tokens / elapsed) <= limit."""
    upto = [m for m in metrics if isinstance(m.get(key), (int, float)) and m[key] <= limit * (1 + 1e-9)]
    if not upto:
        return None
    last = upto[-1]["step"]
    win = [m["loss"] for m in upto if m["step"] > last - window]
    return statistics.fmean(win)


# ---------------------------------------------------------------- the report

# the metrics runs can be ranked by (the same as a best_of wave's): (column label, unit, short name); lower is better
METRICS = {"loss_last100": ("loss last-100", "nats/byte", "loss"), "val_bpb": ("val bpb", "bits/byte", "val bpb")}


class Report:
    def __init__(self, root, baseline: str | None = None, metric: str = "loss_last100"):
        self.root = Path(root)
        if metric not in METRICS:
            raise ElmanlabError(f"--metric must be one of {', '.join(METRICS)}, got {metric!r}")
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
        has_val = any(r.get("val_bpb") is not None for r in self.done)
        cols = [self.metric] + [k for k in METRICS if k != self.metric and (k != "val_bpb" or has_val)]
        head = ["rank", "run", "model", "params", "config"] + [METRICS[k][0] for k in cols] + \
               ["tok/s", "peak mem (GB)", "steps", "tokens", f"gap to {bl}"]
        rows = []
        for i, r in enumerate(self.ranked(), 1):
            rows.append([i, r.id, r.model, _count(r.params), r.label()] + [_f(r.get(k)) for k in cols]
                        + [_int(r.get("tokens_per_s")), _f(r.get("peak_memory_gb"), 2), _int(r.get("steps")),
                           _count(r.get("tokens")), self._gap_str(r)])
        note = (f"Ranked by {self.mlabel}; lower is better. Gap = {self.mlabel} minus the mean {self.mlabel} of "
                f"{bl} at the same scale" + (" and budget" if len(self.budgets) > 1 else "")
                + f" ({self.munit}, and in %)."
                if self.baseline else f"Ranked by {self.mlabel}; lower is better. No baseline model among the "
                                      f"runs: no gap column values.")
        return "## Ranked runs\n\n" + note + "\n\n" + md_table(head, rows)

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
                 lambda v: _ms(v)),
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
            rows.append([self.group_name(key), best.model, best.id, _f(best.loss),
                         f"{second.model} {_f(second.loss)} ({second.loss - best.loss:+.4f})" if second else "-",
                         self._gap_str(best)])
        return "## Best model per scale\n\n" + md_table(
            ["scale", "best model", "run", self.mlabel, "next other model", f"gap to {self.baseline or '-'}"], rows)

    def swept_keys(self) -> list[tuple[str, str, tuple]]:
        """(key, model, group) for every setting that takes several values within one model and group."""
        found = []
        groups = defaultdict(list)
        for r in self.done:
            groups[(r.model, self.group_key(r))].append(r)
        for (model, gk), rs in groups.items():
            keys = ["dim", "depth"] + sorted({k for r in rs for k in r.active_options()}) + \
                sorted({k for r in rs for k in r.train if k not in NOT_CONFIG and k not in ("steps", "minutes")})
            for k in keys:
                vals = {json.dumps(_value(r, k), default=str) for r in rs}
                if len(vals) > 1:
                    found.append((k, model, gk))
        order = {k: i for i, k in enumerate(SWEEP_ORDER)}
        found.sort(key=lambda t: (order.get(t[0], len(order)), t[0], t[1], t[2][0]))
        return found

    def section_by_option(self) -> str:
        sw = self.swept_keys()
        if not sw:
            return ""
        by_key = defaultdict(list)
        for k, m, gk in sw:
            by_key[k].append((m, gk))
        out = []
        for k, pairs in by_key.items():
            rows = []
            for m, gk in pairs:
                rs = [r for r in self.done if r.model == m and self.group_key(r) == gk]
                vals = sorted({json.dumps(_value(r, k), default=str) for r in rs}, key=_sort_json)
                for vj in vals:
                    sel = [r for r in rs if json.dumps(_value(r, k), default=str) == vj]
                    best = min(sel, key=lambda r: r.loss)
                    rows.append([m, self.group_name(gk), _num(json.loads(vj)) if vj != "null" else "-",
                                 _f(best.loss), best.id, _ms([r.loss for r in sel]), len(sel)])
            out.append(f"### Best {self.mshort} by {k}\n\n" + md_table(
                ["model", "scale", k, f"best {self.mshort}", "best run", "mean ± sd", "runs"], rows))
        return f"## Best {self.mshort} by swept setting\n\n" + "\n\n".join(out)

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
            m, sd = _mean_sd(losses)
            vb = [r.get(other) for r in g if r.get(other) is not None]
            r0 = g[0]
            rows.append([r0.model, _count(r0.params), r0.label(), len(g), ", ".join(str(r.seed) for r in g),
                         _f(m), _f(sd), f"{min(losses):.4f} - {max(losses):.4f}", _ms(vb) if vb else "-"])
        return ("## Mean and spread over seeds\n\nSame configuration, different seeds: sd is the sample "
                "standard deviation; compare it with the gaps above.\n\n"
                + md_table(["model", "params", "config", "runs", "seeds", f"mean {self.mshort}", "sd", "range",
                            METRICS[other][0]], rows))

    def iso_tables(self) -> list[dict]:
        """Per group: the loss of each run at the token count / wall-clock the shortest run reached."""
        out = []
        groups = defaultdict(list)
        for r in self.done:                 # by scale only: runs of several budgets compare too
            if r.metrics():
                groups[(r.scale_n, r.scale, "")].append(r)
        for gk in sorted(groups):
            rs = groups[gk]
            if len(rs) < 2:
                continue
            T = min(r.metrics()[-1]["tokens"] for r in rs)
            has_t = all(isinstance(r.metrics()[-1].get("elapsed"), (int, float)) for r in rs)
            t = min(r.metrics()[-1]["elapsed"] for r in rs) if has_t else None
            shortest_T = min(rs, key=lambda r: r.metrics()[-1]["tokens"]).id
            shortest_t = min(rs, key=lambda r: r.metrics()[-1]["elapsed"]).id if has_t else None
            rows = []
            for r in rs:
                lt = loss_at(r.metrics(), "tokens", T)
                le = loss_at(r.metrics(), "elapsed", t) if t is not None else None
                rows.append({"run": r.id, "model": r.model, "params": r.params, "loss_at_tokens": lt,
                             "loss_at_time": le, "final": r.get("loss_last100"), "tokens": r.metrics()[-1]["tokens"],
                             "elapsed": r.metrics()[-1].get("elapsed")})
            out.append({"group": gk, "tokens": T, "time": t, "shortest_tokens": shortest_T,
                        "shortest_time": shortest_t, "rows": rows})
        return out

    def section_iso(self) -> str:
        tabs = self.iso_tables()
        if not tabs:
            return ""
        out = ["## Equal tokens and equal time\n\nEach run's loss (mean of the logged losses over the "
               f"last {WINDOW} steps up to that point) at the token count the run with the fewest tokens "
               "reached, and at the wall-clock time (training time, without the first-step warm-up) the "
               "shortest run reached, from metrics.jsonl; - means the run had logged no step by then."]
        for tab in tabs:
            gname = tab["group"][1]
            toks = [x["tokens"] for x in tab["rows"]]
            times = [x["elapsed"] for x in tab["rows"] if x["elapsed"] is not None]
            if max(toks) <= 1.005 * min(toks):
                out.append(f"### Equal tokens: {gname}\n\nAll runs trained on the same number of tokens "
                           f"({_count(min(toks))}): the ranking above is the equal-token comparison.")
            else:
                out.append(self._iso_table(tab, gname, "tokens"))
            if tab["time"] is not None and max(times) <= 1.02 * min(times):
                out.append(f"### Equal time: {gname}\n\nAll runs trained for the same time "
                           f"({_dur(min(times))}): the ranking above is the equal-time comparison.")
            elif tab["time"] is not None:
                out.append(self._iso_table(tab, gname, "time"))
        return "\n\n".join(out)

    @staticmethod
    def _iso_table(tab, gname, what: str) -> str:
        """The equal-tokens (``what`` = "tokens") or equal-time ("time") ranking of one group."""
        key = "loss_at_tokens" if what == "tokens" else "loss_at_time"
        rows = sorted(tab["rows"], key=lambda x: (x[key] is None, x[key] or 0))
        if what == "tokens":
            title = (f"### Equal tokens: {gname}, at {_count(tab['tokens'])} tokens "
                     f"(reached by all; fewest: {tab['shortest_tokens']})")
            last, amount = "tokens", lambda x: _count(x["tokens"])
        else:
            title = (f"### Equal time: {gname}, at {_dur(tab['time'])} of training "
                     f"(reached by all; shortest: {tab['shortest_time']})")
            last, amount = "run time", lambda x: _dur(x["elapsed"])
        return title + "\n\n" + md_table(
            ["rank", "run", "model", "params", f"loss at equal {what}", "final loss", last],
            [[i, x["run"], x["model"], _count(x["params"]), _f(x[key]), _f(x["final"]), amount(x)]
             for i, x in enumerate(rows, 1)])

    def section_failed(self) -> str:
        if not self.notok:
            return ""
        rows = [[r.id, r.model, _count(r.params), r.status, (r.error or "-")[:240]] for r in self.notok]
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

    # -------------------------------------------------------------- plots
    def plots(self, outdir: Path) -> list[Path]:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        outdir.mkdir(parents=True, exist_ok=True)
        written = []
        curves = [r for r in self.ranked() if len(r.metrics()) >= 2]
        # many runs: the best MAX_LINES (and the baseline) in colour, the rest thin and grey
        shown = curves[:MAX_LINES]
        for r in curves[MAX_LINES:]:
            if self.baseline in (r.model, r.id) and len(shown) < MAX_LINES + 2:
                shown.append(r)
        colors = dict(zip([r.id for r in shown], _colors(len(shown))))
        for name, key in (("loss_vs_tokens", "tokens"), ("loss_vs_time", "elapsed")):
            sel = [r for r in curves if all(isinstance(m.get(key), (int, float)) for m in r.metrics())]
            if not sel:
                continue
            if key == "tokens":
                xlabel, xscale = "tokens (bytes)", 1.0
            else:
                longest = max(r.metrics()[-1][key] for r in sel)
                xlabel, xscale = (("wall-clock (seconds)", 1.0) if longest < 180 else
                                  ("wall-clock (minutes)", 1 / 60.0) if longest < 3 * 3600 else
                                  ("wall-clock (hours)", 1 / 3600.0))
            n_leg = sum(r.id in colors for r in sel) + (len(sel) > len(colors))
            fig, ax = plt.subplots(figsize=(10, 5.5 if n_leg <= 8 else 5.5 + 0.2 * math.ceil(n_leg / 2)))
            hi, lo = [], []
            others = 0
            for r in sel:
                xs = [m[key] * xscale for m in r.metrics()]
                steps = [m["step"] for m in r.metrics()]
                ys = _smooth([m["loss"] for m in r.metrics()], steps,
                             window=max(1, min(WINDOW, steps[-1] // 20)))
                if r.id in colors:
                    ax.plot(xs, ys, color=colors[r.id], lw=1.4, label=f"{r.id} ({_f(r.get('loss_last100'), 3)})", zorder=3)
                else:
                    others += 1
                    ax.plot(xs, ys, color="0.6", lw=0.7, alpha=0.6, zorder=2,
                            label=f"{len(sel) - len([x for x in sel if x.id in colors])} other runs (grey)"
                            if others == 1 else None)
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
            ax.set_xlabel(xlabel)
            ax.set_ylabel("train loss (nats/byte, smoothed)")
            sec = ax.secondary_yaxis("right", functions=(lambda x: x / LN2, lambda x: x * LN2))
            sec.set_ylabel("bits/byte")
            if key == "tokens":
                ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: _count(v) if v else "0"))
                ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            elif ax.get_xscale() == "log":
                ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.grid(True, alpha=0.3)
            ax.set_title(f"{self.title()}: loss vs {'tokens' if key == 'tokens' else 'wall-clock'}"
                         " (legend: run, last-100 loss)")
            _legend(ax, n_leg)
            written.append(_save(fig, outdir / f"{name}.png"))
        # loss and throughput vs parameters, one line per model (mean over seeds, bars = sd)
        for name, getter, ylabel, logy in (
                ("loss_vs_params", lambda r: r.loss, f"{self.mlabel} ({self.munit})", False),
                ("tokens_per_s_vs_params", lambda r: r.get("tokens_per_s"), "throughput (tokens/s)", True)):
            fig, ax = plt.subplots(figsize=(8, 6))
            mcolors = _colors(len(self.models))
            drawn = 0
            all_x: list[float] = []
            for m, c in zip(self.models, mcolors):
                pts = defaultdict(list)
                for r in self.done:
                    if r.model == m and getter(r) is not None and r.params:
                        pts[(r.scale_n, r.config_key())].append(r)
                if not pts:
                    continue
                by_x = defaultdict(list)   # best config per scale (sweeps would otherwise zig-zag)
                for (_, _), rs in pts.items():
                    by_x[rs[0].scale_n].append(rs)
                xs, ys, es = [], [], []
                for sx in sorted(by_x):
                    rs = min(by_x[sx], key=lambda rs: statistics.fmean(r.loss for r in rs))
                    vals = [getter(r) for r in rs]
                    xs.append(statistics.fmean(r.params for r in rs))
                    ys.append(statistics.fmean(vals))
                    es.append(statistics.stdev(vals) if len(vals) > 1 else 0.0)
                ax.errorbar(xs, ys, yerr=es if any(es) else None, color=c, marker="o", ms=6, lw=1.6,
                            capsize=3, label=m)
                all_x += xs
                drawn += 1
            if not drawn:
                plt.close(fig)
                continue
            ax.set_xscale("log")
            px = sorted(all_x)
            ax.set_xlim(px[0] / 1.25, px[-1] * 1.25)
            ticks = sorted({(r.scale_n, r.scale) for r in self.done if r.scale_n})
            if 0 < len(ticks) <= 8:                    # tick at the study's scales
                ax.set_xticks([t for t, _ in ticks], [lab for _, lab in ticks])
            else:
                ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1, 2, 5)))
                ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: _count(v)))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            ax.set_xlabel("parameters (log scale)")
            ax.set_ylabel(ylabel)
            if logy:
                ax.set_yscale("log")
                ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1, 2, 3, 5)))
                ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: _count(v)))
                ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            if not logy and self.metric == "loss_last100":      # nats -> bits; val bpb is in bits already
                sec = ax.secondary_yaxis("right", functions=(lambda x: x / LN2, lambda x: x * LN2))
                sec.set_ylabel("bits/byte")
            ax.grid(True, which="both", alpha=0.3)
            ax.set_title(f"{self.title()}: {'loss' if not logy else 'tokens/s'} vs parameters"
                         " (best config per scale, mean ± sd over seeds)", fontsize=10)
            ax.margins(y=0.08)
            ax.legend(title="model", fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.13),
                      ncol=min(drawn, 6), frameon=False)
            written.append(_save(fig, outdir / f"{name}.png"))
        return written

    def title(self) -> str:
        return (self.state or {}).get("name") or self.root.resolve().name

    # -------------------------------------------------------------- outputs
    def csv_text(self) -> str:
        rank = {r.id: i for i, r in enumerate(self.ranked(), 1)}
        opt_keys = sorted({k for r in self.runs for k in r.options})
        tr_keys = sorted({k for r in self.runs for k in r.train if k not in ("data", "val_data")})
        cols = ["rank", "run", "status", "model", "scale", "params", "dim", "depth", "config"] + \
               [f"opt_{k}" for k in opt_keys] + [f"train_{k}" for k in tr_keys] + \
               ["budget", "loss_last100", "final_loss", "val_bpb", "tokens_per_s", "peak_memory_gb", "steps",
                "tokens", "wall_s", "mfu", "baseline", "gap_to_baseline", "gap_pct", "wave", "error"]
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(cols)
        for r in sorted(self.runs, key=lambda r: (rank.get(r.id, 10 ** 9), r.id)):
            g = self.gap(r)
            w.writerow([rank.get(r.id, ""), r.id, r.status, r.model, r.scale, r.params or "", r.dim or "",
                        r.depth or "", r.label()]
                       + [_csv(r.options.get(k)) for k in opt_keys] + [_csv(r.train.get(k)) for k in tr_keys]
                       + [r.budget] + [_csv(r.get(k)) for k in ("loss_last100", "final_loss", "val_bpb",
                                                                "tokens_per_s", "peak_memory_gb", "steps",
                                                                "tokens", "wall_s", "mfu")]
                       + [self.baseline or "", _csv(g[0] if g else None), _csv(g[1] if g else None),
                          r.wave or "", r.error or ""])
        return buf.getvalue()

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
            secs += [self.section_ranked(), self.section_scaling(), self.section_best_per_scale(),
                     self.section_by_option(), self.section_seeds(), self.section_iso()]
        else:
            secs.append("No run has completed yet.")
        secs.append(self.section_failed())
        if plot_paths:
            secs.append("## Plots\n\n" + "\n\n".join(
                f"![{p.stem.replace('_', ' ')}]({p.relative_to(self.root).as_posix()})" for p in plot_paths))
        return "\n\n".join(s for s in secs if s) + "\n"

    def write(self) -> dict:
        plot_paths = self.plots(self.root / "plots") if self.done else []
        md = self.markdown(plot_paths)
        atomic_write_text(self.root / "report.md", md)
        atomic_write_text(self.root / "results.csv", self.csv_text())
        return {"report": self.root / "report.md", "csv": self.root / "results.csv", "plots": plot_paths,
                "markdown": md}


def write_report(root, baseline: str | None = None, metric: str = "loss_last100") -> dict:
    return Report(root, baseline, metric).write()


# ---------------------------------------------------------------- small helpers

def _value(r: Run, k: str):
    if k == "dim":
        return r.dim
    if k == "depth":
        return r.depth
    if k in r.options:
        return r.active_options().get(k)
    return r.train.get(k)


def _sort_json(s: str):
    v = json.loads(s)
    if isinstance(v, bool):
        return (1, int(v), "")
    if isinstance(v, (int, float)):
        return (0, v, "")
    return (2, 0, str(v))


def _budget_sort(b: str):
    m = re.match(r"([0-9.]+) (min|steps)", b or "")
    return (m.group(2), float(m.group(1))) if m else ("~", 0.0)


def _csv(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def _dur(s) -> str:
    if s is None:
        return "-"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


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
    import matplotlib
    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _legend(ax, n: int) -> None:
    if n <= 8:
        ax.legend(fontsize=8, loc="best")
    else:                               # below the axes, two columns
        ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, frameon=False)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    import matplotlib.pyplot as plt
    plt.close(fig)
    import os
    os.replace(tmp, path)
    return path
