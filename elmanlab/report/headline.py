"""The report's headline: per scale group, the configurations ranked at equal tokens and at equal
training time, each pooled over its seeds (n, mean, sd), with a gap smaller than the seed spread
printed as a tie; and whether the two rankings agree. Runs pool as seeds of one configuration only
where their records say they ran the same kernel path with the same graph use.

The points are those of :meth:`~elmanlab.report.tables.Report.iso_tables`: the token count and the
training time every run of the group reached. Where every run stopped there (a time budget for
equal time, a step budget for equal tokens) the ranking uses the report's metric at the end
(``--metric``); elsewhere the training loss of the curves in metrics.jsonl at that point
(:func:`~elmanlab.report.fmt.loss_at`).

The spread of a configuration is its sd over seeds. A configuration run with one seed borrows the
pooled sd of the configurations that had several (of the same group, else of the study's other
groups), and the headline says so; without any, the spread is unknown and no gap is called a win.
Two neighbours tie when their gap is below the larger spread of the two.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from elmanlab.report.checks import scale_groups
from elmanlab.report.collect import shared_gpu
from elmanlab.report.fmt import WINDOW, count, dur, md_table, names, num

SAME_TOKENS = 1.005            # runs whose token counts differ less than this are at equal tokens
SAME_TIME = 1.02               # runs whose training times differ less than this are at equal time
WHAT = {"tokens": "equal tokens", "time": "equal time"}


@dataclass
class Config:
    """One configuration's values at a ranking's point, one per seed."""
    label: str
    runs: list[str]
    values: list[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def sd(self) -> float | None:
        return statistics.stdev(self.values) if self.n > 1 else None


@dataclass
class Ranking:
    """The configurations of one group at equal tokens (``what`` = "tokens") or equal time, best first."""
    what: str
    at: float
    final: bool                    # every run stopped at this point: the values are the report's metric
    quantity: str
    configs: list[Config]
    missing: list[str]             # runs with no value at the point
    pooled: float | None = None    # the seed sd that one-seed configurations borrow
    pooled_from: str = ""

    def spread(self, c: Config) -> tuple[float | None, bool]:
        """(the seed sd used for ``c``, whether it is borrowed)."""
        return (c.sd, False) if c.sd is not None else (self.pooled, self.pooled is not None)

    def pair(self, a: Config, b: Config) -> tuple[float | None, bool]:
        """The larger spread of two configurations (None: unknown), and whether it is borrowed."""
        s = [x for x in (self.spread(a), self.spread(b)) if x[0] is not None]
        return max(s, key=lambda x: x[0]) if s else (None, False)

    def ahead(self, a: Config, b: Config) -> bool:
        """Whether ``a`` is ahead of ``b`` by at least their seed spread (False when it is unknown)."""
        s, _ = self.pair(a, b)
        return s is not None and b.mean - a.mean >= s

    @property
    def spread_known(self) -> bool:
        return self.pooled is not None or any(c.sd is not None for c in self.configs)

    def gap_text(self, i: int) -> str:
        """How configuration ``i`` stands against the one above it."""
        if i == 0:
            return "-"
        a, b = self.configs[i - 1], self.configs[i]
        g = b.mean - a.mean
        s, borrowed = self.pair(a, b)
        if s is None:
            return f"+{g:.4f} (spread unknown)"
        sd = f"seed sd {s:.4f}" + (", borrowed" if borrowed else "")
        return f"tie (gap {g:.4f} < {sd})" if g < s else f"+{g:.4f} (≥ {sd})"

    def order(self) -> str:
        """The configurations in order: ``≈`` joins a tie, ``>`` a gap of at least the seed spread."""
        cs = self.configs
        if not self.spread_known:
            return ", ".join(f"{c.label} {c.mean:.4f}" for c in cs) + " (order of the means; spread unknown)"
        out = f"{cs[0].label} {cs[0].mean:.4f}"
        for a, b in zip(cs, cs[1:]):
            out += (" > " if self.ahead(a, b) else " ≈ ") + f"{b.label} {b.mean:.4f}"
        return out

    def best(self) -> list[Config]:
        """The first configuration and every one within the seed spread of it."""
        first = self.configs[0]
        return [first] + [c for c in self.configs[1:] if self.spread_known and not self.ahead(first, c)]

    def best_text(self) -> str:
        """The first configuration, and the ones within the seed spread of it."""
        best = self.best()
        first = f"{best[0].label} ({best[0].mean:.4f}, n = {best[0].n})"
        if not self.spread_known:
            return f"{first}, the lowest mean; with the seed spread unknown this is not a win."
        if len(best) > 1:
            return f"{first}, tied with {', '.join(c.label for c in best[1:])} (within the seed spread of it)."
        if len(self.configs) == 1:
            return f"{first}."
        return f"{first}, ahead of every other configuration by at least the seed spread."

    def title(self, group: str) -> str:
        if self.what == "tokens":
            return f"{group}, equal tokens: at {count(self.at)} tokens"
        return f"{group}, equal time: at {dur(self.at)} of training"

    def table(self) -> str:
        rows = [[i, c.label, c.n, num(c.mean), num(c.sd), names(c.runs, 4), self.gap_text(i - 1)]
                for i, c in enumerate(self.configs, 1)]
        return md_table(["rank", "configuration", "n", "mean", "seed sd", "runs", "against the one above"], rows)

    def spread_note(self) -> str:
        ones = [c.label for c in self.configs if c.n == 1]
        if not ones:
            return "Every configuration ran with several seeds: each gap is compared with the larger sd of the two."
        if self.pooled is None:
            return ("No configuration ran with more than one seed: the seed spread is unknown, so no gap here is "
                    "called a win.")
        return (f"Configurations with n = 1 borrow the pooled seed sd {self.pooled:.4f} measured for "
                f"{self.pooled_from}.")


def pooled_sd(configs: list[Config]) -> float | None:
    """The pooled sample sd of the configurations that have several values."""
    multi = [c for c in configs if c.n > 1]
    dof = sum(c.n - 1 for c in multi)
    if not dof:
        return None
    return math.sqrt(sum((c.n - 1) * c.sd ** 2 for c in multi) / dof)


def _what_ran(r) -> tuple:
    """What a run ran, as far as its record says: runs pool over seeds only when this matches."""
    return (r.kernel_path, r.cuda_graph)


def _labels(rs_by_key: dict) -> dict:
    """Pooling key -> a label unique within the group: model and configuration, plus what tells apart
    configurations with the same label (train settings, kernel path, graphs; else a run name)."""
    base = {k: f"{rs[0].model} {rs[0].label()}" for k, rs in rs_by_key.items()}
    out = dict(base)
    for lab in {v for v in base.values() if list(base.values()).count(v) > 1}:
        keys = [k for k, v in base.items() if v == lab]
        trs = [rs_by_key[k][0].train for k in keys]
        diff = sorted({s for t in trs for s in t if s != "seed" and len({str(x.get(s)) for x in trs}) > 1})
        paths, graphs = {k[1][0] for k in keys}, {k[1][1] for k in keys}
        for k, t in zip(keys, trs):
            extra = "".join(f" {s}={t.get(s)}" for s in diff)
            if len(paths) > 1:
                extra += f" [{k[1][0] or 'path not recorded'}]"
            if len(graphs) > 1:
                extra += " [graphs]" if k[1][1] else " [eager]" if k[1][1] is False else " [graphs not recorded]"
            out[k] = lab + (extra or f" ({rs_by_key[k][0].id})")
    return out


def _ranking(report, tab: dict, what: str, rs_by_key: dict, labels: dict) -> Ranking | None:
    rows = {x["run"]: x for x in tab["rows"]}
    if what == "tokens":
        at, ends, tol, key = tab["tokens"], [x["tokens"] for x in rows.values()], SAME_TOKENS, "loss_at_tokens"
    else:
        if tab["time"] is None or shared_gpu(r for rs in rs_by_key.values() for r in rs):
            return None             # training times measured under sharing rank the sharing, not the models
        at, ends, tol, key = tab["time"], [x["elapsed"] for x in rows.values()], SAME_TIME, "loss_at_time"
    final = max(ends) <= tol * min(ends)
    if final:
        quantity = (f"{report.mlabel} ({report.munit}) at the end of training: every run stopped at "
                    f"{'the same token count' if what == 'tokens' else 'the same training time'}")
    else:
        quantity = (f"training loss (nats/byte; the mean of the logged losses over the last {WINDOW} steps up to "
                    f"that point, from metrics.jsonl)" + (f"; {report.mlabel} is scored only at the end of training"
                                                         if report.metric != "loss_last100" else ""))
    configs, missing = [], []
    for k, rs in rs_by_key.items():
        vals, ids = [], []
        for r in rs:
            v = r.loss if final else rows[r.id][key]
            if v is None:
                missing.append(r.id)
            else:
                vals.append(v)
                ids.append(r.id)
        if vals:
            configs.append(Config(labels[k], ids, vals))
    configs.sort(key=lambda c: (c.mean, c.label))
    return Ranking(what, at, final, quantity, configs, missing) if configs else None


@dataclass
class GroupHeadline:
    """One scale group's two rankings (either may be None) and what the reader may conclude."""
    name: str
    runs: list[str]
    tokens: Ranking | None
    time: Ranking | None
    shared: bool = False            # runs of the group shared their GPU: no equal-time ranking

    def rankings(self) -> list[Ranking]:
        return [r for r in (self.tokens, self.time) if r is not None]

    def agreement(self) -> str:
        """Whether the equal-token and equal-time rankings agree."""
        if self.tokens is None or self.time is None:
            if self.shared:
                return ("Only the equal-token ranking: these runs shared their GPU with other jobs, so their training "
                        "times are not comparable.")
            return ("Only one ranking: the runs did not log their training time, or had no value at the point every "
                    "run reached.")
        t, e = self.tokens, self.time
        common = {c.label for c in t.configs} & {c.label for c in e.configs}
        ot = [c for c in t.configs if c.label in common]
        oe = [c for c in e.configs if c.label in common]
        if [c.label for c in ot] == [c.label for c in oe]:
            return "**The two rankings agree:** the same order at equal tokens and at equal time."
        bt, be = [c.label for c in t.best()], [c.label for c in e.best()]
        firsts = f"First at equal tokens: {' ≈ '.join(bt)}; at equal time: {' ≈ '.join(be)}."
        if not (t.spread_known and e.spread_known):
            return (f"**The two rankings differ:** {firsts} With the seed spread unknown, neither order is "
                    f"established.")
        pos = {c.label: c for c in oe}
        flips = [(a.label, b.label) for i, a in enumerate(ot) for b in ot[i + 1:]
                 if t.ahead(a, b) and e.ahead(pos[b.label], pos[a.label])]
        if flips:
            shown = "; ".join(f"{a} ahead of {b} at equal tokens, behind it at equal time" for a, b in flips[:4])
            more = f" (and {len(flips) - 4} more pairs)" if len(flips) > 4 else ""
            return (f"**The two rankings disagree** beyond the seed spread: {shown}{more}. {firsts}")
        return (f"**The two rankings differ only within the seed spread:** no pair that one ranking separates "
                f"by the seed spread is reversed in the other. {firsts}")


