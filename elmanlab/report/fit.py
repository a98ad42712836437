"""Scaling-law fits for the report (the mathematics; which runs are fitted together and the report's
section are :mod:`elmanlab.report.scaling`): per family, L(x) = E + A x^-alpha over the completed runs of a
study at equal tokens, with x the parameter count N (and, separately, the training FLOPs C), bootstrap
intervals over runs and seeds, the size at which two families' curves cross, and the predicted gap
at a given size. Needs numpy only (no scipy, torch or matplotlib).

**Which runs.** The completed runs with a value of the report's metric (``loss_last100``,
``val_bpb`` or ``best_val_bpb``), a parameter count and a token count (summary.json ``params`` and
``tokens``). Runs are fitted only against runs of the same token count (within 0.5%); a study with
several token counts is fitted per count, and a count with no family at three sizes is not fitted,
with a line saying so. A family is a model with one configuration: runs of one model whose settings
(other than size, seed and budget) differ are separate families. Seeds are separate points. C is
``flops_per_token`` x ``tokens`` (attention counted for the Transformer); a record without
``flops_per_token`` (written before it existed) uses 6 x params x tokens, and the report says so.
Failed runs are left out and listed.

**The fit.** For alpha on a log-spaced grid over [0.01, 2], refined twice on finer grids around the best
point, ``L = E + a (x / x0)^-alpha`` is linear in (E, a): least squares with E >= 0 and a >= 0
(the constrained optimum is the unconstrained one when it is feasible, else the best of the two
edges); the alpha with the least squared error is kept. x0 is the geometric mean of the family's
sizes, so the numbers stay near 1; A = a x0^alpha. A constant at its bound is said. Goodness of
fit: the RMS residual, R^2, and the residual degrees of freedom (runs - 3). A family with fewer than
three distinct sizes is not fitted (three constants).

**Intervals.** B bootstrap refits (default 1,000), each on the family's runs drawn with replacement
(seeds are runs too, so they are resampled; a draw with fewer than three distinct sizes is drawn
again), and with every drawn value moved by normal noise of the seed sd the study measured (pooled
over every family's repeated sizes at the token count: :mod:`elmanlab.report.scaling`). Resampling
alone measures nothing where a family has one run at a size: with three sizes the curve passes
through the points, and the refits differ only by the seeds of a repeated size (on 2026-12-07, Mamba2's
20M seeds, 0.0004 apart, gave its 400M prediction an interval 0.0004 wide). The noise is what a run's
value is known to carry. Without any repeated size there is no noise to add, and a family of three
runs at three sizes gets no interval. Intervals are the 2.5th and 97.5th percentiles of the refits
(95% percentile intervals). The draws come from a generator seeded by a fixed seed and the family's
label, so the report is deterministic. Two families' refits are paired by index for their crossing
and their gap. How often they hold the truth: ``COVERAGE_TEXT`` below, from ``COVERAGE``.

**Crossings.** The x where two fitted curves are equal, searched on a log grid from the smallest
size of either family / 10 to the largest x 10 (each sign change of the difference, interpolated in
log x); "no crossing within 10x of the data" when the point fit has none. Its interval comes from
the refits' crossing nearest to it; the crossing is *undecided* when fewer than 80% of the refits
cross in the range or the interval spans more than 10x.

**Predictions.** Each family's fitted value at a given size and each pair's gap, with intervals from
the (paired) refits; a gap whose interval holds 0 is undecided.

**Misfit.** A curve that misses its own runs by more than the seed noise allows does not describe the
family: the residual sum of squares over the noise variance (chi-square with runs - 3 degrees of
freedom) beyond its 99th percentile (``MISFIT_Z``, Wilson-Hilferty). Such a family (on 2026-12-07,
E42, whose loss rose with size: 1.29 at 20M, 1.32 at 50M, 1.40 at 200M) keeps its table row, marked, but
its crossings and predicted gaps are "not judged". Without a noise sd, or with no residual degree of
freedom, there is no test.
"""
from __future__ import annotations

import math
import zlib
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from elmanlab.report.fmt import count

