"""The report's views within one scale, a mixin of :class:`elmanlab.report.tables.Report`: the
settings a study swept (:meth:`Views.swept_keys`) with the best run by each value of each
(``## Best ... by swept setting``), and each run's loss at the token count and the training time the
shortest run of its scale reached (:meth:`Views.iso_tables`, ``## Equal tokens and equal time``; the
headline's rankings read these points too).

Needs no matplotlib; reads the runs of :mod:`elmanlab.report.collect` through the Report's ``done``,
``group_key``, ``group_name`` and ``mshort``.
"""
from __future__ import annotations

import json
from collections import defaultdict

from elmanlab.config import BUDGET_SETTINGS
from elmanlab.report.collect import IDENTITY, Run, fmt_num, shared_gpu
from elmanlab.report.fmt import WINDOW, count, dur, loss_at, md_table, mean_pm_sd, num

SWEEP_ORDER = ("dim", "depth", "n_state", "n_heads", "expansion", "balance")
SWEEPABLE = IDENTITY - {"seed"} - set(BUDGET_SETTINGS)     # train settings a study may sweep


class Views:
    """Report's sections on swept settings and on equal tokens / equal time (see the module)."""

    def swept_keys(self) -> list[tuple[str, str, tuple]]:
        """(key, model, group) for every setting that takes several values within one model and group."""
        found = []
        groups = defaultdict(list)
        for r in self.done:
            groups[(r.model, self.group_key(r))].append(r)
        for (model, gk), rs in groups.items():
            keys = ["dim", "depth"] + sorted({k for r in rs for k in r.active_options()}) + \
                sorted({k for r in rs for k in r.train if k in SWEEPABLE})
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
                    rows.append([m, self.group_name(gk), fmt_num(json.loads(vj)) if vj != "null" else "-",
                                 num(best.loss), best.id, mean_pm_sd([r.loss for r in sel]), len(sel)])
            out.append(f"### Best {self.mshort} by {k}\n\n" + md_table(
                ["model", "scale", k, f"best {self.mshort}", "best run", "mean ± sd", "runs"], rows))
        return f"## Best {self.mshort} by swept setting\n\n" + "\n\n".join(out)

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
                           f"({count(min(toks))}): the ranking above is the equal-token comparison.")
            else:
                out.append(self._iso_table(tab, gname, "tokens"))
            shared = shared_gpu(r for r in self.done if r.id in {x["run"] for x in tab["rows"]})
            if tab["time"] is not None and shared:
                out.append(f"### Equal time: {gname}\n\nNot compared: {len(shared)} of these runs shared their GPU "
                           f"with other jobs (`--jobs-per-gpu`), so their training times measure the sharing.")
            elif tab["time"] is not None and max(times) <= 1.02 * min(times):
                out.append(f"### Equal time: {gname}\n\nAll runs trained for the same time "
                           f"({dur(min(times))}): the ranking above is the equal-time comparison.")
            elif tab["time"] is not None:
                out.append(self._iso_table(tab, gname, "time"))
        return "\n\n".join(out)

    @staticmethod
    def _iso_table(tab, gname, what: str) -> str:
        """The equal-tokens (``what`` = "tokens") or equal-time ("time") ranking of one group."""
        key = "loss_at_tokens" if what == "tokens" else "loss_at_time"
        rows = sorted(tab["rows"], key=lambda x: (x[key] is None, x[key] or 0))
        if what == "tokens":
            title = (f"### Equal tokens: {gname}, at {count(tab['tokens'])} tokens "
                     f"(reached by all; fewest: {tab['shortest_tokens']})")
            last, amount = "tokens", lambda x: count(x["tokens"])
        else:
            title = (f"### Equal time: {gname}, at {dur(tab['time'])} of training "
                     f"(reached by all; shortest: {tab['shortest_time']})")
            last, amount = "run time", lambda x: dur(x["elapsed"])
        return title + "\n\n" + md_table(
            ["rank", "run", "model", "params", f"loss at equal {what}", "final loss", last],
            [[i, x["run"], x["model"], count(x["params"]), num(x[key]), num(x["final"]), amount(x)]
             for i, x in enumerate(rows, 1)])


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
