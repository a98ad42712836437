"""The reference's scaling-study loss, computed from this lab's runs: how much of its gap is the metric.

The reference's scaling claim (ekg/elman, scaling_results/, commit fa051d89; quoted in
docs/reference/seeds-scaling.md) reads each model's "last-100 average loss" off its training log with
one regex (run_scaling_study.py, ``extract_metrics``): the mean of the last min(100, n) logged losses.
The Elman models ran train.py, which logs the mean loss of the last 10 steps every 10 steps, so their
100 entries cover their last 1,000 steps. Mamba2 ran benchmark_baselines.py, which logs one step's loss
at step 1 and every 50th step; with 1,650-2,950 steps it logged 34-60 entries (its JSON's n_samples
equal 1 + final_step / 50 at every size), so its "last 100" is the mean of its whole run from step 1.

This lab's metrics.jsonl has a line every 10 steps with the mean loss since the previous line
(``log_every`` 10), which is train.py's entry exactly. For each run under the given folders this
script prints and writes:

- ``lab``: the lab's loss, the mean of the last 100 steps (summary.json ``loss_last100``);
- ``window_trainpy``: the mean of the last min(100, n) 10-step lines (the reference's Elman figure);
- ``window_baselines``: the mean of the last min(100, n) lines at step 10 and every 50th step (the
  reference's Mamba2 figure). Step 10's line, the mean of steps 1-10, stands in for the reference's
  step-1 loss, which is higher (about ln 256 = 5.55 nats or more), so this understates that window's
  mean a little;

and, for each run of another family beside a run of ``--baseline`` at the same size and seed, the gap
both ways: lab against lab, and the other family's ``window_trainpy`` against the baseline's
``window_baselines`` (the reference's way; negative: ahead of the baseline).

    python3 benchmarks/reference_metric.py docs/results/scaling-small \\
        --out docs/results/scaling-small/reference-metric.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from elmanlab.errors import ElmanlabError
from elmanlab.report.collect import collect_runs
from elmanlab.runs import load_run_config

ENTRIES = 100           # extract_metrics' "last 100"
TRAINPY_EVERY = 10      # train.py --log_every (default)
BASELINES_EVERY = 50    # benchmark_baselines.py --log_interval (default), plus step 1


def windows(lines: list[dict], log_every: int) -> dict:
    """The two reference windows over a run's training lines (``step``, ``loss``, by step)."""
    if log_every != TRAINPY_EVERY:
        raise ElmanlabError(f"the run logged every {log_every} steps; the reference's windows need "
                            f"log_every {TRAINPY_EVERY} (train --log-every {TRAINPY_EVERY})")
    every = [ln for ln in lines if ln["step"] % TRAINPY_EVERY == 0]
    if not every:
        raise ElmanlabError("the run has no training lines in metrics.jsonl; give a run that trained")
    sparse = [every[0]] + [ln for ln in every[1:] if ln["step"] % BASELINES_EVERY == 0]
    tp, bl = every[-ENTRIES:], sparse[-ENTRIES:]
    return {"window_trainpy": float(np.mean([ln["loss"] for ln in tp])), "trainpy_n": len(tp),
            "trainpy_from_step": tp[0]["step"] - TRAINPY_EVERY + 1,
            "window_baselines": float(np.mean([ln["loss"] for ln in bl])), "baselines_n": len(bl),
            "baselines_from_step": bl[0]["step"] if bl[0] is not every[0] else 1}


def run_rows(folders: list[str]) -> list[dict]:
    """One row per completed run under ``folders`` (as `elmanlab report` reads them), with its windows."""
    rows = []
    for folder in folders:
        runs, _ = collect_runs(folder)
        for r in sorted(runs, key=lambda r: r.id):
            if r.status != "completed" or r.get("loss_last100") is None:
                continue
            log_every = int(load_run_config(r.path).get("train", {}).get("log_every", TRAINPY_EVERY))
            rows.append({"run": r.id, "model": r.model, "params": r.params, "scale": r.scale_n, "seed": r.seed,
                         "steps": r.get("steps"), "lab": r.get("loss_last100"),
                         **windows(r.metrics(), log_every)})
    if not rows:
        raise ElmanlabError(f"no completed run under {', '.join(folders)}; give a study's output folder")
    return rows


def gaps(rows: list[dict], baseline: str) -> list[dict]:
    """Each other family's run against the baseline's run of the same scale and seed."""
    base = {(r["scale"], r["seed"]): r for r in rows if r["model"] == baseline}
    out = []
    for r in rows:
        b = base.get((r["scale"], r["seed"]))
        if r["model"] == baseline or b is None:
            continue
        out.append({"run": r["run"], "baseline_run": b["run"], "model": r["model"], "seed": r["seed"],
                    "params": r["params"], "gap_lab": r["lab"] - b["lab"],
                    "gap_reference_way": r["window_trainpy"] - b["window_baselines"]})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+", help="study output folders (or run folders) whose runs to read")
    ap.add_argument("--baseline", default="mamba2",
                    help="the family the reference trained with benchmark_baselines.py (default mamba2)")
    ap.add_argument("--out", help="write the rows and gaps to this JSON file")
    args = ap.parse_args(argv)
    try:
        rows = run_rows(args.folders)
    except ElmanlabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    gp = gaps(rows, args.baseline)
    print(f"{'run':<22} {'steps':>5} {'lab':>7} {'trainpy':>8} {'(from)':>7} {'baselines':>9} {'(n)':>4}")
    for r in rows:
        print(f"{r['run']:<22} {r['steps']:>5} {r['lab']:>7.4f} {r['window_trainpy']:>8.4f} "
              f"{r['trainpy_from_step']:>7} {r['window_baselines']:>9.4f} {r['baselines_n']:>4}")
    if gp:
        print(f"\ngap to {args.baseline} (nats; negative: ahead), same size and seed")
        print(f"{'run':<22} {'lab (last 100 steps, both)':>27} {'reference way':>14}")
        for g in gp:
            print(f"{g['run']:<22} {g['gap_lab']:>+27.4f} {g['gap_reference_way']:>+14.4f}")
    if args.out:
        Path(args.out).write_text(json.dumps({
            "what": "the reference scaling study's loss windows (ekg/elman fa051d89 run_scaling_study.py "
                    "extract_metrics) computed from this lab's metrics.jsonl",
            "baseline": args.baseline, "folders": args.folders, "runs": rows, "gaps": gp}, indent=1) + "\n")
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
