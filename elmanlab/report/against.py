"""The runs held against a published table (``elmanlab report DIR --against TABLE.csv``): each row matched
to the lab's configurations of its model, dim, depth, expansion (and d_state where given), pooled over
seeds by :meth:`~elmanlab.report.collect.Run.config_key`; a configuration with more options (init, a
tied head, LayerNorm) is its own line. The table ran on another corpus, so gaps to the baseline row
(the lab's: its default-option configuration, or for a line with options the baseline-row line of its
own wave that has options too), the order and tokens/s and memory ratios compare. A difference of the
two gaps is a disagreement only beyond the seed spread (the largest sd of a configuration with n >= 2).
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from elmanlab.errors import ElmanlabError
from elmanlab.report.collect import Run, collect_runs, fmt_num, shared_gpu
from elmanlab.report.fmt import count, csv_cell, md_table, mean_sd, num, thousands

REQUIRED = ("model", "dim", "depth", "loss")
OPTIONAL = ("label", "expansion", "d_state", "params", "tok_s", "memory_gb")
LOSS = "loss_last100"                  # the reference's measure, whatever the report ranks by
WAITING = ("pending", "interrupted", "running")


@dataclass
class RefRow:
    label: str
    model: str
    dim: int
    depth: int
    expansion: float
    d_state: int | None
    params: int | None
    loss: float
    decimals: int                      # of the loss as the table writes it
    tok_s: float | None
    memory_gb: float | None


def load_table(path) -> list[RefRow]:
    """The rows of a reference table (CSV; lines starting with # are comments)."""
    p = Path(path)
    fix = f"give a CSV with the columns {', '.join(REQUIRED)} (and optionally {', '.join(OPTIONAL)}), " \
          f"like docs/reference/seeds-400m.csv"
    if not p.is_file():
        raise ElmanlabError(f"--against {p}: no such file; {fix}")
    try:
        lines = [ln for ln in p.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    except (OSError, UnicodeDecodeError) as e:
        raise ElmanlabError(f"--against {p}: cannot read it ({e}); {fix}") from None
    reader = csv.reader(lines)
    head = [h.strip().lower() for h in next(reader, [])]
    missing = [c for c in REQUIRED if c not in head]
    if missing:
        raise ElmanlabError(f"--against {p}: no column {', '.join(missing)} in its header "
                            f"({','.join(head) or 'none'}); {fix}")
    from elmanlab.layers import get_family
    from elmanlab.sizing import parse_count
    rows = []
    for i, cells in enumerate(reader, 1):
        if len(cells) != len(head):
            raise ElmanlabError(f"--against {p}: data row {i} has {len(cells)} cells, the header {len(head)}; {fix}")
        d = {h: c.strip() for h, c in zip(head, cells)}

        def val(col, conv, default=None):
            if not d.get(col):
                if col in REQUIRED:
                    raise ElmanlabError(f"--against {p}: data row {i} has no {col}; {fix}")
                return default
            try:
                v = conv(d[col])
            except (ValueError, ElmanlabError):
                v = None
            if v is None or isinstance(v, float) and (not math.isfinite(v) or v < 0):
                raise ElmanlabError(f"--against {p}: data row {i}: {col} {d[col]!r} is not a number; {fix}")
            return v
        try:
            model = get_family(d["model"]).name
        except ElmanlabError as e:
            raise ElmanlabError(f"--against {p}: data row {i}: {e}") from None
        dim, depth = val("dim", int), val("depth", int)
        rows.append(RefRow(d.get("label") or f"{model} {dim}x{depth}", model, dim, depth,
                           val("expansion", float, 1.0), val("d_state", int), val("params", parse_count),
                           val("loss", float), len(d["loss"].partition(".")[2]), val("tok_s", float),
                           val("memory_gb", float)))
    if not rows:
        raise ElmanlabError(f"--against {p}: the table has no rows; {fix}")
    return rows


def _option(r, key):
    """A family option as the run ran it: recorded, else the family's default (None: no such option)."""
    if key in r.options:
        return r.options[key]
    from elmanlab.config import option_fields
    try:
        f = option_fields(r.model).get(key)
    except ElmanlabError:
        return None
    return f.default if f is not None else None


def matches(row: RefRow, r) -> bool:
    """Whether run ``r`` is of row ``row``'s model, dim, depth, expansion (and d_state when given)."""
    if (r.model, r.dim, r.depth) != (row.model, row.dim, row.depth):
        return False
    exp = _option(r, "expansion")
    if abs(float(1.0 if exp is None else exp) - row.expansion) > 1e-9:
        return False
    return row.d_state is None or _option(r, "d_state") == row.d_state


# train settings that are the reference's choices (docs/reference/ekg-elman-differences.md) and their
# defaults: a run with another value is a configuration of its own line, like a non-default option
REFERENCE_TRAIN_CHOICES = {"precision": "autocast", "weight_decay_on": "matrices"}


def extras(row: RefRow, r) -> str:
    """The run's options, wrapper settings and reference-choice train settings beyond its row's
    defaults ("" for none)."""
    fixed = {"expansion"} | ({"d_state"} if row.d_state is not None else set())
    parts = [k if v is True else f"no {k}" if v is False else f"{k}={fmt_num(v)}"
             for k, v in sorted(r.nondefault_options().items()) if k not in fixed]
    parts += [f"{k}={r.train[k]}" for k, default in REFERENCE_TRAIN_CHOICES.items()
              if r.train.get(k, default) != default]
    w = r.nondefault_wrapper()
    return " ".join(parts + (["tied"] if w.get("tied") else []) + ([f"{w['norm']}norm"] if "norm" in w else [])
                    + ([f"mlp={fmt_num(w['mlp'])}"] if "mlp" in w else []))


@dataclass
class Line:
    """One lab configuration of a row (or the row alone, not run), with its seeds."""
    row: RefRow
    extras: str
    runs: list                        # completed, with a last-100 loss
    failed: list                      # the rest: failed, pending, unfinished
    label: str = ""
    speed: list = field(default_factory=list)
    base: Line | None = None

    def __post_init__(self):
        self.n = len(self.runs)
        self.mean, self.sd = self.stat(LOSS)

    def vals(self, key, runs=None) -> list[float]:
        return [r.get(key) for r in (self.runs if runs is None else runs) if r.get(key) is not None]

    def stat(self, key, runs=None) -> tuple:
        v = self.vals(key, runs)
        return mean_sd(v) if v else (None, None)

    @property
    def wave(self) -> str | None:
        w = {r.wave for r in self.runs}
        return w.pop() if len(w) == 1 else None

    def status(self) -> str:
        if self.n:
            return "ran" + (f" ({len(self.failed)} more failed or not run)" if self.failed else "")
        bad = [r for r in self.failed if r.status not in WAITING]
        return f"failed: {(bad[0].error or bad[0].status)[:80]}" if bad else "not run"

    def speed_of(self) -> tuple:
        """(tokens/s, peak GB, where from, shared GPU): the speed study's runs, else the loss runs."""
        src = self.speed or self.runs
        shared = bool(shared_gpu(src))
        where = ((self.speed[0].summary.get("speed_source") or "speed study") if self.speed
                 else "loss runs" if src else "-") + (", shared GPU" if shared else "")
        return self.stat("tokens_per_s", src)[0], self.stat("peak_memory_gb", src)[0], where, shared


def _ratio(a, b):
    return a / b if a is not None and b else None


def _as_list(speed) -> list:
    return [speed] if isinstance(speed, (str, Path)) else list(speed)


def speed_runs(speed, loss_runs) -> list:
    """The runs that time the table's configurations alone: from each of ``speed`` (a path or several),
    a speed study's --out folder (studies/reference-400m-speed.yaml) or the JSON of
    ``benchmarks/throughput.py`` (its rows of the loss runs' batch and sequence length, and of their
    step mode, graph or eager, where the loss runs record it)."""
    out, gpus = [], {}
    for src in _as_list(speed):
        sp = Path(src)
        if sp.is_file() and sp.suffix == ".json":
            rs, gpu = _throughput_runs(sp, loss_runs)
            gpus[sp.name] = gpu
            out += rs
            continue
        if not sp.is_dir():
            raise ElmanlabError(f"--speed {sp}: not a folder or a .json file; give the --out folder of the speed study "
                                f"(studies/reference-400m-speed.yaml), whose runs each timed one configuration alone, "
                                f"or the JSON of benchmarks/throughput.py")
        found, _ = collect_runs(sp)
        if not found:
            raise ElmanlabError(f"--speed {sp} holds no runs (no summary.json and no study.json); give the speed "
                                f"study's --out folder")
        out += [r for r in found if r.status == "completed" and r.get("tokens_per_s") is not None]
    if len(set(gpus.values())) > 1:
        raise ElmanlabError("--speed: the throughput files ran on different GPUs ("
                            + ", ".join(f"{k}: {v}" for k, v in gpus.items())
                            + "); ratios need one GPU: give the files of one")
    return out


def _row_fast(row: dict) -> bool | None:
    """Whether every op of a throughput row ran its fast path (None where the row does not say)."""
    imp = row.get("implementations")
    vals = [v.get("fast") for v in imp.values() if isinstance(v, dict)] if isinstance(imp, dict) else []
    return all(vals) if vals and all(isinstance(v, bool) for v in vals) else None


def _throughput_runs(path: Path, loss_runs) -> tuple[list, str]:
    """The rows of a benchmarks/throughput.py JSON as speed runs, and the GPU they ran on."""
    fix = "give the JSON that benchmarks/throughput.py --out wrote"
    try:
        d = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ElmanlabError(f"--speed {path}: cannot read it as JSON ({e}); {fix}") from None
    if not isinstance(d, dict) or not isinstance(d.get("rows"), list):
        raise ElmanlabError(f"--speed {path}: no list of rows in it, so not a throughput benchmark's JSON; {fix}")
    gpu = ((d.get("machine") or {}).get("gpu") or {}).get("name") or "an unnamed GPU"
    # the loss runs' shape of a step: only speed rows of the same batch, sequence length and mode compare
    shapes = {(r.train.get("batch_size"), r.train.get("seq_len")) for r in loss_runs if r.status == "completed"}
    graphs = {r.cuda_graph for r in loss_runs if r.status == "completed" and r.cuda_graph is not None}
    graph = graphs.pop() if len(graphs) == 1 else None
    out, kept = [], []
    for i, row in enumerate(d["rows"]):
        if not isinstance(row, dict) or row.get("status", "ok") != "ok" or not row.get("tokens_per_s"):
            continue
        if shapes and (row.get("batch"), row.get("seq_len", d.get("seq_len"))) not in shapes:
            continue
        if graph is not None and row.get("mode") in ("graph", "eager") and (row["mode"] == "graph") != graph:
            continue
        try:
            model, dim, depth = str(row["model"]), int(row["dim"]), int(row["depth"])
        except (KeyError, TypeError, ValueError):
            raise ElmanlabError(f"--speed {path}: row {i} has no model, dim and depth; {fix}") from None
        kept.append(row)
        out.append(Run(id=f"{path.stem}:{model}:{row.get('target', f'{dim}x{depth}')}", path=path, status="completed",
                       model=model, params=row.get("params"), dim=dim, depth=depth,
                       options=dict(row.get("options") or {}),
                       summary={"tokens_per_s": row["tokens_per_s"], "peak_memory_gb": row.get("peak_memory_gb"),
                                "kernel": {"path": row.get("ran"), "fast": _row_fast(row)},
                                "cuda_graph": row.get("cuda_graph"),
                                "speed_source": f"{path.name} ({gpu})", "gpu": gpu}))
    if graph is None:
        modes: dict = {}
        for row, r in zip(kept, out):
            modes.setdefault(r.config_key(), set()).add(row.get("mode"))
        both = [k for k, m in modes.items() if len(m) > 1]
        if both:
            raise ElmanlabError(f"--speed {path}: {len(both)} configuration(s) timed in both step modes (graph and "
                                f"eager) and the loss runs do not record theirs; give a file of one mode "
                                f"(benchmarks/throughput.py --mode graph or eager)")
    if not out:
        raise ElmanlabError(f"--speed {path}: no row of the loss runs' batch, sequence length and step mode "
                            f"{sorted(shapes, key=str)}; {fix} with --batch and --mode of the runs")
    return out, gpu


class Against:
    """The lines of ``table`` (a CSV path) for the runs of ``report``; ``speed``: a speed study's folder."""

    def __init__(self, report, table, speed=None):
        self.name = Path(table).name
        self.rows = load_table(table)
        srs = speed_runs(speed, report.runs) if speed else []
        groups: dict = {}
        for r in report.runs:
            for i, row in enumerate(self.rows):
                if matches(row, r):
                    groups.setdefault((i, extras(row, r), r.config_key()), []).append(r)
        self.lines = []
        for i, row in enumerate(self.rows):
            mine = [(k, rs) for k, rs in groups.items() if k[0] == i] or [((i, "", ""), [])]
            for (_, ex, _), rs in sorted(mine, key=lambda x: (x[0][1] != "", x[0][1], x[0][2])):
                ok = [r for r in rs if r.status == "completed" and r.get(LOSS) is not None]
                line = Line(row, ex, ok, [r for r in rs if r not in ok], row.label + (f" + {ex}" if ex else ""))
                line.speed = [r for r in srs if matches(row, r) and extras(row, r) == ex]
                self.lines.append(line)
        self._disambiguate()
        self.unmatched = sorted({f"{r.model} {r.label()}" for r in report.runs if r.status == "completed"
                                 and not any(matches(row, r) for row in self.rows)})
        bm = report.baseline if report.baseline in report.models else \
            next((r.model for r in report.runs if r.id == report.baseline), None)
        self.base_row = next((row for row in self.rows if row.model == bm), None)
        cands = [ln for ln in self.lines if ln.row is self.base_row and ln.n]
        defaults = [ln for ln in cands if not ln.extras]
        self.base = max(defaults, key=lambda ln: ln.n) if defaults else None
        for ln in self.lines:
            same = [b for b in cands if b.extras and ln.extras and ln.wave and b.wave == ln.wave]
            ln.base = same[0] if same else self.base
        # speed ratios need only the baseline row's speed: its default-option line, run or only timed
        self.speed_base = self.base or next((ln for ln in self.lines if ln.row is self.base_row and not ln.extras
                                             and ln.speed), None)
        multi = [ln for ln in self.lines if ln.n >= 2]
        self.spread = max(ln.sd for ln in multi) if multi else None
        self.spread_from = max(multi, key=lambda ln: ln.sd).label if multi else None
        self.ranked = sorted([ln for ln in self.lines if ln.n and not ln.extras], key=lambda ln: (ln.mean, ln.label))

    def _disambiguate(self) -> None:
        """Lines of one row with the same options (other train settings): their differing settings."""
        new = {}
        first = lambda o: (o.runs or o.failed)[0]  # noqa: E731  (a line not run yet: its pending runs' settings)
        for ln in self.lines:
            same = [o for o in self.lines if o.label == ln.label and (o.runs or o.failed)]
            if len(same) > 1 and (ln.runs or ln.failed):
                trs = [first(o).full_train() for o in same]
                diff = sorted({k for t in trs for k in t if k != "seed" and len({str(x.get(k)) for x in trs}) > 1})
                mine = first(ln).nondefault_train()
                # only what this line sets away from the default (the default line keeps its plain label)
                own = [f"{k}={fmt_num(mine[k])}" for k in diff if k in mine]
                if own:
                    new[id(ln)] = ln.label + " (" + " ".join(own) + ")"
        for ln in self.lines:
            ln.label = new.get(id(ln), ln.label)

    # ------------------------------------------------------------ per line
    def gaps(self, ln: Line) -> tuple:
        """(the lab's gap to its baseline line, the table's gap to its baseline row, their difference)."""
        g = ln.mean - ln.base.mean if ln.n and ln.base is not None else None
        rg = ln.row.loss - self.base_row.loss if self.base_row is not None else None
        return g, rg, (g - rg if g is not None and rg is not None else None)

    def verdict(self, ln: Line) -> str:
        if not ln.n:
            return ln.status().partition(":")[0]
        if ln.base is None or self.base_row is None:
            return "no lab baseline"
        if ln is ln.base:
            return "baseline"
        if self.spread is None:
            return "spread unmeasured"
        return "disagrees" if abs(self.gaps(ln)[2]) > self.spread else "agrees"

    def ranks(self, ln: Line) -> tuple:
        """(lab rank, reference rank) by loss among the default-option lines run; (None, None) elsewhere."""
        if ln not in self.ranked:
            return None, None
        return self.ranked.index(ln) + 1, 1 + sum(1 for o in self.ranked if o.row.loss < ln.row.loss)

    def sentence(self, ln: Line) -> str:
        (g, rg, d), s, nd = self.gaps(ln), self.spread, ln.row.decimals
        sd = f", sd {ln.sd:.4f}" if ln.sd is not None else ""
        out = f"gap {ln.label} to {ln.base.label}: lab {g:+.4f} (n={ln.n}{sd}) vs reference {rg:+.{nd}f}: "
        v = self.verdict(ln)
        if v == "spread unmeasured":
            return out + f"differs by {d:+.4f}; spread unmeasured (no configuration ran two seeds)."
        if v == "agrees":
            return out + f"agrees (difference {d:+.4f} inside the seed spread {s:.4f})."
        tol = 10.0 ** -min(nd, self.base_row.decimals)
        return out + f"disagrees by {d:+.4f} (> seed spread {s:.4f})" + (
            f", though within the {tol:g} rounding of the reference's losses." if abs(d) <= tol else ".")

    # ------------------------------------------------------------ outputs
    def findings(self) -> list[str]:
        out = [self.sentence(ln) for ln in sorted(self.lines, key=lambda ln: ln.extras != "")
               if ln.n and ln.base is not None and ln is not ln.base and self.base_row is not None]
        if self.base_row is None:
            out.append("No row of the table is the report's baseline model: no gaps (pass --baseline).")
        elif self.base is None:
            out.append(f"The baseline row {self.base_row.label} has no completed lab run with default options: no gaps.")
        if len(self.ranked) > 1:
            moved = [f"{ln.label} (lab {a}, reference {b})" for ln in self.ranked for a, b in [self.ranks(ln)] if a != b]
            out.append(f"Order by loss over the {len(self.ranked)} rows run: "
                       + (f"differs from the reference's at {', '.join(moved)}." if moved
                          else "the same as the reference's."))
        if self.spread is not None:
            out.append(f"Seed spread: {self.spread:.4f}, the largest sd of a configuration run with two seeds or "
                       f"more ({self.spread_from}).")
        for what, pick in (("Not run yet", lambda ln: ln.status() == "not run"),
                           ("Failed", lambda ln: ln.status().startswith("failed"))):
            names = [ln.label for ln in self.lines if not ln.n and pick(ln)]
            if names:
                out.append(f"{what}: {', '.join(names)}.")
        if any(ln.speed_of()[3] for ln in self.lines):
            out.append("Tokens/s of runs that shared their GPU measure the sharing, not the model: no ratio is "
                       "given for them; time them alone (--speed with the speed study's folder or a "
                       "benchmarks/throughput.py JSON).")
        if self.unmatched:
            out.append(f"Lab configurations in no row of the table: {', '.join(self.unmatched)}.")
        return out

    def _cells(self, ln: Line) -> dict:
        tok, mem, where, shared = ln.speed_of()
        sb = ln.base if ln.base is not None else self.speed_base
        b = sb.speed_of() if sb is not None else (None, None, "", True)
        br = self.base_row
        a, rr = self.ranks(ln)
        g, rg, d = self.gaps(ln)
        paths = sorted({r.kernel_path for r in ln.runs or ln.speed if r.kernel_path})
        fast = {r.kernel_fast for r in ln.runs or ln.speed}
        return {"row": ln.row.label, "line": ln.label, "options": ln.extras, "status": ln.status(), "n": ln.n,
                "seeds": " ".join(str(r.seed) for r in ln.runs), "runs": " ".join(r.id for r in ln.runs),
                "params": ln.runs[0].params if ln.runs else None, "ref_params": ln.row.params,
                "loss": ln.mean, "loss_sd": ln.sd, "val_bpb": ln.stat("val_bpb")[0], "val_bpb_sd": ln.stat("val_bpb")[1],
                "ref_loss": ln.row.loss, "gap_to": ln.base.label if ln.base and ln.n else "", "gap": g,
                "ref_gap": rg, "gap_diff": d, "spread": self.spread,
                "verdict": self.verdict(ln), "rank": a, "ref_rank": rr,
                "tok_s": tok, "tok_s_ratio": None if shared or b[3] else _ratio(tok, b[0]),
                "ref_tok_s": ln.row.tok_s, "ref_tok_s_ratio": _ratio(ln.row.tok_s, br and br.tok_s),
                "memory_gb": mem, "memory_ratio": _ratio(mem, b[1]), "ref_memory_gb": ln.row.memory_gb,
                "ref_memory_ratio": _ratio(ln.row.memory_gb, br and br.memory_gb), "speed_from": where,
                "kernel_path": "; ".join(paths), "kernel_fast": None if None in fast or not fast else all(fast)}

    def csv_text(self) -> str:
        cells = [self._cells(ln) for ln in self.lines]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(cells[0]), lineterminator="\n")
        w.writeheader()
        w.writerows({k: csv_cell(v) for k, v in c.items()} for c in cells)
        return buf.getvalue()

    def section(self) -> str:
        sd = lambda v, s: "-" if v is None else f"{v:.4f}" + (f" ± {s:.4f}" if s is not None else "")  # noqa: E731
        x = lambda v: "-" if v is None else f"{v:.2f}x"  # noqa: E731
        sg = lambda v, nd=4: "-" if v is None else f"{v:+.{nd}f}"  # noqa: E731
        loss_rows, speed_rows = [], []
        for ln in self.lines:
            c, nd = self._cells(ln), ln.row.decimals
            loss_rows.append([c["row"], c["line"], c["status"], c["n"], sd(c["loss"], c["loss_sd"]),
                              sd(c["val_bpb"], c["val_bpb_sd"]), c["gap_to"] or "-", sg(c["gap"]),
                              f"{ln.row.loss:.{nd}f}", sg(c["ref_gap"], nd), sg(c["gap_diff"]), c["verdict"],
                              f"{c['rank'] or '-'} / {c['ref_rank'] or '-'}", f"{count(c['params'])} / {count(c['ref_params'])}"])
            speed_rows.append([c["row"], c["line"], thousands(c["tok_s"]), x(c["tok_s_ratio"]), thousands(c["ref_tok_s"]),
                               x(c["ref_tok_s_ratio"]), num(c["memory_gb"], 1), x(c["memory_ratio"]),
                               num(c["ref_memory_gb"], 1), x(c["ref_memory_ratio"]), c["speed_from"],
                               c["kernel_path"] or "-", {True: "yes", False: "no"}.get(c["kernel_fast"], "-")])
        spread = (f"the seed spread is {self.spread:.4f} (the largest sd of a configuration with two seeds or more)"
                  if self.spread is not None else "the seed spread is unmeasured (no configuration ran two seeds)")
        intro = (f"Each row of `{self.name}` beside the lab's configurations of the same model, dim, depth, expansion "
                 f"(and d_state where the row gives it), pooled over seeds; a configuration with other options is its "
                 f"own line. Loss = last-100 training loss (nats/byte), the table's measure, whatever the report ranks "
                 f"by. The table ran on another corpus: compare the gaps to the baseline "
                 f"({self.base.label if self.base else 'none run'}), the order and the ratios. A difference of the two "
                 f"gaps larger than the seed spread is a disagreement; {spread}. Ranks are by loss among the "
                 f"default-option lines run, for the lab and for the table over the same rows.")
        return (f"## Against {self.name}\n\n{intro}\n\n" + "\n".join(f"- {f}" for f in self.findings()) + "\n\n"
                + md_table(["row", "lab configuration", "status", "n", "loss (mean ± sd)", "val bpb", "gap to",
                            "lab gap", "ref loss", "ref gap", "difference", "verdict", "rank lab / ref",
                            "params lab / ref"], loss_rows)
                + "\n\nTokens/s and peak memory (GB) as ratios to the baseline line beside the table's ratios; from the "
                  "configurations timed alone (--speed: a speed study's runs or a throughput benchmark's rows, named "
                  "in \"speed from\") where given, else from the loss runs (no tokens/s ratio where they shared their "
                  "GPU). Kernel = the path the lab's loss runs recorded, else the timed one's.\n\n"
                + md_table(["row", "lab configuration", "tok/s", "x baseline", "ref tok/s", "ref x baseline",
                            "peak GB", "x baseline", "ref GB", "ref x baseline", "speed from", "kernel", "fast"],
                           speed_rows))

    def short(self) -> str:
        return f"Against {self.name}:\n" + "\n".join(f"- {f}" for f in self.findings())
