"""Backtest a study's scaling fits on its own runs: fit without the largest size, predict it, check.

For every family with completed runs at four sizes or more, the study's runs less that family's runs at
its largest size are fitted (``elmanlab report --fit --predict LARGEST``, the other families' runs kept,
so the pooled seed noise is the study's), and the held-out runs are held against the prediction
(``elmanlab report --check-fit``): is the largest size inside the interval of a fit of the smaller
ones? This is the extrapolation the 400M prediction makes, at a factor of two, on data whose answer
is known.

    python3 benchmarks/fit_backtest.py docs/results/scaling-small \\
        --out benchmarks/results/fit-backtest/scaling-small.json [--at-step 1500] [--metric val_bpb]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from elmanlab.errors import ElmanlabError
from elmanlab.report import Report
from elmanlab.report.collect import collect_runs
from elmanlab.report.fmt import count
from elmanlab.runs import SUMMARY_FILE

MIN_SIZES = 4                     # three to fit, one to predict


def _copy(runs, dest: Path) -> None:
    dest.mkdir(parents=True)
    for r in runs:
        shutil.copytree(r.path, dest / r.id, ignore=shutil.ignore_patterns("*.pt", "checkpoint*", "logs"))


def backtest(study: Path, metric: str = "loss_last100", at_step: int | None = None, bootstrap: int = 1000) -> dict:
    runs, _ = collect_runs(study)
    done = [r for r in runs if r.status == "completed" and (r.path / SUMMARY_FILE).is_file() and r.params]
    sizes = defaultdict(set)
    for r in done:
        sizes[r.model].add(r.scale_n)
    out = {"study": str(study), "metric": metric, "at_step": at_step, "bootstrap": bootstrap, "families": []}
    for model in sorted(m for m, s in sizes.items() if len(s) >= MIN_SIZES):
        top = max(sizes[model])
        held = [r for r in done if r.model == model and r.scale_n == top]
        with tempfile.TemporaryDirectory() as tmp:
            fit_dir, check_dir = Path(tmp) / "fit", Path(tmp) / "check"
            _copy([r for r in done if r not in held], fit_dir)
            _copy(held, check_dir)
            Report(fit_dir, metric=metric, fit=True, predict=[str(int(top))], bootstrap=bootstrap,
                   at_step=at_step).write()
            chk = Report(check_dir, metric=metric, check_fit=fit_dir / "fit.json").check.to_json()
        (line,) = [ln for ln in chk["lines"] if ln["family"] == model] or [None]
        out["families"].append({"family": model, "fitted_sizes": sorted(s for s in sizes[model] if s != top),
                                "held_out": top, "runs": [r.id for r in held], "check": line,
                                "notes": chk["notes"]})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("study", type=Path, help="a study's --out folder (e.g. docs/results/scaling-small)")
    ap.add_argument("--metric", default="loss_last100", choices=("loss_last100", "val_bpb"))
    ap.add_argument("--at-step", type=int, dest="at_step", help="fit and check each run's value at this step")
    ap.add_argument("--bootstrap", type=int, default=1000, help="refits per fit (default 1000)")
    ap.add_argument("--out", type=Path, help="write the backtest here as JSON")
    a = ap.parse_args(argv)
    try:
        if not a.study.is_dir():
            raise ElmanlabError(f"{a.study}: not a folder; give a study's --out folder")
        res = backtest(a.study, a.metric, a.at_step, a.bootstrap)
    except ElmanlabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    what = a.metric + (f" at step {a.at_step}" if a.at_step else "")
    print(f"{a.study}: {what}; each family fitted without its largest size, which it then predicts")
    if not res["families"]:
        print(f"no family has completed runs at {MIN_SIZES} sizes or more: nothing to backtest")
    for f in res["families"]:
        c = f["check"]
        if c is None:
            print(f"{f['family']}: held out {count(f['held_out'])}: not checked ({'; '.join(f['notes'])})")
            continue
        iv = c["interval"]
        print(f"{f['family']}: fitted at {', '.join(count(s) for s in f['fitted_sizes'])}; at {count(f['held_out'])} "
              f"observed {c['mean']:.4f} (n = {len(c['values'])}), predicted {c['predicted']:.4f}"
              + (f" [{iv[0]:.4f}, {iv[1]:.4f}]" if iv else "") + f": {c['verdict']}")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(res, indent=2) + "\n")
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
