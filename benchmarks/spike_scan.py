"""Where `elmanlab report`'s loss-spike and late-rise thresholds come from: every run's largest line rise.

For each completed run under the given folders (read as the report reads them, ``collect_runs``), the
largest rise of a training line above the median of the lines before it (``Run.line_rises``: past
step SPIKE_AFTER, SPIKE_WINDOW lines before) and the spikes the report names (``Run.loss_spikes``: a
rise of SPIKE_NATS or more); and the final last-100 loss above its lowest at a line of the run's second
half (``Run.loss_rise_late``; the report names a late rise of LATE_RISE_NATS or more); and the lines past
step SPIKE_AFTER whose step gradient norm reached BURST_GRAD_NORM (``Run.gradient_bursts``, results.csv's
grad_bursts). Prints the runs by their largest rise and the gap between the runs without a spike and those
with one, then the runs by their late rise, then by their gradient bursts, and writes the JSON.

    python3 benchmarks/spike_scan.py docs/results benchmarks/results/runs \\
        --out benchmarks/results/spike-scan.json
"""
from __future__ import annotations

import argparse
import sys

from _harness import save_json
from elmanlab.errors import ElmanlabError
from elmanlab.hardware import source_info
from elmanlab.report.collect import collect_runs
from elmanlab.report.instability import BURST_GRAD_NORM, LATE_RISE_NATS, SPIKE_AFTER, SPIKE_NATS, SPIKE_WINDOW


def scan(folders) -> list[dict]:
    rows = []
    for folder in folders:
        runs, _ = collect_runs(folder)
        for r in runs:
            rises = r.line_rises() if r.status == "completed" else []
            if not rises:
                continue
            top = max(rises, key=lambda ev: ev["rise"])
            late = r.loss_rise_late() or {}
            bursts = r.gradient_bursts()
            rows.append({"folder": str(folder), "run": r.id, "model": r.model, "params": r.params,
                         "largest_rise": top["rise"], "at_step": top["step"],
                         "spikes": [ev["step"] for ev in r.loss_spikes()],
                         "late_rise": late.get("rise"), "late_best_step": late.get("best_step"),
                         "grad_bursts": None if bursts is None else [[b["step"], b["grad_norm_max"]] for b in bursts]})
    if not rows:
        raise ElmanlabError(f"no completed run with training lines under {', '.join(map(str, folders))}")
    return sorted(rows, key=lambda x: -x["largest_rise"])


def _label(x: dict) -> str:
    """A row's folder/run, its last 60 characters (the printed tables' first column)."""
    return (x["folder"].rstrip("/") + "/" + x["run"])[-60:]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+", help="folders of runs (study output folders, or folders of them)")
    ap.add_argument("--top", type=int, default=15, help="runs to print, by largest rise (default 15)")
    ap.add_argument("--out", help="write every run's row to this JSON file")
    args = ap.parse_args(argv)
    try:
        rows = scan(args.folders)
    except ElmanlabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    calm = [x["largest_rise"] for x in rows if not x["spikes"]]
    spiky = [x["largest_rise"] for x in rows if x["spikes"]]
    print(f"{len(rows)} runs; a spike is a rise of {SPIKE_NATS} nats or more above the median of the "
          f"{SPIKE_WINDOW} lines before, past step {SPIKE_AFTER}")
    print(f"{'run':<60} {'largest rise':>12} {'at step':>8}  spikes")
    for x in rows[:args.top]:
        print(f"{_label(x):<60} {x['largest_rise']:>12.3f} {x['at_step']:>8}  "
              f"{' '.join(map(str, x['spikes'])) or '-'}")
    print(f"\nwithout a spike: {len(calm)} runs, largest rise {max(calm) if calm else float('nan'):.3f}; "
          f"with one: {len(spiky)} runs, rises {min(spiky) if spiky else float('nan'):.3f}-"
          f"{max(spiky) if spiky else float('nan'):.3f}")
    late = sorted((x for x in rows if x["late_rise"] is not None), key=lambda x: -x["late_rise"])
    print(f"\nthe final last-100 loss above its lowest in the run's second half (a late rise: {LATE_RISE_NATS} "
          "nats or more)")
    print(f"{'run':<60} {'late rise':>12} {'best at':>8}")
    for x in late[:args.top]:
        print(f"{_label(x):<60} {x['late_rise']:>+12.4f} {x['late_best_step']:>8}")
    rec = [x for x in rows if x["grad_bursts"] is not None]
    print(f"\ngradient bursts (a line past step {SPIKE_AFTER} with a step gradient norm of {BURST_GRAD_NORM:g} or more), "
          f"{len(rec)} runs that record grad_norm_max")
    print(f"{'run':<60} {'bursts':>6} {'largest':>8}  steps")
    for x in sorted(rec, key=lambda x: (-len(x["grad_bursts"]), x["run"])):
        b = x["grad_bursts"]
        print(f"{_label(x):<60} {len(b):>6} "
              f"{max((g for _, g in b), default=0):>8.1f}  {' '.join(str(s) for s, _ in b) or '-'}")
    if args.out:
        save_json(args.out, {"what": "each run's largest training-line rise, its loss spikes, its late rise and its "
                                     "gradient bursts ([step, grad_norm_max]; null: not recorded) (elmanlab report)",
                             "spike_nats": SPIKE_NATS, "window": SPIKE_WINDOW, "after_step": SPIKE_AFTER,
                             "late_rise_nats": LATE_RISE_NATS, "burst_grad_norm": BURST_GRAD_NORM,
                             "folders": args.folders, "runs": rows, "source": source_info()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
