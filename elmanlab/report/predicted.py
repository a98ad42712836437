"""Runs held against a scaling fit's predictions (``elmanlab report DIR --check-fit FIT.json``).

A fit (``fit.json`` of ``elmanlab report --fit --predict SIZE``) predicts each family's value at SIZE
with a bootstrap interval, and each pair's gap. This module takes the runs of another study (e.g. the
400M runs of the reference table against the scaling study's fit at step 1,500) and says, per
configuration pooled over seeds and per pair, whether the prediction held.

What is compared, and what is not:

- the fit's metric (``loss_last100`` or ``val_bpb``), at the fit's ``at_step`` when it has one (the
  runs' values there), at the fit's token count (else nothing is judged: the fit is L(N) at fixed data);
- a run belongs to a fitted family when its model and every setting that defines the family (train
  settings other than seed, budget and ``eval_bytes``; options other than those sizing derives) are the
  family's; a run with other settings is listed with what differs, not judged; for a held-out metric
  its ``eval_bytes`` must be the family's too (the same bytes scored);
- only the shape the sizing tool picks at the predicted size is judged (the fit is of sized models:
  ``elmanlab size MODEL SIZE``); other shapes of the family are listed beside it;
- the value at the run's own parameter count is the fitted curve there; its interval is the one at the
  nearest predicted size (within 5%), moved by the curve's change between the two sizes.

The fit's interval is the curve's (the mean over seeds); one run also carries its seed noise. So the
verdict has three levels: inside the fit's interval; inside once the seed noise of the n runs (the fit's
pooled seed sd / sqrt(n), at the same 95% level, combined in quadrature) is added; or outside, which is
a miss, better or worse than predicted.
"""
from __future__ import annotations

import json
import math
import statistics
from statistics import NormalDist
from dataclasses import dataclass, field
from pathlib import Path

from elmanlab.errors import ElmanlabError
from elmanlab.report.fit import LEVEL, SIZE_KEYS
from elmanlab.report.fmt import count, md_table, mean_sd

Z = NormalDist().inv_cdf(0.5 + LEVEL / 200)   # the normal quantile of the fits' interval level, for the seed noise
NEAR = 1.05                           # a run within 5% of a predicted size uses that size's interval
NOT_TRAINING = ("train.eval_bytes",)  # identity settings that do not change training


@dataclass
class Line:
    """One configuration of the checked runs (pooled over seeds)."""
    model: str
    label: str
    runs: list
    values: list[float]
    params: float
    family: str | None = None
    pred: float | None = None
    interval: tuple | None = None
    with_noise: tuple | None = None
    verdict: str = ""
    judged: bool = False

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return mean_sd(self.values)[0] if self.values else None

    @property
    def sd(self) -> float | None:
        return mean_sd(self.values)[1] if self.values else None


@dataclass
class GapLine:
    a: str
    b: str
    observed: float | None
    pred: float
    interval: tuple | None
    with_noise: tuple | None
    verdict: str
    n: tuple = field(default_factory=tuple)


def _load(path) -> dict:
    p = Path(path)
    fix = "give the fit.json of `elmanlab report STUDY --fit --predict SIZE`"
    if not p.is_file():
        raise ElmanlabError(f"--check-fit {p}: no such file; {fix}")
    try:
        fit = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ElmanlabError(f"--check-fit {p}: not readable JSON ({e}); {fix}") from None
    if not isinstance(fit, dict) or not isinstance(fit.get("groups"), list) or "metric" not in fit:
        raise ElmanlabError(f"--check-fit {p}: not a scaling fit (no metric or groups); {fix}")
    if not fit.get("predict"):
        raise ElmanlabError(f"--check-fit {p}: the fit predicts no size; refit with --predict SIZE "
                            f"(e.g. --predict 400M)")
    level = str((fit.get("method") or {}).get("interval", f"{LEVEL}%")).split("%")[0]
    if level != str(LEVEL):
        raise ElmanlabError(f"--check-fit {p}: its intervals are not {LEVEL}% intervals; refit it with this version "
                            f"(`elmanlab report STUDY --fit --predict SIZE`)")
    return fit


def _comparable(setting: dict) -> dict:
    return {k: v for k, v in setting.items() if k not in NOT_TRAINING}