ALPHA_MIN, ALPHA_MAX = 0.01, 2.0   # the exponent's range
GRID = 200                          # log-spaced alphas of the first pass
REFINE = 41                         # alphas between the best grid point's neighbours, per refinement
PASSES = 2                          # refinements
BOOTSTRAP = 1000                    # refits per family (default)
SEED = 20                           # with the family's label: the bootstrap generator's seed
LEVEL = 95                          # percent: percentile intervals [2.5, 97.5]
MIN_SIZES = 3                       # distinct sizes needed to fit three constants
SEARCH = 10.0                       # crossings searched within this factor of the data
DECIDE = 0.80                       # fraction of refits that must cross in the range
WIDE = 10.0                         # a crossing interval spanning more than this factor is undecided
SAME_TOKENS = 1.005                 # runs whose token counts differ less than this are at equal tokens
INSIDE = 1.02                       # a size this close to the data's range (a factor) counts as inside it
MISFIT_Z = 2.326                    # the misfit test's one-sided normal quantile (99%)
CHUNK = 100                         # refits fitted at once (memory: CHUNK x GRID x runs)
SIZE_KEYS = ("n_heads",)            # options the sizing derives from the width: not a configuration
XKINDS = {"params": ("N", "parameters"), "flops": ("C", "training FLOPs")}
COVERAGE = "benchmarks/results/fit-coverage/fit-coverage.json"   # the simulation behind COVERAGE_TEXT
COVERAGE_TEXT = (
    "in simulated studies of two families of known constants (`benchmarks/fit_coverage.py`, 200 trials per "
    "design and seed-noise sd 0.005, 0.01, 0.02), the 95% intervals held the true exponent, the value and the "
    "gap at 400M, and the crossing in 94-100% of the trials with four sizes (six runs per family, "
    "scaling-small's design) and 97-100% with five sizes (ten runs); with three sizes (four runs, the noise "
    "sd from two pairs of seeds) only 69-81%. Read an interval from three sizes as about a 75% interval. "
    "Resampling runs alone, without the noise, held them 4-20% of the time with three sizes and 72-93% "
    "with four.")


# ---------------------------------------------------------------- the least-squares core

def _ls(u: np.ndarray, Y: np.ndarray):
    """For every (refit, alpha): the least-squares ``E >= 0, a >= 0`` of ``Y = E + a u``.

    ``u``: (R, G, n), ``Y``: (R, n). Returns E, a, squared error and the case (0: both free,
    1: E at 0, 2: a at 0, a flat line), each (R, G)."""
    n = Y.shape[-1]
    Yb = Y[:, None, :]
    Su = u.sum(-1)
    Suu = np.einsum("rgn,rgn->rg", u, u)
    Suy = np.einsum("rgn,rn->rg", u, Y)
    Sy = Y.sum(-1)[:, None]
    den = n * Suu - Su * Su
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        a1 = np.where(den > 0, (n * Suy - Su * Sy) / np.where(den > 0, den, 1.0), -1.0)
        E1 = (Sy - a1 * Su) / n
        a2 = np.maximum(Suy / np.where(Suu > 0, Suu, 1.0), 0.0)
    E3 = np.broadcast_to(np.maximum(Sy / n, 0.0), Su.shape)
    zero = np.zeros_like(Su)
    Es = np.stack([E1, zero, E3])
    As = np.stack([a1, a2, zero])
    with np.errstate(over="ignore", invalid="ignore"):
        res = Yb[None] - Es[..., None] - As[..., None] * u[None]
        sse = np.einsum("crgn,crgn->crg", res, res)
    ok = np.stack([(a1 > 0) & (E1 >= 0) & np.isfinite(E1), np.ones_like(a1, bool), np.ones_like(a1, bool)])
    sse = np.where(ok & np.isfinite(sse), sse, np.inf)
    k = np.argmin(sse, axis=0)
    take = lambda v: np.take_along_axis(v, k[None], 0)[0]       # noqa: E731
    return take(Es), take(As), take(sse), k


