"""Where the reference's E1 / Mamba2 speed ratio comes from (issue 19's tokens/s column), from committed numbers.

The reference's 400M table (docs/reference/seeds-400m.csv) has E1 1760x26 at 0.66x Mamba2's tokens/s;
this lab measures 0.51x on an H100 (benchmarks/results/throughput-400m-*-h100-2026-12-07.json), and
every E1 row's ratio is 0.75-0.94x the reference's. This script splits each E1 row's training step into
its recurrence and the rest, and asks what the reference's recurrence must have cost:

* lab step (ms) = 16 x 512 tokens / the lab's tokens/s alone; reference step likewise from its table.
* slowdown = reference step / lab step, per row. Mamba2's is the yardstick for work that is not a chain
  of dependent steps (projections, convolutions, the chunked scan, the optimizer).
* lab recurrence = depth x the lab's Elman kernel, forward + backward at B16 T512 and the row's
  d_inner (``benchmarks/kernels.py``'s JSON; rows whose d_inner was not timed are left out), and the
  rest = lab step - lab recurrence.
* **Assumption**: the rest of E1's step slowed as Mamba2's whole step did. Then the reference's
  recurrence = reference step - Mamba2's slowdown x the lab's rest, per layer and per time step.
  The reference's E1 layer (ekg/elman ``elman/cuda/lib/mamba_gated_elman_gpu.cu.cc`` at 4c8967c8) runs
  its recurrence as a host loop: forward, one cuBLAS GEMM (h_{t-1} W_h^T) and one fused kernel a time
  step; backward, three element-wise kernels and one GEMM (W_h dv) a time step. So each time step
  launches 6 kernels and reads W_h (d_inner^2 bf16) twice; the implied rate of those reads is printed.
  The lab's kernel is one persistent launch per direction, W_h held on chip.

The output is a consistency check of one explanation, not a measurement of the reference's kernel: the
reference's GPU (an RTX 6000 Ada in its reports of the same week) and its CUDA library are not here.

    python3 benchmarks/reference_speed.py \\
        --speed benchmarks/results/throughput-400m-rows-h100-2026-12-07.json \\
        --speed benchmarks/results/throughput-400m-wide-h100-2026-12-07.json \\
        --kernels benchmarks/results/kernels-wide-h200-2026-12-03-run2.json \\
        --out benchmarks/results/speed/reference-400m-split
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from elmanlab.errors import ElmanlabError  # noqa: E402

TOKENS_PER_STEP = 16 * 512
# the reference's E1 recurrence, per time step (mamba_gated_elman_gpu.cu.cc, bf16 specialisation)
LAUNCHES_PER_STEP = 6           # forward: GEMM + FusedTanhGate; backward: 3 element-wise + GEMM
W_H_READS_PER_STEP = 2          # the two GEMMs


def read_reference(path: Path) -> list:
    """The reference's table: ``elmanlab.report.against.load_table``'s rows."""
    from elmanlab.report.against import load_table
    return load_table(path)


def read_speed(paths: list[Path]) -> tuple[list, set]:
    """The lab's rows timed alone at the reference's batch, 16 x 512 (``elmanlab.report.against.speed_runs``,
    given a loss run of that shape to select them by: each a Run with tokens_per_s), and the GPUs the
    files ran on."""
    from elmanlab.report.collect import Run
    from elmanlab.report.against import speed_runs
    shape = [Run(id="reference", path=Path("."), status="completed", model="-",
                 train={"batch_size": TOKENS_PER_STEP // 512, "seq_len": 512})]
    runs = [r for p in paths for r in speed_runs(p, shape)]
    return runs, {r.summary.get("gpu") for r in runs}


def read_kernels(path: Path) -> tuple[dict, str]:
    """d_inner -> the lab's tanh Elman kernel forward + backward ms at B16 T512 (its default variant)."""
    d = json.loads(path.read_text())
    out = {}
    for r in d["rows"]:
        if r.get("recurrence") != "tanh" or r.get("impl") != "ours":
            continue
        parts = r["shape"].split()
        if parts[0] != "B16" or parts[1] != "T512":
            continue
        out[int(parts[2][1:])] = float(r["fwdbwd_ms"])
    return out, d.get("gpu", "?")