def build_headline(report) -> list[GroupHeadline]:
    """The headline of every scale group with at least two runs that logged a loss curve."""
    done = {r.id: r for r in report.done}
    out = []
    for tab in report.iso_tables():
        rs_by_key: dict = {}
        for x in tab["rows"]:
            r = done[x["run"]]
            rs_by_key.setdefault((r.config_key(), _what_ran(r)), []).append(r)
        labels = _labels(rs_by_key)
        out.append(GroupHeadline(tab["group"][1], [x["run"] for x in tab["rows"]],
                                 _ranking(report, tab, "tokens", rs_by_key, labels),
                                 _ranking(report, tab, "time", rs_by_key, labels),
                                 bool(shared_gpu(r for rs in rs_by_key.values() for r in rs))))
    for what in WHAT:              # the spread one-seed configurations borrow: this group's, else the others'
        for g in out:
            rk = getattr(g, what)
            if rk is None:
                continue
            own = [c for c in rk.configs if c.n > 1]
            if own:
                rk.pooled = pooled_sd(rk.configs)
                rk.pooled_from = (f"{', '.join(c.label for c in own)} (n = {', '.join(str(c.n) for c in own)}) "
                                  f"at this point")
                continue
            others = [(h.name, c) for h in out if h is not g and getattr(h, what) is not None
                      for c in getattr(h, what).configs if c.n > 1]
            if others:
                rk.pooled = pooled_sd([c for _, c in others])
                rk.pooled_from = (f"{', '.join(f'{c.label} at {n}' for n, c in others)} (at that group's "
                                  f"{WHAT[what]} point: this group has no repeated configuration)")
    return out


