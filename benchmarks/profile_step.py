"""Where one training step's GPU time goes: a kernel-level profile of the training loop's step.

Builds a model at a target size (or width) exactly as ``benchmarks/throughput.py`` does, runs a few
untimed warm-up steps (Triton autotune, compilation), then profiles ``--steps`` steps of the training
loop's own step (``elmanlab.train``: bf16 autocast, Schedule-Free AdamW) with torch.profiler, and
prints:

- wall time per step against GPU-busy time per step (the union of kernel intervals): a large gap
  means the step is bound by the host (launch overhead, synchronisation), not by the GPU;
- GPU time per step by kind of kernel (matmul, Triton, elementwise / reduction, optimizer, other);
- the kernels that take the most GPU time, with launches per step.

JSON (with the whole kernel table) is written to ``--out``.json and the table to ``--out``.md.

    python3 benchmarks/profile_step.py --model mamba2 --params 400M --batch 16
    python3 benchmarks/profile_step.py --model mamba2 --params 400M --option chunk_size=256
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

KINDS = [  # (kind, regex on the kernel name), first match wins
    ("matmul", re.compile(r"gemm|cutlass|nvjet|sm90_xmma|sm80_xmma|cublas|ampere_bf16|_s16816|wgmma", re.I)),
    ("optimizer", re.compile(r"multi_tensor_apply|foreach|fused_adam", re.I)),
    ("elementwise/reduce", re.compile(r"at::native|elementwise|reduce_kernel|vectorized|unrolled|"
                                      r"indexSelect|index_|scatter|gather|embedding|softmax|"
                                      r"cross_entropy|nll_loss|cat_|CatArray|copy_kernel|fill", re.I)),
    ("memcpy/memset", re.compile(r"^Memcpy|^Memset", re.I)),
]


def kind_of(name: str) -> str:
    for kind, rx in KINDS:
        if rx.search(name):
            return kind
    return "other (Triton / custom CUDA)"


def busy_time(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals."""
    total, end = 0.0, float("-inf")
    for s, e in sorted(intervals):
        if s >= end:
            total += e - s
            end = e
        elif e > end:
            total += e - end
            end = e
    return total