def split(reference: list, lab: list, kernels: dict, baseline: str = "mamba2") -> dict:
    """Per reference row (``load_table``'s) with a lab run of it (``matches``: model, dim, depth,
    expansion, d_state): the step times, ratios, and for E1 rows with a timed kernel the split."""
    from elmanlab.report.against import matches
    lab_of = lambda row: next((r for r in lab if matches(row, r)), None)         # noqa: E731
    base_ref = next((r for r in reference if r.model == baseline and r.tok_s), None)
    if base_ref is None:
        raise SystemExit(f"error: no {baseline} row with tokens/s in the reference table")
    base_lab = lab_of(base_ref)
    if base_lab is None:
        raise SystemExit(f"error: no lab throughput row for {base_ref.label}: give --speed the JSON that has it")
    ms = lambda tok_s: TOKENS_PER_STEP / tok_s * 1e3            # noqa: E731
    base_slow = ms(base_ref.tok_s) / ms(base_lab.get("tokens_per_s"))
    rows = []
    for r in reference:
        lr = lab_of(r)
        if lr is None or not r.tok_s:
            continue
        lab_ms, ref_ms = ms(lr.get("tokens_per_s")), ms(r.tok_s)
        row = {"label": r.label, "lab_step_ms": round(lab_ms, 1), "reference_step_ms": round(ref_ms, 1),
               "slowdown": round(ref_ms / lab_ms, 3),
               "lab_x_baseline": round(lr.get("tokens_per_s") / base_lab.get("tokens_per_s"), 3),
               "reference_x_baseline": round(r.tok_s / base_ref.tok_s, 3)}
        d_inner = round(r.dim * r.expansion)
        if r.model == "e1" and d_inner in kernels:
            rec = r.depth * kernels[d_inner]
            rest = lab_ms - rec
            ref_rec = ref_ms - base_slow * rest
            per_step_us = ref_rec / r.depth / 512 * 1e3
            row.update({"d_inner": d_inner, "lab_kernel_ms_per_layer": kernels[d_inner],
                        "lab_recurrence_ms": round(rec, 1), "lab_recurrence_share": round(rec / lab_ms, 3),
                        "lab_rest_ms": round(rest, 1),
                        "implied_reference_recurrence_ms": round(ref_rec, 1),
                        "implied_recurrence_slowdown": round(ref_rec / rec, 2),
                        "implied_reference_us_per_time_step": round(per_step_us, 1),
                        "implied_us_per_launch": round(per_step_us / LAUNCHES_PER_STEP, 2),
                        "implied_w_h_read_tb_s": round(W_H_READS_PER_STEP * d_inner ** 2 * 2 / (per_step_us * 1e-6)
                                                       / 1e12, 2)})
        rows.append(row)
    return {"baseline": base_ref.label, "baseline_slowdown": round(base_slow, 3), "rows": rows,
            "time_step_fit": fit_time_step(rows)}


def fit_time_step(rows: list[dict]) -> dict | None:
    """Least squares of the implied time per step against the W_h bytes it reads: us = a + bytes / rate.
    a / 6 is then the fixed cost of a launch, rate the read rate; None below three rows."""
    pts = [(W_H_READS_PER_STEP * r["d_inner"] ** 2 * 2, r["implied_reference_us_per_time_step"])
           for r in rows if "implied_reference_us_per_time_step" in r]
    if len(pts) < 3:
        return None
    n = len(pts)
    mx, my = sum(x for x, _ in pts) / n, sum(y for _, y in pts) / n
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    slope = sum((x - mx) * (y - my) for x, y in pts) / sxx
    a = my - slope * mx
    resid = [y - (a + slope * x) for x, y in pts]
    return {"n_rows": n, "fixed_us_per_time_step": round(a, 2), "us_per_launch": round(a / LAUNCHES_PER_STEP, 2),
            "read_tb_s": round(1 / (slope * 1e-6) / 1e12, 2) if slope > 0 else None,
            "max_abs_residual_us": round(max(abs(e) for e in resid), 2)}