def fit_many(X: np.ndarray, Y: np.ndarray, x0: float) -> dict:
    """Fit ``Y = E + a (X / x0)^-alpha`` to each row of X, Y (R, n): arrays E, a, alpha, sse, case (R,)."""
    X = np.atleast_2d(np.asarray(X, float))
    Y = np.atleast_2d(np.asarray(Y, float))
    alphas = np.geomspace(ALPHA_MIN, ALPHA_MAX, GRID)
    out = {k: [] for k in ("E", "a", "alpha", "sse", "case")}
    for s in range(0, X.shape[0], CHUNK):
        lx, y = np.log(X[s:s + CHUNK] / x0), Y[s:s + CHUNK]
        rows = np.arange(len(y))
        grid = np.broadcast_to(alphas, (len(y), GRID))
        for i in range(1 + PASSES):          # the grid, then finer grids between the best point's neighbours
            E, a, sse, case = _ls(np.exp(-grid[:, :, None] * lx[:, None, :]), y)
            g = np.argmin(sse, axis=1)
            if i == PASSES:
                break
            last = grid.shape[1] - 1
            lo = np.log(grid[rows, np.maximum(g - 1, 0)])
            hi = np.log(grid[rows, np.minimum(g + 1, last)])
            grid = np.exp(lo[:, None] + (hi - lo)[:, None] * np.linspace(0.0, 1.0, REFINE)[None, :])
        fine = grid
        for key, v in (("E", E), ("a", a), ("alpha", fine), ("sse", sse), ("case", case)):
            out[key].append(v[rows, g])
    return {k: np.concatenate(v) for k, v in out.items()}


def _draws(codes: np.ndarray, B: int, rng) -> np.ndarray:
    """B rows of run indices drawn with replacement, each holding at least MIN_SIZES distinct sizes."""
    n = len(codes)
    got, rows = 0, []
    for _ in range(1000):
        idx = rng.integers(0, n, size=(B, n))
        s = np.sort(codes[idx], axis=1)
        ok = idx[1 + (np.diff(s, axis=1) != 0).sum(1) >= MIN_SIZES]
        rows.append(ok)
        got += len(ok)
        if got >= B:
            break
    return np.concatenate(rows)[:B]


def pooled_sd(groups) -> tuple[float | None, int]:
    """The pooled sd of values measured more than once (e.g. one size's seeds) and its degrees of
    freedom: (None, 0) when no group has two values."""
    multi = [np.asarray(v, float) for v in groups if len(v) > 1]
    dof = sum(len(v) - 1 for v in multi)
    if not dof:
        return None, 0
    return math.sqrt(sum(float(((v - v.mean()) ** 2).sum()) for v in multi) / dof), dof


def _pct(v) -> tuple[float, float] | None:
    v = np.asarray(v, float)
    v = v[np.isfinite(v)]
    if not len(v):
        return None
    lo, hi = np.percentile(v, [(100 - LEVEL) / 2, 100 - (100 - LEVEL) / 2])
    return float(lo), float(hi)


# ---------------------------------------------------------------- one family

@dataclass
class Point:
    run: str
    x: float
    y: float
    size: float            # the run's scale (the study's target): distinct sizes are counted on it
    seed: object = None