def _differs(a: dict, b: dict) -> str:
    keys = sorted(set(a) | set(b), key=str)
    out = [f"{k.removeprefix('train.')} {a.get(k, '-')} (the fit's {b.get(k, '-')})" for k in keys if a.get(k) != b.get(k)]
    return ", ".join(out)


def _widen(center: float, iv, sd: float | None, n_eff: float) -> tuple | None:
    """The interval with the seed noise of a mean of ``1 / n_eff`` runs added in quadrature on each side."""
    if iv is None or sd is None:
        return None
    s = Z * sd * math.sqrt(n_eff)
    return (center - math.hypot(center - iv[0], s), center + math.hypot(iv[1] - center, s))


def _verdict(obs: float, iv, wide, what: str = "") -> str:
    if iv is None:
        return "not judged: the fit has no interval here"
    if iv[0] <= obs <= iv[1]:
        return "held: inside the fit's interval"
    if wide is not None and wide[0] <= obs <= wide[1]:
        return "held within the seed noise: outside the fit's interval, inside once the runs' seed noise is added"
    side = "lower" if obs < iv[0] else "higher"
    return f"missed: {side} than predicted" + (f" ({what})" if what else "")


class PredictionCheck:
    """The completed runs of ``report`` against the fit at ``path`` (see the module's docstring)."""

    def __init__(self, report, path):
        self.path = Path(path)
        fit = _load(path)
        self.metric, self.at_step = fit["metric"], fit.get("at_step")
        self.notes: list[str] = []
        from elmanlab.report.scaling import value_and_tokens
        runs = list(report.done)
        value, tokens = {}, {}
        for r in runs:
            value[r.id], tokens[r.id] = value_and_tokens(r, self.metric, self.at_step)
        self.lines: list[Line] = []
        self.gaps: list[GapLine] = []
        self.group = None
        by_cfg: dict[str, list] = {}
        for r in runs:
            if value[r.id] is None or not r.params:
                self.notes.append(f"{r.id}: no {self.metric}" + (f" at step {self.at_step}" if self.at_step else "")
                                  + " or no parameter count in its record; not compared")
                continue
            by_cfg.setdefault(r.config_key(), []).append(r)
        for rs in by_cfg.values():
            r0 = rs[0]
            self.lines.append(Line(r0.model, r0.label(), rs, [float(value[r.id]) for r in rs], float(r0.params)))
        toks = sorted({tokens[r.id] for rs in by_cfg.values() for r in rs if tokens[r.id]})
        for g in fit["groups"]:
            if toks and all(abs(t / g["tokens"] - 1) < 0.01 for t in toks):
                self.group = g
        if self.group is None:
            have = ", ".join(count(g["tokens"]) for g in fit["groups"]) or "none"
            self.notes.append(f"the fit is at {have} tokens and these runs at {', '.join(count(t) for t in toks) or 'none'}"
                              f"{f' (at step {self.at_step})' if self.at_step else ''}: a fit at fixed data predicts "
                              f"runs on the same number of tokens only; nothing judged")
            for ln in self.lines:
                ln.verdict = "not judged: other token count"
            return
        self.sd = self.group.get("seed_noise_sd")
        settings = self.group.get("family_settings")
        if settings is None:
            self.notes.append("the fit does not record its families' settings (a fit.json from before 2026-12-07): "
                              "runs matched to families by model alone")
        fams = {f["family"]: f for f in self.group["params"]["families"] if f.get("fitted")}
        preds = self.group["params"].get("predictions", [])
        for ln in self.lines:
            self._judge(ln, fams, settings, preds)
        self._gaps(preds)

    # ------------------------------------------------------------ one configuration
    def _judge(self, ln: Line, fams: dict, settings, preds) -> None:
        from elmanlab.report.scaling import family_setting
        mine = _comparable(family_setting(ln.runs[0]))
        cands = [f for f in fams.values() if f["model"] == ln.model]
        fam = next((f for f in cands if settings is None or _comparable(settings.get(f["family"], {})) == mine), None)
        if fam is None:
            why = "no fitted family of this model" if not cands else "other settings than the fitted family: " + \
                "; ".join(_differs(mine, _comparable(settings.get(f["family"], {}))) for f in cands)
            ln.verdict = f"not judged: {why}"
            return
        if self.metric != "loss_last100" and settings is not None:
            want = settings.get(fam["family"], {}).get(NOT_TRAINING[0])
            have = family_setting(ln.runs[0]).get(NOT_TRAINING[0])
            if want != have:
                ln.verdict = f"not judged: held out on other bytes (eval_bytes {have}, the fit's {want})"
                return
        ln.family = fam["family"]
        curve = lambda x: fam["E"] + fam["A"] * x ** -fam["alpha"]  # noqa: E731
        ln.pred = curve(ln.params)
        near = [p for p in preds if max(p["x"], ln.params) / min(p["x"], ln.params) <= NEAR]
        if not near:
            ln.verdict = (f"not judged: the fit predicts no size within {100 * (NEAR - 1):.0f}% of {count(ln.params)} "
                          f"(refit with --predict {count(ln.params)})")
            return
        p = min(near, key=lambda p: abs(math.log(p["x"] / ln.params)))
        shape = self._sized_shape(ln, p["x"])
        if shape is not None:
            ln.verdict = f"not judged: another shape than the fitted family's at {count(p['x'])} ({shape})"
            return
        v = next((v for v in p["values"] if v["family"] == fam["family"]), None)
        if v is None or v.get("interval") is None:
            ln.verdict = "not judged: the fit has no interval for this family"
            return
        shift = ln.pred - curve(p["x"])
        ln.interval = (v["interval"][0] + shift, v["interval"][1] + shift)
        ln.with_noise = _widen(ln.pred, ln.interval, self.sd, 1 / ln.n)
        ln.verdict = _verdict(ln.mean, ln.interval, ln.with_noise) + _spike_note(ln.runs)
        ln.judged = True

    @staticmethod
    def _sized_shape(ln: Line, x: float) -> str | None:
        """None when the runs' dim x depth is what the sizing tool picks at ``x`` for their options, else
        a note naming both."""
        from elmanlab.sizing import solve
        r = ln.runs[0]
        try:
            cfg = solve(r.model, int(x), options={k: v for k, v in r.options.items() if k not in SIZE_KEYS})
        except ElmanlabError as e:
            return f"the sizing tool cannot size it at {count(x)}: {e}"
        if (cfg.dim, cfg.depth) == (r.dim, r.depth):
            return None
        return f"{r.dim}x{r.depth}; the sizing tool's is {cfg.dim}x{cfg.depth}"

    # ------------------------------------------------------------ pairs
    def _gaps(self, preds) -> None:
        judged = {ln.family: ln for ln in self.lines if ln.judged}
        if not judged:
            return
        x = statistics.median([ln.params for ln in judged.values()])
        p = min(preds, key=lambda p: abs(math.log(p["x"] / x)))
        for g in p["gaps"]:
            la, lb = judged.get(g["a"]), judged.get(g["b"])
            if la is None or lb is None:
                continue
            # the fitted gap at the two runs' own sizes, its interval moved with it
            pred = la.pred - lb.pred
            iv = None if g.get("interval") is None else tuple(e + pred - g["gap"] for e in g["interval"])
            wide = _widen(pred, iv, self.sd, 1 / la.n + 1 / lb.n)
            obs = la.mean - lb.mean
            verdict = _verdict(obs, iv, wide)
            if (obs > 0) != (pred > 0):
                verdict += "; the order reversed"
            verdict += _spike_note(la.runs + lb.runs)
            self.gaps.append(GapLine(g["a"], g["b"], obs, pred, iv, wide, verdict, (la.n, lb.n)))

    # ------------------------------------------------------------ output
    def to_json(self) -> dict:
        return {"fit": str(self.path), "metric": self.metric, "at_step": self.at_step,
                "tokens": self.group["tokens"] if self.group else None,
                "seed_noise_sd": self.group.get("seed_noise_sd") if self.group else None,
                "lines": [{"model": ln.model, "configuration": ln.label, "family": ln.family,
                           "runs": [r.id for r in ln.runs], "values": ln.values, "mean": ln.mean, "sd": ln.sd,
                           "params": ln.params, "predicted": ln.pred, "interval": ln.interval,
                           "with_seed_noise": ln.with_noise, "verdict": ln.verdict} for ln in self.lines],
                "gaps": [{"a": g.a, "b": g.b, "observed": g.observed, "predicted": g.pred, "interval": g.interval,
                          "with_seed_noise": g.with_noise, "n": list(g.n), "verdict": g.verdict} for g in self.gaps],
                "notes": self.notes}

    def findings(self) -> list[str]:
        out = []
        for g in self.gaps:
            out.append(f"{g.a} - {g.b}: {g.observed:+.4f} observed, {g.pred:+.4f} predicted {_iv(g.interval)} "
                       f"(n = {g.n[0]}, {g.n[1]}): {g.verdict}")
        for ln in self.lines:
            if ln.judged:
                out.append(f"{ln.model} {ln.label}: {ln.mean:.4f} observed (n = {ln.n}), {ln.pred:.4f} predicted "
                           f"{_iv(ln.interval)}: {ln.verdict}")
        return out + self.notes

    def section(self) -> str:
        what = f"{self.metric}" + (f" at step {self.at_step}" if self.at_step else "")
        sd = (f"the fit's pooled seed sd {self.sd:.4f}" if self.group and self.sd is not None
              else "no seed sd (the fit had no repeated size), so no widened interval")
        intro = (f"The runs against the predictions of `{self.path}` ({what}). A configuration is judged when its "
                 f"settings are a fitted family's and its shape is the one the sizing tool picks at the predicted "
                 f"size; the interval is the fit's (the curve's), and 'with seed noise' adds the noise of the "
                 f"runs' mean ({sd}) at the same level.")
        rows = [[ln.model, ln.label, ln.n, count(ln.params), _msd(ln), _num(ln.pred), _iv(ln.interval),
                 _iv(ln.with_noise), ln.verdict] for ln in self.lines]
        gaps = [[f"{g.a} - {g.b}", f"{g.n[0]}, {g.n[1]}", f"{g.observed:+.4f}", f"{g.pred:+.4f}", _iv(g.interval, True),
                 _iv(g.with_noise, True), g.verdict] for g in self.gaps]
        out = [f"## Against the fit's predictions\n\n{intro}\n"]
        if self.notes:
            out.append("\n".join(f"- {n}" for n in self.notes) + "\n")
        out.append(md_table(["model", "configuration", "n", "params", "observed", "predicted", "interval",
                             "with seed noise", "verdict"], rows))
        if gaps:
            out.append("\nGaps (a - b; positive: b ahead):\n\n" + md_table(
                ["pair", "n", "observed", "predicted", "interval", "with seed noise", "verdict"], gaps))
        return "\n".join(out)

    def short(self) -> str:
        return f"Against the predictions of {self.path}:\n" + "\n".join(f"- {f}" for f in self.findings())


