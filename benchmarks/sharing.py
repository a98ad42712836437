"""What sharing one GPU between training processes gains: one configuration alone, then K copies at once.

``elmanlab study --jobs-per-gpu`` runs several training processes on one GPU, and ``--solo-above``
runs the large ones alone, on the premise that the GPU time-slices between processes (no CUDA MPS):
sharing then only fills the gaps one process leaves, and K runs together train about as many tokens
per second as one alone. This measures it. For each K in ``--jobs`` it starts K ``elmanlab train``
processes of the same configuration at once (seeds 42, 43, ...; no held-out evaluation) and reads
each run's summary.json: tokens/s per run (timed over the steps after warm-up), their sum, and the
sum over the tokens/s of one run alone (``gain``: above 1, sharing trains more tokens per second).

    python3 benchmarks/sharing.py --model e1 --params 200M --steps 300 --jobs 1,2 \
        --out benchmarks/results/sharing-e1-200m.json

Prints a table and writes the JSON (the GPU, each run's record, the commit) after every K.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_together(k: int, args, work: Path) -> list[dict]:
    """K train processes of the configuration at once; their summary.json records."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if k > 1:
        env["ELMANLAB_GPU_JOBS"] = str(k)
    procs = []
    for i in range(k):
        out = work / f"k{k}-{i}"
        argv = [sys.executable, "-m", "elmanlab", "train", args.model, "--params", args.params,
                "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len),
                "--seed", str(42 + i), "--eval-bytes", "0", "--out", str(out)]
        if args.device:
            argv += ["--device", args.device]
        if args.data:
            argv += ["--data", args.data]
        log = open(work / f"k{k}-{i}.log", "wb")
        procs.append((subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT), out, log))
    runs = []
    for p, out, log in procs:
        rc = p.wait()
        log.close()
        summ = out / "summary.json"
        if rc != 0 or not summ.exists():
            tail = (work / f"{out.name}.log").read_text(errors="replace").splitlines()[-5:]
            raise SystemExit(f"error: the run {out.name} failed (exit {rc}): {' | '.join(tail)}")
        runs.append(json.loads(summ.read_text()))
    return runs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="e1", help="model family (default e1)")
    ap.add_argument("--params", default="200M", help="parameter target (default 200M)")
    ap.add_argument("--steps", type=int, default=300, help="steps per run (default 300)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--jobs", default="1,2", help="how many runs at once, each in turn (default 1,2; 1 first)")
    ap.add_argument("--device", default=None, help="passed to train (default: train's own, CUDA when present)")
    ap.add_argument("--data", default=None, help="training data (default: the embedded corpus)")
    ap.add_argument("--out", required=True, help="the JSON to write")
    args = ap.parse_args(argv)
    try:
        jobs = [int(x) for x in args.jobs.split(",")]
    except ValueError:
        jobs = []
    if not jobs or jobs[0] != 1 or any(k < 1 for k in jobs):
        ap.error(f"--jobs takes counts starting with 1 (the run alone), e.g. 1,2,4; got {args.jobs!r}")
    out = Path(args.out)
    commit = os.environ.get("ELMANLAB_SOURCE_COMMIT") or subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip() or None
    result = {"benchmark": "sharing", "model": args.model, "params": args.params, "steps": args.steps,
              "batch_size": args.batch_size, "seq_len": args.seq_len, "commit": commit, "rows": []}
    alone = None
    print(f"{'jobs':>4}  {'tok/s each':>22}  {'together':>10}  {'gain':>5}  {'wall s':>7}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for k in jobs:
            t0 = time.time()
            runs = run_together(k, args, Path(tmp))
            tps = [r["tokens_per_s"] for r in runs]
            alone = tps[0] if k == 1 else alone
            row = {"jobs": k, "tokens_per_s": tps, "together": sum(tps), "gain": sum(tps) / alone,
                   "wall_s": round(time.time() - t0, 1), "peak_memory_gb": [r.get("peak_memory_gb") for r in runs],
                   "kernel": runs[0].get("kernel"), "gpu_jobs": [r.get("gpu_jobs") for r in runs]}
            result["rows"].append(row)
            result.setdefault("device", runs[0].get("device"))
            result.setdefault("versions", runs[0].get("versions"))
            result.setdefault("dim_depth", f"{runs[0].get('dim')}x{runs[0].get('depth')}")
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp_out = out.with_suffix(".json.tmp")
            tmp_out.write_text(json.dumps(result, indent=1))
            tmp_out.replace(out)
            print(f"{k:>4}  {', '.join(f'{t:,.0f}' for t in tps):>22}  {sum(tps):>10,.0f}  {row['gain']:>5.2f}  "
                  f"{row['wall_s']:>7.0f}", flush=True)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
