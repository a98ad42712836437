"""The scaling fits of a study's runs (``elmanlab report --fit``): which runs are fitted together
(one token count, one family = a model with one configuration), the fits against parameters and
against training FLOPs, the crossings and predictions of every pair, and the report's section and
fit.json. The mathematics (the fit, the bootstrap, a crossing, a prediction) is :mod:`elmanlab.report.fit`.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from elmanlab.errors import ElmanlabError
from elmanlab.report.fit import (ALPHA_MAX, ALPHA_MIN, BOOTSTRAP, COVERAGE, COVERAGE_TEXT, DECIDE, INSIDE, LEVEL, MIN_SIZES, SAME_TOKENS, SEARCH,
                                 SEED, SIZE_KEYS, WIDE, XKINDS, Crossing, FamilyFit, Point, Prediction, crossing,
                                 fit_family, pooled_sd, predict)
from elmanlab.report.fmt import count, md_table, names


# ---------------------------------------------------------------- a study

@dataclass
class FitSet:
    """The fits of one token count against one x (``xkind``: "params" or "flops")."""
    xkind: str
    tokens: float
    fits: list[FamilyFit]
    crossings: list[Crossing]
    predictions: list[Prediction]

    @property
    def fitted(self) -> list[FamilyFit]:
        return [f for f in self.fits if not f.refused]

    def to_json(self) -> dict:
        return {"x": self.xkind, "families": [f.to_json() for f in self.fits],
                "crossings": [c.to_json() for c in self.crossings],
                "predictions": [p.to_json() for p in self.predictions]}


@dataclass
class FitGroup:
    tokens: float
    runs: list[str]
    params: FitSet
    flops: FitSet
    flops_estimated: list[str]       # runs whose record has no flops_per_token: 6 x params x tokens
    several_configs: list[str]       # notes: families with several configurations at one size
    noise_sd: float | None = None    # the seed noise pooled over every family's repeated sizes (None: no repeats)
    noise_dof: int = 0               # its degrees of freedom
    noise_sizes: int = 0             # the (family, size) pairs with repeated runs it comes from
    settings: dict = field(default_factory=dict)   # family label -> what defines it beyond its model (family_setting)


@dataclass
class FitReport:
    """Every fit of a study: per token count, L(N) and L(C); what was left out and why."""
    metric: str
    label: str
    unit: str
    B: int
    seed: int
    predict: list[int]
    baseline: str | None
    groups: list[FitGroup]
    left_out: list[tuple[str, str]]           # (run, why)
    not_fitted: list[str]                    # lines: token counts or studies that could not be fitted
    at_step: int | None = None               # the runs' values at this step, not at their end

    def any_fitted(self) -> bool:
        return any(g.params.fitted for g in self.groups)

    def to_json(self) -> dict:
        return {"model": "L(x) = E + A * x^-alpha", "metric": self.metric, "unit": self.unit,
                "method": {"alpha_range": [ALPHA_MIN, ALPHA_MAX], "constraints": "E >= 0, A >= 0",
                           "bootstrap": self.B, "seed": self.seed,
                           "resampling": "runs with replacement within a family (draws with fewer than "
                                         f"{MIN_SIZES} distinct sizes redrawn), plus normal noise on every value "
                                         "with the seed sd pooled over the token count's repeated sizes (every "
                                         "family; none when no size was repeated); refits paired by index across "
                                         "families",
                           "coverage": COVERAGE,
                           "interval": f"{LEVEL}% percentile ({(100 - LEVEL) / 2:g}th and "
                                       f"{100 - (100 - LEVEL) / 2:g}th percentiles of the refits)",
                           "crossing_search": f"smallest size / {SEARCH:g} to largest x {SEARCH:g}",
                           "undecided": f"fewer than {100 * DECIDE:.0f}% of the refits cross, or the interval "
                                        f"spans more than {WIDE:g}x"},
                "predict": self.predict, "at_step": self.at_step,
                "groups": [{"tokens": g.tokens, "runs": g.runs, "seed_noise_sd": g.noise_sd,
                            "seed_noise_dof": g.noise_dof, "seed_noise_sizes": g.noise_sizes,
                            "family_settings": g.settings,
                            "params": g.params.to_json(),
                            "flops": g.flops.to_json(), "flops_estimated": g.flops_estimated,
                            "notes": g.several_configs} for g in self.groups],
                "left_out": [{"run": r, "why": w} for r, w in self.left_out], "not_fitted": self.not_fitted}

    # ------------------------------------------------------------ markdown
    def markdown(self) -> str:
        out = ["## Scaling fits"]
        if not self.any_fitted():
            out += self.not_fitted
            if self.left_out:
                out.append("Left out: " + "; ".join(f"{r} ({w})" for r, w in self.left_out) + ".")
            return "\n\n".join(out)
        out.append(
            f"L(x) = E + A · x^-α fitted per family to the completed runs at equal tokens, with x the parameter "
            f"count N and, separately, the training FLOPs C; L = {self.label} ({self.unit}). Least squares: for α "
            f"on a log grid over [{ALPHA_MIN:g}, {ALPHA_MAX:g}] (refined around the best), E ≥ 0 and A ≥ 0 solve "
            f"a linear problem; the α with the least squared error is kept. Intervals: {LEVEL}% percentile "
            f"bootstrap over {self.B:,} refits, each on the family's runs (seeds included) drawn with replacement "
            f"(draws with fewer than {MIN_SIZES} sizes redrawn) and every value moved by normal noise with the "
            f"seed sd that the study's repeated sizes give, pooled over every family (seeded, so the report is "
            f"deterministic); two families' refits are paired. Crossings are searched from the smallest size / "
            f"{SEARCH:g} to the largest x {SEARCH:g}; one is *undecided* when fewer than {100 * DECIDE:.0f}% of the "
            f"paired refits cross there or its interval spans more than {WIDE:g}x. Families need {MIN_SIZES} sizes "
            f"or more. **How often the intervals hold the truth** ({COVERAGE}): {COVERAGE_TEXT}")
        for line in self.not_fitted:
            out.append(line)
        for g in self.groups:
            if not g.params.fitted:
                continue
            out.append("Seed noise in the refits: " + (
                f"sd {g.noise_sd:.4f}, pooled over {g.noise_sizes} sizes run more than once ({g.noise_dof} "
                f"degrees of freedom, every family together)." if g.noise_sd is not None else
                "none: no size was run more than once at this token count, so the refits resample runs only and a "
                "family of three runs at three sizes has no interval. Run a second seed."))
            for fs in (g.params, g.flops):
                at = f" (each run at its step {self.at_step:,}, not at its end)" if self.at_step else ""
                out.append(self._set_md(fs, f" at {count(g.tokens)} tokens{at}", g))
            if g.several_configs:
                out.append("\n".join(f"- {n}" for n in g.several_configs))
        if self.left_out:
            out.append("Left out of the fits: " + "; ".join(f"{r} ({w})" for r, w in self.left_out) + ".")
        return "\n\n".join(out)

    def _set_md(self, fs: FitSet, tok: str, g: FitGroup) -> str:
        sym, word = XKINDS[fs.xkind]
        xf = count if fs.xkind == "params" else _flops
        lines = [f"### L({sym}): {self.label} vs {word}{tok}"]
        if fs.xkind == "flops":
            note = "C = the run's training FLOPs per token (summary.json `flops_per_token`: 6 x params, plus " \
                   "attention for the Transformer) x its tokens."
            if g.flops_estimated:
                note += (f" {len(g.flops_estimated)} record(s) predate `flops_per_token`: C = 6 x params x tokens "
                         f"for {names(g.flops_estimated)} (no attention FLOPs).")
            lines.append(note)
        rows = []
        for f in fs.fits:
            if f.refused:
                continue
            iv = {k: f.interval(k) for k in ("E", "A", "alpha")}
            sd = f.seed_sd()
            rows.append([f.label, f.n, f"{len(f.sizes)} ({xf(f.xs.min())}-{xf(f.xs.max())})",
                         _with(f.E, iv["E"], "{:.4f}"), _with(f.A, iv["A"], "{:.3g}"),
                         _with(f.alpha, iv["alpha"], "{:.3f}"), f"{f.rms:.4f}",
                         "-" if f.r2 is None else f"{f.r2:.4f}", f.dof, "-" if sd is None else f"{sd:.4f}",
                         "; ".join(([f"**{f.misfit}**"] if f.misfit else []) + f.bounds()
                                   + ([f.no_interval] if f.no_interval else [])) or "-"])
        lines.append(md_table(["family", "runs", "sizes", "E [95%]", "A [95%]", "α [95%]", "RMS resid",
                               "R²", "dof", "seed sd", "note"], rows))
        refused = [f for f in fs.fits if f.refused]
        if refused:
            lines.append("Not fitted: " + "; ".join(f"**{f.label}**: {f.refused}" for f in refused) + ".")
        if fs.crossings:
            crow = []
            for c in fs.crossings:
                pair = f"{c.a} vs {c.b}"
                frac = "-" if c.frac is None else f"{100 * c.frac:.0f}%"
                if not c.roots:
                    crow.append([pair, f"no crossing within {SEARCH:g}x of the data ({c.ahead} ahead throughout)",
                                 "-", frac, c.none_verdict])
                for r in c.roots:
                    iv = r["interval"]
                    crow.append([pair, f"{xf(r['x'])} ({r['ahead_below']} ahead below, {r['ahead_above']} above)",
                                 "-" if not iv else f"{xf(iv[0])} - {xf(iv[1])}", frac, r["verdict"]])
            lines.append(f"Crossings: the {sym} at which two fitted curves are equal (ahead: the lower {self.label})."
                         f"\n\n"
                         + md_table(["pair", f"crossing {sym}", f"{LEVEL}% interval", "refits crossing", "verdict"],
                                    crow))
        for p in fs.predictions:
            vrow = [[v["family"], f"{v['value']:.4f}", _iv(v["interval"]),
                     ("inside the data" if v["beyond_data"] <= INSIDE else f"{v['beyond_data']:.1f}x beyond the data")
                     + ("; misfit: not a prediction" if v["misfit"] else "")]
                    for v in p.values]
            grow = [[f"{q['a']} - {q['b']}", f"{q['gap']:+.4f}", _iv(q["interval"], "{:+.4f}"), q["verdict"]]
                    for q in p.gaps]
            lines.append(f"Predicted at {sym} = {xf(p.x)}:\n\n"
                         + md_table(["family", f"predicted {self.label}", f"{LEVEL}% interval", "extrapolation"],
                                    vrow)
                         + ("\n\n" + md_table(["pair (a - b)", "gap", f"{LEVEL}% interval", "verdict"], grow)
                            if grow else ""))
        return "\n\n".join(lines)


def _flops(v: float) -> str:
    return f"{v:.3g}"


def _with(v: float, iv, fmt: str) -> str:
    return fmt.format(v) + (f" [{fmt.format(iv[0])}, {fmt.format(iv[1])}]" if iv else "")


def _iv(iv, fmt: str = "{:.4f}") -> str:
    return "-" if not iv else f"{fmt.format(iv[0])} - {fmt.format(iv[1])}"


# ---------------------------------------------------------------- from a report's runs

def parse_predict(values) -> list[int]:
    """``--predict`` values ("400M", "400M,1B", repeated) as parameter counts; a one-line error else."""
    from elmanlab.sizing import parse_count
    out = []
    for v in values or []:
        for part in str(v).split(","):
            try:
                n = parse_count(part)
            except ElmanlabError:
                n = None
            if n is None or n < 1:
                raise ElmanlabError(f"--predict {part.strip()!r} is not a parameter count; give a size such as "
                                    f"400M or 1.5B (several: --predict 400M,1B)")
            out.append(n)
    return sorted(set(out))


def multi_scale(runs) -> bool:
    """Whether some model has completed runs at three sizes or more (the report then fits)."""
    sizes = defaultdict(set)
    for r in runs:
        if r.params:
            sizes[r.model].add(r.scale_n)
    return any(len(s) >= MIN_SIZES for s in sizes.values())


def family_setting(r) -> dict:
    """What defines a family beyond its model: train settings other than seed and budget, and options
    other than those the sizing derives."""
    from elmanlab.config import BUDGET_SETTINGS
    tr = {k: v for k, v in r.train.items() if k != "seed" and k not in BUDGET_SETTINGS}
    op = {k: v for k, v in r.options.items() if k not in SIZE_KEYS}
    return {**{f"train.{k}": v for k, v in tr.items()}, **op}


def _families(runs) -> dict[str, list]:
    """Label -> runs: one family per model and configuration (the label names what differs)."""
    import json
    by_model: dict[str, dict[str, list]] = defaultdict(dict)
    for r in runs:
        key = json.dumps(family_setting(r), sort_keys=True, default=str)
        by_model[r.model].setdefault(key, []).append(r)
    out = {}
    for model, groups in by_model.items():
        if len(groups) == 1:
            out[model] = next(iter(groups.values()))
            continue
        keys = [json.loads(k) for k in groups]
        diff = sorted({s for k in keys for s in k if len({json.dumps(x.get(s), default=str) for x in keys}) > 1})
        for k, rs in zip(keys, groups.values()):
            out[model + " " + " ".join(f"{s.removeprefix('train.')}={k.get(s)}" for s in diff)] = rs
    return out


def _token_groups(runs, tokens) -> list[list]:
    """Runs clustered by token count (``tokens[run id]``, within SAME_TOKENS), fewest tokens first."""
    out: list[list] = []
    for r in sorted(runs, key=lambda r: tokens[r.id]):
        if out and tokens[r.id] <= tokens[out[-1][0].id] * SAME_TOKENS:
            out[-1].append(r)
        else:
            out.append([r])
    return out


def value_and_tokens(r, metric: str, at_step: int | None = None) -> tuple[float | None, float | None]:
    """Run ``r``'s ``metric`` and the tokens it had trained on then: at its end, or with ``at_step``
    at that step (``Run.value_at``)."""
    if at_step is None:
        return r.get(metric), r.get("tokens")
    rows = (r.train.get("batch_size") or r.get("batch_size") or 0) * (r.train.get("seq_len") or r.get("seq_len") or 0)
    return r.value_at(at_step, metric), at_step * rows


def fit_study(report, predict_at=(), B: int = BOOTSTRAP, seed: int = SEED, at_step: int | None = None) -> FitReport:
    """Every fit the report's completed runs allow (see the module's docstring); with ``at_step``
    each run's value at that step (``Run.value_at``) and its tokens then, not at its end."""
    left = [(r.id, r.status + (f": {r.error}" if r.error and r.error != r.status else "")) for r in report.notok]
    usable, value, tokens = [], {}, {}
    for r in report.done:
        value[r.id], tokens[r.id] = value_and_tokens(r, report.metric, at_step)
        if not r.params:
            left.append((r.id, "no parameter count in its record"))
        elif not tokens[r.id]:
            left.append((r.id, "no token count in its record"))
        elif value[r.id] is None:
            left.append((r.id, f"no {report.metric} at step {at_step} in its metrics.jsonl"
                               + (f" (it ran {r.get('steps')} steps)" if (r.get("steps") or 0) < at_step else "")))
        else:
            usable.append(r)
    groups, not_fitted, unfitted = [], [], []
    tgroups = _token_groups(usable, tokens)
    for runs in tgroups:
        fams = _families(runs)
        group_tokens = float(np.median([tokens[r.id] for r in runs]))
        repeats = defaultdict(list)
        for label, rs in fams.items():
            for r in rs:
                repeats[(label, r.scale_n or r.params)].append(float(value[r.id]))
        noise_sd, noise_dof = pooled_sd(repeats.values())
        noise_sizes = sum(len(v) > 1 for v in repeats.values())
        sets = {}
        for xkind in XKINDS:
            fits = []
            for label, rs in fams.items():
                pts = [Point(r.id, float(r.params) if xkind == "params" else _flops_of(r, tokens[r.id]),
                             float(value[r.id]),
                             float(r.scale_n or r.params), r.seed) for r in rs]
                fits.append(fit_family(label, rs[0].model, pts, B, seed, noise_sd))
            fits = _order(fits, report.models, report.baseline)
            ok = [f for f in fits if not f.refused]
            pairs = [(fa, fb) for i, fa in enumerate(ok) for fb in ok[i + 1:]]
            cross = [crossing(fa, fb) for fa, fb in pairs]
            preds = [predict(ok, pairs, x) for x in predict_at] if xkind == "params" and ok else []
            sets[xkind] = FitSet(xkind, group_tokens, fits, cross, preds)
        if not sets["params"].fitted:
            unfitted.append((runs, group_tokens, sets["params"]))
            continue
        notes = []
        for label, rs in fams.items():
            per = defaultdict(set)
            for r in rs:
                per[r.scale_n].add(r.config_key())
            odd = [s for s, v in per.items() if len(v) > 1]
            if odd:
                notes.append(f"{label}: several configurations at {', '.join(count(s) for s in sorted(odd))}, "
                             f"fitted together as if seeds.")
        groups.append(FitGroup(group_tokens, [r.id for r in runs], sets["params"], sets["flops"],
                               [r.id for r in runs if not r.get("flops_per_token")], notes,
                               noise_sd, noise_dof, noise_sizes,
                               {label: family_setting(rs[0]) for label, rs in fams.items()}))
    if not usable:
        not_fitted.append("**Not fitted:** no completed run has a parameter count and a token count.")
    elif not groups and len(tgroups) > 1 and multi_scale(usable):
        not_fitted.append(f"**Not fitted:** the runs trained on {len(tgroups)} different token counts (a time "
                          f"budget, or steps that differ by size) and no token count has a family at {MIN_SIZES} "
                          f"sizes; the fit compares runs at equal tokens only. Give every run the same `steps` "
                          f"(and batch and sequence length).")
    elif not groups:
        sizes = {label: sorted({r.scale_n or r.params for r in rs}) for label, rs in _families(usable).items()}
        not_fitted.append(f"**Not fitted:** no family has completed runs at {MIN_SIZES} sizes or more at one "
                          f"token count (three constants need three sizes): "
                          + "; ".join(f"{label}: {len(v)} size{'s' if len(v) != 1 else ''} "
                                      f"({', '.join(count(x) for x in v)})" for label, v in sizes.items()) + ".")
    else:
        for runs, t, _ in unfitted:
            not_fitted.append(f"Not fitted: {len(runs)} run(s) at {count(t)} tokens "
                              f"({names([r.id for r in runs], 4)}): no family has {MIN_SIZES} sizes at that "
                              f"token count.")
    return FitReport(report.metric, report.mlabel, report.munit, B, seed, list(predict_at), report.baseline,
                     groups, left, not_fitted, at_step)


def _flops_of(r, tokens: float) -> float:
    fpt = r.get("flops_per_token")
    return float(fpt if fpt else 6.0 * r.params) * float(tokens)


def _order(fits: list[FamilyFit], models: list[str], baseline: str | None) -> list[FamilyFit]:
    """Families in the study's order of models, the baseline last (so pairs read "family - baseline")."""
    pos = {m: i for i, m in enumerate(models)}
    return sorted(fits, key=lambda f: (f.model == baseline, pos.get(f.model, len(pos)), f.label))