@dataclass
class FamilyFit:
    """One family's fit, or why it was not fitted (``refused``)."""
    label: str
    model: str
    points: list[Point]
    refused: str | None = None
    x0: float = 1.0
    E: float = math.nan
    a: float = math.nan
    alpha: float = math.nan
    sse: float = math.nan
    case: int = 0
    boot: dict | None = None           # arrays E, a, alpha (B,) of the refits; None: no interval
    no_interval: str = ""
    noise_sd: float | None = None      # the seed noise added to every refit's values (None: none)
    misfit: str = ""                   # why the curve does not describe the runs ("": it does, or no test)

    @property
    def n(self) -> int:
        return len(self.points)

    @property
    def sizes(self) -> list[float]:
        return sorted({p.size for p in self.points})

    @property
    def xs(self) -> np.ndarray:
        return np.array([p.x for p in self.points], float)

    @property
    def ys(self) -> np.ndarray:
        return np.array([p.y for p in self.points], float)

    @property
    def A(self) -> float:
        return self.a * self.x0 ** self.alpha

    @property
    def dof(self) -> int:
        return self.n - 3

    @property
    def rms(self) -> float:
        return math.sqrt(self.sse / self.n)

    @property
    def r2(self) -> float | None:
        sst = float(((self.ys - self.ys.mean()) ** 2).sum())
        return 1.0 - self.sse / sst if sst > 0 else None

    def seed_sd(self) -> float | None:
        """The pooled sd of runs at the same size (seeds), None without repeated sizes."""
        by = defaultdict(list)
        for p in self.points:
            by[p.size].append(p.y)
        return pooled_sd(by.values())[0]

    def __call__(self, x) -> np.ndarray:
        return self.E + self.a * (np.asarray(x, float) / self.x0) ** -self.alpha

    def boot_curves(self, x) -> np.ndarray | None:
        """The refits' values at ``x`` (R, len(x)); None without refits."""
        if self.boot is None:
            return None
        x = np.asarray(x, float)[None, :]
        b = self.boot
        return b["E"][:, None] + b["a"][:, None] * (x / self.x0) ** -b["alpha"][:, None]

    def interval(self, what: str) -> tuple[float, float] | None:
        if self.boot is None:
            return None
        b = self.boot
        v = b["a"] * self.x0 ** b["alpha"] if what == "A" else b[what]
        return _pct(v)

    def bounds(self) -> list[str]:
        """The constants of the point fit at a bound of their range."""
        out = []
        if self.case == 2:
            out.append("A = 0: no trend with size (alpha undetermined)")
        else:
            if self.case == 1:
                out.append("E at its bound 0")
            if math.isclose(self.alpha, ALPHA_MIN, rel_tol=1e-9):
                out.append(f"alpha at its bound {ALPHA_MIN:g}")
            if math.isclose(self.alpha, ALPHA_MAX, rel_tol=1e-9):
                out.append(f"alpha at its bound {ALPHA_MAX:g}")
        iv = self.interval("alpha")
        if iv and self.case != 2 and (iv[0] <= ALPHA_MIN * 1.0001 or iv[1] >= ALPHA_MAX * 0.9999):
            out.append("alpha's interval reaches a bound of its range: not pinned by the data")
        iv = self.interval("E")
        if iv and self.case != 1 and iv[0] <= 0.0:
            out.append("E's interval reaches its bound 0")
        return out

    def to_json(self) -> dict:
        d = {"family": self.label, "model": self.model, "runs": [p.run for p in self.points],
             "points": [{"run": p.run, "x": p.x, "y": p.y, "size": p.size, "seed": p.seed} for p in self.points],
             "sizes": self.sizes}
        if self.refused:
            return {**d, "fitted": False, "refused": self.refused}
        iv = {k: self.interval(k) for k in ("E", "A", "alpha")}
        return {**d, "fitted": True, "E": self.E, "A": self.A, "alpha": self.alpha, "x0": self.x0,
                "a_at_x0": self.a, "interval": {k: list(v) if v else None for k, v in iv.items()},
                "rms_residual": self.rms, "r2": self.r2, "dof": self.dof, "seed_sd": self.seed_sd(),
                "bounds": self.bounds(), "refits": 0 if self.boot is None else len(self.boot["E"]),
                "noise_sd": self.noise_sd, "no_interval": self.no_interval or None, "misfit": self.misfit or None}


def fit_family(label: str, model: str, points: list[Point], B: int = BOOTSTRAP, seed: int = SEED,
               noise_sd: float | None = None) -> FamilyFit:
    """Fit one family's points (with B bootstrap refits), or say why not. With ``noise_sd``, every
    refit's values also get normal noise of that sd (the seed noise the study measured)."""
    f = FamilyFit(label, model, sorted(points, key=lambda p: (p.x, p.run)))
    if len(f.sizes) < MIN_SIZES:
        f.refused = (f"{len(f.sizes)} size{'s' if len(f.sizes) != 1 else ''}"
                     f"{' (' + ', '.join(count(s) for s in f.sizes) + ')' if f.sizes else ''}: a fit of three "
                     f"constants needs at least {MIN_SIZES} distinct sizes")
        return f
    xs, ys = f.xs, f.ys
    f.x0 = float(np.exp(np.mean(np.log(sorted({p.x for p in f.points})))))
    pt = fit_many(xs[None], ys[None], f.x0)
    f.E, f.a, f.alpha, f.sse, f.case = (float(pt["E"][0]), float(pt["a"][0]), float(pt["alpha"][0]),
                                        float(pt["sse"][0]), int(pt["case"][0]))
    if f.n <= MIN_SIZES and not noise_sd:
        f.no_interval = (f"{f.n} runs for 3 constants: the curve passes through every point and resampling "
                         f"runs measures nothing; add a seed or a size")
        return f
    rng = np.random.default_rng([seed, zlib.crc32(label.encode())])
    codes = np.unique([p.size for p in f.points], return_inverse=True)[1].ravel()
    idx = _draws(codes, B, rng)
    Y = ys[idx]
    if noise_sd:
        f.noise_sd = float(noise_sd)
        Y = Y + noise_sd * rng.standard_normal(Y.shape)
    bt = fit_many(xs[idx], Y, f.x0)
    f.boot = {k: bt[k] for k in ("E", "a", "alpha")}
    f.misfit = misfit(f.sse, f.dof, f.noise_sd)     # a test of the point fit, against the noise the refits add
    return f


