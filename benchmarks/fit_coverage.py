"""How often the report's scaling-fit intervals hold the truth: a simulation with known constants.

Two families whose true curves L(N) = E + A N^-alpha cross at 80M (tests/test_report_fit.py's:
"shallow" E 1.10, A 6.34, alpha 0.15; "steep" E 0.90, alpha 0.40) are sampled at a study's design (sizes
and seeds per size) with normal seed noise of a known sd, fitted as `elmanlab report --fit` fits them
(``elmanlab.report.fit``), and each 95% interval is checked against the true value: alpha, each family's
value at 400M, the gap between them at 400M, and the crossing. Two ways of making the refits:

- ``runs``: the runs of a family drawn with replacement (the report before 2026-12-07);
- ``runs+noise``: the same draws, plus normal noise on every value with the sd the study's repeated seeds
  give (pooled over both families' repeated sizes, as the report pools them), so that a family with
  three sizes, whose curve passes through its points, still carries the measured noise.

    python3 benchmarks/fit_coverage.py --trials 100 --out benchmarks/results/fit-coverage.json

Prints a table (the fraction of trials whose interval held the truth; 0.95 is the aim) and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from elmanlab.report.fit import Point, crossing, fit_family, pooled_sd, predict

SHALLOW = (1.10, 6.34, 0.15)
CROSS = 80e6
STEEP = (0.90, (SHALLOW[0] + SHALLOW[1] * CROSS ** -SHALLOW[2] - 0.90) * CROSS ** 0.40, 0.40)
AT = 400e6
M = 1e6
DESIGNS = {   # name: {size: seeds}
    "3 sizes, 2 seeds at the smallest (4 runs)": {20 * M: 2, 50 * M: 1, 100 * M: 1},
    "4 sizes, 2 seeds at the ends (6 runs: scaling-small)": {20 * M: 2, 50 * M: 1, 100 * M: 1, 200 * M: 2},
    "5 sizes, 2 seeds each (10 runs)": {20 * M: 2, 50 * M: 2, 100 * M: 2, 200 * M: 2, 400 * M: 2},
}
METHODS = ("runs", "runs+noise")


def law(c, n):
    return c[0] + c[1] * np.asarray(n, float) ** -c[2]


def one_trial(design: dict, noise: float, rng, B: int) -> dict:
    """Sample both families at ``design``, fit them both ways; per method, which intervals held the truth."""
    pts = {}
    for name, c in (("shallow", SHALLOW), ("steep", STEEP)):
        pts[name] = [Point(f"{name}-{n:.0f}-{k}", n, float(law(c, n) + noise * rng.standard_normal()), n)
                     for n, k_n in design.items() for k in range(k_n)]
    by = defaultdict(list)
    for name, ps in pts.items():
        for p in ps:
            by[(name, p.size)].append(p.y)
    sd, _ = pooled_sd(by.values())
    out = {}
    for method in METHODS:
        fits = {name: fit_family(name, name, ps, B=B, noise_sd=sd if method == "runs+noise" else None)
                for name, ps in pts.items()}
        fa, fb = fits["shallow"], fits["steep"]
        held = {}
        for name, c in (("shallow", SHALLOW), ("steep", STEEP)):
            iv = fits[name].interval("alpha")
            held[f"alpha {name}"] = None if iv is None else bool(iv[0] <= c[2] <= iv[1])
        pr = predict([fa, fb], [(fa, fb)], AT)
        for v, c in zip(pr.values, (SHALLOW, STEEP)):
            iv = v["interval"]
            held[f"L(400M) {v['family']}"] = None if iv is None else bool(iv[0] <= law(c, AT) <= iv[1])
        iv = pr.gaps[0]["interval"]
        true_gap = float(law(SHALLOW, AT) - law(STEEP, AT))
        held["gap at 400M"] = None if iv is None else bool(iv[0] <= true_gap <= iv[1])
        cr = crossing(fa, fb)
        roots = [r for r in cr.roots if r.get("interval")]
        held["crossing"] = bool(any(r["interval"][0] <= CROSS <= r["interval"][1] for r in roots)) if roots else False
        out[method] = {"held": held, "gap_width": None if iv is None else iv[1] - iv[0]}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=100, help="simulated studies per design and noise (default 100)")
    ap.add_argument("--noise", default="0.005,0.01,0.02", help="seed-noise sds, comma-separated (nats)")
    ap.add_argument("--refits", type=int, default=300, help="bootstrap refits per family (the report's default: 1000)")
    ap.add_argument("--seed", type=int, default=0, help="the simulation's seed")
    ap.add_argument("--out", help="write the results to this JSON file")
    args = ap.parse_args(argv)
    try:
        noises = [float(v) for v in args.noise.split(",")]
    except ValueError:
        print(f"error: --noise takes numbers separated by commas, got {args.noise!r}", file=sys.stderr)
        return 2
    if args.trials < 1 or args.refits < 20 or any(v <= 0 for v in noises):
        print("error: --trials must be >= 1, --refits >= 20 and every --noise > 0", file=sys.stderr)
        return 2
    rng = np.random.default_rng(args.seed)
    rows, t0 = [], time.time()
    for dname, design in DESIGNS.items():
        for noise in noises:
            acc = {m: defaultdict(list) for m in METHODS}
            widths = {m: [] for m in METHODS}
            for _ in range(args.trials):
                res = one_trial(design, noise, rng, args.refits)
                for m in METHODS:
                    for k, v in res[m]["held"].items():
                        acc[m][k].append(v)
                    if res[m]["gap_width"] is not None:
                        widths[m].append(res[m]["gap_width"])
            for m in METHODS:
                cov = {k: (float(np.mean([x for x in v if x is not None])) if any(x is not None for x in v)
                           else None) for k, v in acc[m].items()}
                rows.append({"design": dname, "noise_sd": noise, "method": m, "trials": args.trials,
                             "coverage": cov, "gap_interval_width_median":
                                 float(np.median(widths[m])) if widths[m] else None})
            print(f"  {dname}, noise {noise}: done ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    keys = list(rows[0]["coverage"])
    head = ["design", "noise", "method", *keys, "gap width"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        cells = [r["design"], f"{r['noise_sd']:g}", r["method"],
                 *("-" if r["coverage"][k] is None else f"{r['coverage'][k]:.2f}" for k in keys),
                 "-" if r["gap_interval_width_median"] is None else f"{r['gap_interval_width_median']:.3f}"]
        print("| " + " | ".join(cells) + " |")
    if args.out:
        try:
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                    cwd=Path(__file__).parent).stdout.strip() or None
        except OSError:
            commit = None
        Path(args.out).write_text(json.dumps({
            "what": "coverage of the report's 95% scaling-fit intervals in simulated studies of known constants",
            "true": {"shallow": SHALLOW, "steep": STEEP, "crossing": CROSS, "predict_at": AT},
            "settings": {"trials": args.trials, "refits": args.refits, "seed": args.seed, "noise": noises},
            "rows": rows, "commit": commit, "python": platform.python_version(),
            "numpy": np.__version__}, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