def table(result: dict, lab_gpu: str, kernel_gpu: str) -> str:
    lines = [f"Lab: tokens/s alone on {lab_gpu}; lab kernel: forward + backward on {kernel_gpu}. "
             f"Baseline {result['baseline']}: the reference's step is {result['baseline_slowdown']}x the lab's.",
             "Implied columns assume the rest of E1's step slowed as Mamba2's step did.", "",
             "| row | lab x Mamba2 | ref x Mamba2 | lab step ms | ref step ms | slowdown | lab recurrence ms (share) "
             "| implied ref recurrence ms | its slowdown | us per time step | W_h reads TB/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        rec = (f"{r['lab_recurrence_ms']} ({r['lab_recurrence_share']:.0%}) | {r['implied_reference_recurrence_ms']} "
               f"| {r['implied_recurrence_slowdown']}x | {r['implied_reference_us_per_time_step']} "
               f"| {r['implied_w_h_read_tb_s']}") if "lab_recurrence_ms" in r else "- | - | - | - | -"
        lines.append(f"| {r['label']} | {r['lab_x_baseline']:.2f}x | {r['reference_x_baseline']:.2f}x "
                     f"| {r['lab_step_ms']} | {r['reference_step_ms']} | {r['slowdown']:.2f}x | {rec} |")
    f = result.get("time_step_fit")
    if f:
        lines += ["", f"Fit over the {f['n_rows']} E1 rows with a timed kernel: the reference's time step = "
                  f"{f['fixed_us_per_time_step']} us ({f['us_per_launch']} us for each of its {LAUNCHES_PER_STEP} "
                  f"launches) + W_h's bytes read at {f['read_tb_s']} TB/s; largest residual "
                  f"{f['max_abs_residual_us']} us."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--against", default="docs/reference/seeds-400m.csv", help="the reference's table (CSV)")
    ap.add_argument("--speed", action="append", required=True, metavar="JSON",
                    help="benchmarks/throughput.py JSON with the lab's rows (repeatable)")
    ap.add_argument("--kernels", required=True, metavar="JSON", help="benchmarks/kernels.py JSON with the tanh "
                    "Elman kernel at B16 T512")
    ap.add_argument("--out", help="write OUT.json and OUT.md")
    args = ap.parse_args(argv)
    for flag, p in [("--against", args.against), ("--kernels", args.kernels), *(("--speed", x) for x in args.speed)]:
        if not Path(p).is_file():
            print(f"error: {flag} {p}: not found", file=sys.stderr)
            return 2
    try:
        lab, gpus = read_speed([Path(p) for p in args.speed])
        reference = read_reference(Path(args.against))
    except ElmanlabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if len(gpus) != 1:
        print(f"error: the --speed files come from several GPUs ({', '.join(sorted(gpus))}): give one GPU's",
              file=sys.stderr)
        return 2
    try:
        kernels, kernel_gpu = read_kernels(Path(args.kernels))
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as e:
        print(f"error: --kernels {args.kernels}: not a benchmarks/kernels.py JSON ({type(e).__name__}: {e}); "
              f"give the JSON its --out wrote", file=sys.stderr)
        return 2
    result = split(reference, lab, kernels)
    lab_gpu = gpus.pop()
    md = table(result, lab_gpu, kernel_gpu)
    print(md, end="")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        result.update({"lab_gpu": lab_gpu, "kernel_gpu": kernel_gpu, "speed": args.speed, "kernels": args.kernels,
                       "against": args.against, "launches_per_time_step": LAUNCHES_PER_STEP,
                       "w_h_reads_per_time_step": W_H_READS_PER_STEP})
        out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
        out.with_suffix(".md").write_text(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