def chi2_quantile(dof: int, z: float = MISFIT_Z) -> float:
    """The chi-square quantile with ``dof`` degrees of freedom at the normal quantile ``z`` (Wilson-Hilferty:
    within 1% of the exact 99th percentile from one degree of freedom up)."""
    c = 2.0 / (9.0 * dof)
    return dof * (1.0 - c + z * math.sqrt(c)) ** 3


def misfit(sse: float, dof: int, noise_sd: float | None) -> str:
    """"" when the residuals are as large as the seed noise allows (or nothing can be tested), else why not."""
    if not noise_sd or dof < 1:
        return ""
    chi2, q = sse / noise_sd ** 2, chi2_quantile(dof)
    if chi2 <= q:
        return ""
    return (f"misfit: the curve misses its runs by RMS {math.sqrt(sse / (dof + 3)):.4f} against seed noise sd "
            f"{noise_sd:.4f} (chi-square {chi2:.1f} on {dof} dof, 99% bound {q:.1f}): the power law does not "
            f"describe this family here")


# ---------------------------------------------------------------- two families

@dataclass
class Crossing:
    """Where two families' curves cross (``roots``), searched over [lo, hi]."""
    a: str
    b: str
    lo: float
    hi: float
    roots: list[dict] = field(default_factory=list)   # x, interval, who is ahead below / above, verdict
    frac: float | None = None         # fraction of the paired refits that cross in the range
    ahead: str | None = None          # with no crossing: the family ahead (lower) throughout
    not_judged: str = ""              # a family's curve does not describe its runs (misfit)

    @property
    def none_verdict(self) -> str:
        """With no crossing in the point fit: "no crossing", or undecided when many refits cross."""
        if self.not_judged:
            return self.not_judged
        if self.frac is not None and self.frac > 1 - DECIDE:
            return f"undecided: {100 * self.frac:.0f}% of the refits cross within the range"
        return "no crossing"

    def to_json(self) -> dict:
        return {"a": self.a, "b": self.b, "search": [self.lo, self.hi], "frac_refits_crossing": self.frac,
                "crossings": self.roots, "ahead_throughout": self.ahead,
                "verdict": None if self.roots else self.none_verdict}


def _roots(lxs: np.ndarray, d: np.ndarray):
    """Sign changes of each row of ``d`` over log-x ``lxs``: (mask (R, K-1), log x of each (R, K-1))."""
    d = np.where(d == 0, 1e-300, d)
    s0, s1 = d[:, :-1], d[:, 1:]
    mask = s0 * s1 < 0
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(mask, s0 / (s0 - s1), 0.0)
    return mask, lxs[:-1] + t * np.diff(lxs)