def summarize(events: list[dict], steps: int, wall_s: float, top: int = 30) -> dict:
    """Summary of chrome-trace kernel events (cat 'kernel', ts / dur in microseconds)."""
    kern = [e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and "dur" in e]
    by_name: dict[str, list[float]] = defaultdict(list)
    for e in kern:
        by_name[e["name"]].append(float(e["dur"]))
    busy_us = busy_time([(float(e["ts"]), float(e["ts"]) + float(e["dur"])) for e in kern])
    kinds: dict[str, float] = defaultdict(float)
    table = []
    for name, durs in by_name.items():
        kinds[kind_of(name)] += sum(durs)
        table.append({"kernel": name, "kind": kind_of(name), "ms_per_step": sum(durs) / 1e3 / steps,
                      "launches_per_step": len(durs) / steps, "mean_us": sum(durs) / len(durs)})
    table.sort(key=lambda r: -r["ms_per_step"])
    return {"steps": steps, "wall_ms_per_step": 1e3 * wall_s / steps,
            "gpu_busy_ms_per_step": busy_us / 1e3 / steps,
            "kernel_launches_per_step": len(kern) / steps,
            "by_kind_ms_per_step": {k: v / 1e3 / steps for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
            "kernels": table, "top": top}


def markdown(title: str, s: dict) -> str:
    wall, busy = s["wall_ms_per_step"], s["gpu_busy_ms_per_step"]
    lines = [f"# {title}", "",
             f"wall {wall:.1f} ms/step, GPU busy {busy:.1f} ms/step ({100 * busy / wall:.0f}%), "
             f"{s['kernel_launches_per_step']:.0f} kernels/step, {s['steps']} profiled steps", "",
             "| kind | ms/step | share of busy |", "|---|---|---|"]
    for k, v in s["by_kind_ms_per_step"].items():
        lines.append(f"| {k} | {v:.2f} | {100 * v / max(busy, 1e-9):.0f}% |")
    lines += ["", "| kernel | kind | ms/step | launches/step | mean us |", "|---|---|---|---|---|"]
    for r in s["kernels"][:s["top"]]:
        name = r["kernel"] if len(r["kernel"]) <= 90 else r["kernel"][:87] + "..."
        lines.append(f"| `{name}` | {r['kind']} | {r['ms_per_step']:.2f} | {r['launches_per_step']:.1f} | "
                     f"{r['mean_us']:.1f} |")
    return "\n".join(lines) + "\n"


def parse_options(items: list[str]) -> dict:
    out = {}
    for it in items:
        if "=" not in it:
            raise SystemExit(f"error: --option wants KEY=VALUE, got {it!r}")
        k, v = it.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="model family (elmanlab models)")
    ap.add_argument("--params", default="400M", help="target size, solved as elmanlab size does")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="a layer option (repeatable), e.g. chunk_size=256")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (autotune, compilation)")
    ap.add_argument("--steps", type=int, default=5, help="profiled steps")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (as train --compile)")
    ap.add_argument("--cuda-graph", action="store_true",
                    help="replay forward + backward as one CUDA graph (as train --cuda-graph); needs --warmup >= 2")
    ap.add_argument("--top", type=int, default=30, help="kernels listed")
    ap.add_argument("--out", default=None, help="output stem for .json / .md (default: print only)")
    args = ap.parse_args(argv)
    if args.cuda_graph and args.warmup < 2:
        print("error: --cuda-graph needs --warmup 2 or more (one eager step, then the capture)", file=sys.stderr)
        return 2
    if args.cuda_graph and args.compile:
        print("error: --cuda-graph and --compile cannot be combined: drop one", file=sys.stderr)
        return 2
    import torch
    if not torch.cuda.is_available():
        print("error: profile_step needs a CUDA GPU", file=sys.stderr)
        return 2
    from torch.profiler import ProfilerActivity, profile
    from elmanlab.errors import ElmanlabError
    from _harness import bench_trainer, run_steps
    from elmanlab.sizing import model_config
    options = parse_options(args.option)
    try:
        mcfg = model_config(args.model, params=args.params, options=options)
    except ElmanlabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with bench_trainer(mcfg, args.batch, args.seq_len, args.warmup + 2 * args.steps,
                       compile=args.compile, cuda_graph=args.cuda_graph) as tr, tempfile.TemporaryDirectory() as tmp:
        print(f"{args.model} {tr.n_params / 1e6:.0f}M: {args.warmup} warm-up steps (a fresh machine tunes Triton "
              f"kernels here, minutes), then {args.steps} timed and {args.steps} profiled ...", flush=True)
        _, times = run_steps(tr, args.warmup)
        warm_s = sum(times)
        # wall time without the profiler first (a live profiler and its trace slow the host down)
        wall_plain = sum(run_steps(tr, args.steps)[1])
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            wall = sum(run_steps(tr, args.steps)[1])
        trace = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(trace)
        events = json.loads(Path(trace).read_text())["traceEvents"]
        del prof
        n_params, peak = tr.n_params, torch.cuda.max_memory_allocated()
    s = summarize(events, args.steps, wall, args.top)
    s.update(model=args.model, params=n_params, dim=mcfg.dim, depth=mcfg.depth, batch=args.batch,
             seq_len=args.seq_len, options=options, compile=args.compile,
             cuda_graph=args.cuda_graph,
             gpu=torch.cuda.get_device_name(), warmup_s=round(warm_s, 1),
             wall_ms_per_step_unprofiled=1e3 * wall_plain / args.steps,
             tokens_per_s_unprofiled=args.batch * args.seq_len * args.steps / wall_plain,
             peak_memory_gb=peak / 1e9)
    opts = " ".join(f"{k}={v}" for k, v in s["options"].items())
    title = (f"{args.model} {n_params / 1e6:.0f}M ({mcfg.dim}x{mcfg.depth}{' ' + opts if opts else ''}) "
             f"B{args.batch} x {args.seq_len}{' compiled' if args.compile else ''}"
             f"{' cuda-graph' if args.cuda_graph else ''}, {s['gpu']}: "
             f"{s['tokens_per_s_unprofiled'] / 1e3:.1f}K tok/s unprofiled "
             f"({s['wall_ms_per_step_unprofiled']:.1f} ms/step), warm-up {warm_s:.0f} s")
    md = markdown(title, s)
    print(md, flush=True)
    if args.out:
        from elmanlab.fsutil import atomic_write_json, atomic_write_text
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.out + ".json", s)
        atomic_write_text(args.out + ".md", md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