def section_headline(report, findings: list, notes: list[str]) -> str:
    """The headline section of report.md: what ran, then each group's two rankings."""
    heads = build_headline(report)
    out = ["## Headline"]
    if findings:
        groups = scale_groups(report.done)
        out.append("**Not like-for-like.** Runs of this study were not made the same way; the rankings that "
                   "mix them are marked below and in the ranked table (†):\n\n"
                   + "\n".join(f"- {f.text}" + ("" if any(f.mixes(ids) for ids in groups) else
                                               " They are at different scales: no ranking mixes them, the "
                                               "scaling tables do.") for f in findings))
    shared = shared_gpu(report.done)
    if shared:
        notes = list(notes) + [
            f"{len(shared)} run(s) trained with other jobs on the same GPU (`elmanlab study --jobs-per-gpu`): "
            f"their losses at equal tokens are unaffected, but their tokens/s and training times measure the "
            f"sharing, so there is no equal-time ranking here; time each configuration alone "
            f"(benchmarks/throughput.py) for speed."]
    if notes:
        out.append("\n".join(f"- {n}" for n in notes))
    if not heads:
        out.append("No scale group has two runs with loss curves (metrics.jsonl): nothing to rank at equal tokens "
                   "or equal time.")
    lead = ("Each configuration is pooled over its seeds: n runs, their mean and sd. A gap smaller than the seed "
            "spread (the larger sd of the two configurations) is a tie. Lower is better. **Best** compares every "
            "configuration with the first; **Order** and the table compare neighbours (≈: a tie, >: a gap of at "
            "least the seed spread), so a chain of ties need not be one tie.")
    if heads:
        out.append(lead)
    for g in heads:
        if len({c.label for rk in g.rankings() for c in rk.configs}) < 2:
            out.append(f"### {g.name}\n\nOne configuration ({names(g.runs)}): nothing to rank.")
            continue
        for rk in g.rankings():
            bad = [f.short for f in findings if rk.what in f.affects and f.mixes(g.runs)]
            head = f"### {rk.title(g.name)}" + (f" — not like-for-like ({'; '.join(bad)})" if bad else "")
            lines = [head, "", f"Ranked by {rk.quantity}.", "", f"**Best:** {rk.best_text()}", "",
                     f"**Order:** {rk.order()}", "", rk.table(), "", rk.spread_note()]
            if rk.missing:
                lines.append(f"No value at this point (no step logged by then): {names(rk.missing)}.")
            out.append("\n".join(lines))
        out.append(g.agreement())
    return "\n\n".join(out)