def crossing(fa: FamilyFit, fb: FamilyFit, K: int = 801) -> Crossing:
    """Where ``fa`` and ``fb`` cross within SEARCH x of their data, with intervals from the paired refits."""
    xs_all = np.concatenate([fa.xs, fb.xs])
    lo, hi = float(xs_all.min()) / SEARCH, float(xs_all.max()) * SEARCH
    c = Crossing(fa.label, fb.label, lo, hi)
    c.not_judged = _not_judged(fa, fb)
    xs = np.geomspace(lo, hi, K)
    lxs = np.log(xs)
    d = (fa(xs) - fb(xs))[None]
    mask, lr = _roots(lxs, d)
    pts = [float(v) for v in lr[0][mask[0]]]
    ca, cb = fa.boot_curves(xs), fb.boot_curves(xs)
    bmask = blr = None
    if ca is not None and cb is not None:
        R = min(len(ca), len(cb))
        bmask, blr = _roots(lxs, ca[:R] - cb[:R])
        c.frac = float(bmask.any(1).mean())
    if not pts:
        c.ahead = fa.label if float(np.median(d)) < 0 else fb.label
        return c
    for lroot in pts:
        k = int(np.clip(np.searchsorted(lxs, lroot), 1, K - 1))
        below = fa.label if d[0, k - 1] < 0 else fb.label
        above = fb.label if below == fa.label else fa.label
        root = {"x": math.exp(lroot), "interval": None, "ahead_below": below, "ahead_above": above}
        iv = None
        if bmask is not None:
            dist = np.where(bmask, np.abs(blr - lroot), np.inf)
            j = np.argmin(dist, axis=1)
            has = bmask.any(1)
            iv = _pct(np.exp(blr[np.arange(len(j)), j][has]))
            root["interval"] = list(iv) if iv else None
        if c.not_judged:
            root["verdict"] = c.not_judged
        elif bmask is None:
            who = " and ".join(f.label for f in (fa, fb) if f.boot is None)
            root["verdict"] = f"undecided: no interval ({who}: three runs at three sizes, no refits)"
        elif iv is None or c.frac < DECIDE:
            root["verdict"] = (f"undecided: only {100 * c.frac:.0f}% of the refits cross within the range "
                               f"(needs {100 * DECIDE:.0f}%)")
        elif iv[1] / iv[0] > WIDE:
            root["verdict"] = f"undecided: the interval spans {iv[1] / iv[0]:.0f}x (more than {WIDE:g}x)"
        else:
            root["verdict"] = "decided"
        c.roots.append(root)
    return c


@dataclass
class Prediction:
    """Every fitted family's value at ``x``, and every pair's gap (a - b), with intervals."""
    x: float
    values: list[dict]
    gaps: list[dict]

    def to_json(self) -> dict:
        return {"x": self.x, "values": self.values, "gaps": self.gaps}


def predict(fits: list[FamilyFit], pairs: list[tuple[FamilyFit, FamilyFit]], x: float) -> Prediction:
    vals = []
    for f in fits:
        bc = f.boot_curves([x])
        iv = _pct(bc[:, 0]) if bc is not None else None
        vals.append({"family": f.label, "value": float(f([x])[0]), "interval": list(iv) if iv else None,
                     "beyond_data": _beyond(f.xs, x), "misfit": bool(f.misfit)})
    gaps = []
    for fa, fb in pairs:
        g = float(fa([x])[0] - fb([x])[0])
        ca, cb = fa.boot_curves([x]), fb.boot_curves([x])
        iv = None
        if ca is not None and cb is not None:
            R = min(len(ca), len(cb))
            iv = _pct(ca[:R, 0] - cb[:R, 0])
        if iv is None:
            verdict = "undecided: no interval"
        elif iv[1] < 0:
            verdict = f"{fa.label} ahead"
        elif iv[0] > 0:
            verdict = f"{fb.label} ahead"
        else:
            verdict = "undecided: the interval holds 0"
        verdict = _not_judged(fa, fb) or verdict
        gaps.append({"a": fa.label, "b": fb.label, "gap": g, "interval": list(iv) if iv else None,
                     "verdict": verdict})
    return Prediction(float(x), vals, gaps)


def _not_judged(fa: FamilyFit, fb: FamilyFit) -> str:
    bad = [f.label for f in (fa, fb) if f.misfit]
    if not bad:
        return ""
    return (f"not judged: {bad[0]}'s curve does not describe its runs (misfit)" if len(bad) == 1 else
            f"not judged: the curves of {' and '.join(bad)} do not describe their runs (misfit)")


def _beyond(xs: np.ndarray, x: float) -> float:
    """How far ``x`` lies outside the data: a factor >= 1 (1: inside)."""
    return float(max(1.0, x / xs.max(), xs.min() / x))
