"""Where `elmanlab report`'s loss-spike threshold comes from: every run's largest line rise.

For each completed run under the given folders (read as the report reads them, ``collect_runs``), the
largest rise of a training line above the median of the lines before it (``Run.line_rises``: past
step SPIKE_AFTER, SPIKE_WINDOW lines before) and the spikes the report names (``Run.loss_spikes``: a
rise of SPIKE_NATS or more). Prints the runs by their largest rise and the gap between the runs
without a spike and those with one, and writes the JSON.

    python3 benchmarks/spike_scan.py docs/results benchmarks/results/runs \\
        --out benchmarks/results/spike-scan.json
"""
from __future__ import annotations

import argparse
import sys

from _harness import save_json
from elmanlab.errors import ElmanlabError
from elmanlab.hardware import source_info
from elmanlab.report.collect import SPIKE_AFTER, SPIKE_NATS, SPIKE_WINDOW, collect_runs


def scan(folders) -> list[dict]:
    rows = []
    for folder in folders:
        runs, _ = collect_runs(folder)
        for r in runs:
            rises = r.line_rises() if r.status == "completed" else []
            if not rises:
                continue
            top = max(rises, key=lambda ev: ev["rise"])
            rows.append({"folder": str(folder), "run": r.id, "model": r.model, "params": r.params,
                         "largest_rise": top["rise"], "at_step": top["step"],
                         "spikes": [ev["step"] for ev in r.loss_spikes()]})
    if not rows:
        raise ElmanlabError(f"no completed run with training lines under {', '.join(map(str, folders))}")
    return sorted(rows, key=lambda x: -x["largest_rise"])


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
        print(f"{(x['folder'].rstrip('/') + '/' + x['run'])[-60:]:<60} {x['largest_rise']:>12.3f} {x['at_step']:>8}  "
              f"{' '.join(map(str, x['spikes'])) or '-'}")
    print(f"\nwithout a spike: {len(calm)} runs, largest rise {max(calm) if calm else float('nan'):.3f}; "
          f"with one: {len(spiky)} runs, rises {min(spiky) if spiky else float('nan'):.3f}-"
          f"{max(spiky) if spiky else float('nan'):.3f}")
    if args.out:
        save_json(args.out, {"what": "each run's largest training-line rise and its loss spikes (elmanlab report)",
                             "spike_nats": SPIKE_NATS, "window": SPIKE_WINDOW, "after_step": SPIKE_AFTER,
                             "folders": args.folders, "runs": rows, "source": source_info()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