def _spike_note(runs) -> str:
    """'; RUN had a loss spike at step N' for each run with one (Run.loss_spikes), and '; RUN blew up in
    its first steps ...' (Run.early_blowup), and "; RUN's loss rose late ..." (Run.late_rise): a verdict on such
    a run is a verdict on the instability as much as on the curve."""
    out = ""
    for r in runs:
        b, st, late = r.early_blowup(), [ev["step"] for ev in r.loss_spikes()], r.late_rise()
        if b:
            out += f"; {r.id} blew up in its first steps (a step's loss {b['loss_max']:.1f} by step {b['step']})"
        if st:
            out += f"; {r.id} had a loss spike at step{'s' if len(st) > 1 else ''} {', '.join(map(str, st))}"
        if late:
            out += (f"; {r.id}'s loss rose late ({late['final']:.4f} at the end against {late['best']:.4f} at step "
                    f"{late['best_step']})")
    return out


def _num(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def _msd(ln: Line) -> str:
    return "-" if ln.mean is None else f"{ln.mean:.4f}" + (f" ± {ln.sd:.4f}" if ln.sd is not None else "")


def _iv(iv, signed: bool = False) -> str:
    if iv is None:
        return "-"
    f = "{:+.4f}" if signed else "{:.4f}"
    return "[" + f.format(iv[0]) + ", " + f.format(iv[1]) + "]"
