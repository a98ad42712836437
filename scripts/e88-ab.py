#!/usr/bin/env python3
"""A/B of the E88 kernel variants (issue 17): correctness against the float64 reference, then the
recurrence alone timed forward and forward+backward, beside fla's chunk Gated DeltaNet at the same
key width (when fla is importable).

1. Correctness, per variant: n 32 / 48 / 64 (m = n), odd T, bf16 and fp32, with and without a
   gate; output, final state and every gradient (q, k, v, decay, S0, g) against the float64
   reference, outputs poisoned with NaN; the record of what ran must name the variant.
2. Timing: B16 and B64, T512, heads H56 n32, H64 n32, H32 n48, H44 n48 (value dim m = n, the
   layer's default), bf16 q/k/v, fp32 decay (as the E88 layer passes them); median of --reps
   CUDA-event timings after warm-up; fla's chunk_gated_delta_rule at key width H*n (heads of K128
   V256, as benchmarks/kernels.py does).

    python3 scripts/e88-ab.py --out /tmp/e88-ab.json                    # v2 and v3
    python3 scripts/e88-ab.py --out ab.json --kernels v3
    python3 scripts/e88-ab.py --out ab.json --kernels v2,v3 --c-sweep 4,6,9   # v3 at forced C too

Prints a table; writes JSON to --out (and a Markdown copy of the table beside it).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from _harness import cuda_time_ms as timeit  # noqa: E402

import elmanlab.ops.e88.fused as ef  # noqa: E402
from elmanlab.ops import implementations_used, reset_implementations_used  # noqa: E402
from elmanlab.ops.e88.reference import e88_scan_ref  # noqa: E402

BF = torch.bfloat16
T = 512
SHAPES = [(56, 32), (64, 32), (32, 48), (44, 48)]     # (H, n): issue 17's heads
BATCHES = [16, 64]
CHECKS = [  # B, T, H, n, dtype, nonlinearity, gate, S0
    (2, 37, 3, 32, BF, "tanh", None, True),
    (3, 37, 3, 48, BF, "tanh", "silu", True),
    (2, 37, 2, 64, BF, "tanh", None, False),
    (4, 129, 5, 48, BF, "tanh", None, True),
    (2, 37, 3, 48, torch.float32, "tanh", "sigmoid", True),
    (2, 21, 2, 32, torch.float32, "linear", None, True),
]
TOL = {BF: 1e-2, torch.float32: 1e-4}


def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def check(kernel: str, case) -> dict:
    B, Tc, H, n, dtype, nl, gate, with_s0 = case
    m = n
    g = torch.Generator(device="cuda").manual_seed(B * 1000 + Tc * 10 + n)
    dev = dict(device="cuda", generator=g)
    q = F.normalize(torch.randn(B, Tc, H, n, **dev), dim=-1).to(dtype)
    k = F.normalize(torch.randn(B, Tc, H, n, **dev), dim=-1).to(dtype)
    v = torch.randn(B, Tc, H, m, **dev).to(dtype)
    a = 0.6 + 0.4 * torch.rand(B, Tc, H, **dev)
    S0 = 0.3 * torch.randn(B, H, m, n, **dev) if with_s0 else None
    gg = torch.randn(B, Tc, H, m, **dev).to(dtype) if gate else None
    raw = (q, k, v, a, S0, gg)
    names = [nm for nm, x in zip(("q", "k", "v", "decay", "S0", "g"), raw) if x is not None]
    ins = [None if x is None else x.clone().requires_grad_() for x in raw]
    ins64 = [None if x is None else x.double().requires_grad_() for x in raw]
    label = f"B{B} T{Tc} H{H} n{n} {str(dtype)[6:]} {nl} gate={gate}"
    row = dict(kernel=kernel, case=label, ok=False)
    try:
        ef.POISON = True
        reset_implementations_used()
        out = ef.e88_scan_cuda(ins[0], ins[1], ins[2], ins[3], ins[4], nl, ins[5], gate or "silu", kernel=kernel)
        ran = implementations_used().get("e88", {}).get("paths")
        ref = e88_scan_ref(ins64[0], ins64[1], ins64[2], ins64[3], ins64[4], nl, ins64[5], gate or "silu")
        wg = torch.Generator(device="cuda").manual_seed(7)
        ws = [torch.randn(r.shape, generator=wg, device="cuda", dtype=torch.float64) for r in ref]
        errs = {"y": rel_err(out[0], ref[0]), "S_T": rel_err(out[1], ref[1])}
        finite = all(torch.isfinite(o).all().item() for o in out)
        go = torch.autograd.grad(sum((o.double() * w).sum() for o, w in zip(out, ws)),
                                 [x for x in ins if x is not None])
        gr = torch.autograd.grad(sum((r * w).sum() for r, w in zip(ref, ws)), [x for x in ins64 if x is not None])
        for nm, x, r in zip(names, go, gr):
            errs["d" + nm] = rel_err(x, r)
            finite = finite and torch.isfinite(x).all().item()
        worst = max(errs.values())
        row.update(errors={k_: float(f"{e:.3e}") for k_, e in errs.items()}, worst=worst, finite=finite,
                   ran=ran, tol=TOL[dtype],
                   ok=bool(finite and worst <= TOL[dtype] and ran == [ef.PATHS[kernel]]))
    except Exception as exc:  # record, keep going
        row.update(error=f"{type(exc).__name__}: {str(exc)[:300]}")
    finally:
        ef.POISON = False
    return row


def e88_pair(B, H, n, kernel, C, reps, warmup):
    q = F.normalize(torch.randn(B, T, H, n, device="cuda"), dim=-1).to(BF).requires_grad_()
    k = F.normalize(torch.randn(B, T, H, n, device="cuda"), dim=-1).to(BF).requires_grad_()
    v = torch.randn(B, T, H, n, device="cuda", dtype=BF, requires_grad=True)
    a = (0.6 + 0.4 * torch.rand(B, T, H, device="cuda")).requires_grad_()

    def run():
        return ef.e88_scan_cuda(q, k, v, a, kernel=kernel, C=C)
    outs = run()
    grads = [torch.randn_like(o) for o in outs]

    def fwdbwd():
        torch.autograd.backward(run(), grads)
    with torch.no_grad():
        f = timeit(run, reps, warmup)
    return f, timeit(fwdbwd, reps, warmup)


def fla_pair(B, width, reps, warmup, K=128, V=256):
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule

    H = max(1, width // K)
    q = F.normalize(torch.randn(B, T, H, K, device="cuda"), dim=-1).to(BF).requires_grad_()
    k = F.normalize(torch.randn(B, T, H, K, device="cuda"), dim=-1).to(BF).requires_grad_()
    v = torch.randn(B, T, H, V, device="cuda", dtype=BF, requires_grad=True)
    g = F.logsigmoid(torch.randn(B, T, H, device="cuda")).requires_grad_()
    beta = torch.rand(B, T, H, device="cuda", dtype=BF).requires_grad_()

    def run():
        return chunk_gated_delta_rule(q, k, v, g, beta, output_final_state=False)[0]
    dy = torch.randn_like(run())
    with torch.no_grad():
        f = timeit(run, reps, warmup)
    try:
        fb = timeit(lambda: run().backward(dy), reps, warmup)
    except Exception as exc:  # fla refusing its backward on this Triton: keep the forward
        return f, None, f"backward failed: {type(exc).__name__}: {str(exc)[:120]}", H
    return f, fb, "", H


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="JSON path (a .md table is written beside it)")
    ap.add_argument("--kernels", default=",".join(ef.KERNELS),
                    help=f"variants to compare, of {', '.join(ef.KERNELS)} (default: all)")
    ap.add_argument("--reps", type=int, default=20, help="timed repetitions (median)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--c-sweep", default="", help="the staged variant v3 (when in --kernels) also at "
                    "these checkpoint intervals (comma list)")
    ap.add_argument("--no-fla", action="store_true", help="skip fla's chunk Gated DeltaNet")
    ap.add_argument("--no-check", action="store_true", help="skip the correctness checks")
    ap.add_argument("--shapes", default=",".join(f"{h}:{n}" for h, n in SHAPES),
                    help="heads:n_state pairs to time (comma list; default the four of issue 17)")
    ap.add_argument("--batches", default=",".join(str(b) for b in BATCHES), help="batch sizes to time")
    args = ap.parse_args(argv)
    kernels = [x.strip().lower() for x in args.kernels.split(",") if x.strip()]
    unknown = [k for k in kernels if k not in ef.KERNELS]
    if unknown:
        print(f"error: --kernels {','.join(unknown)}: not an E88 kernel (use {', '.join(ef.KERNELS)})", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("error: scripts/e88-ab.py needs a CUDA GPU", file=sys.stderr)
        return 2
    t_start = time.time()
    sweep = [int(x) for x in args.c_sweep.split(",") if x.strip()]
    gpu = torch.cuda.get_device_name()
    print(f"GPU: {gpu}; torch {torch.__version__}; default kernel {ef.kernel_variant()}", flush=True)
    t0 = time.time()
    ef.CudaBackend.lib(torch.cuda.current_device())
    print(f"kernel library built/loaded in {time.time() - t0:.1f} s", flush=True)

    checks = []
    if not args.no_check:
        for kernel in kernels:
            for case in CHECKS:
                r = check(kernel, case)
                checks.append(r)
                print(f"  check {kernel} {r['case']:40s} {'ok  ' if r['ok'] else 'FAIL'} "
                      f"worst {r.get('worst', float('nan')):.2e} {r.get('error', '')}", flush=True)

    rows = []
    shapes = [tuple(int(v) for v in x.split(":")) for x in args.shapes.split(",") if x.strip()]
    for H, n in shapes:
        for B in [int(x) for x in args.batches.split(",") if x.strip()]:
            shape = f"B{B} T{T} H{H} n{n}"
            variants = [(kk, None) for kk in kernels] + [(kk, c) for kk in kernels if kk in ef.STAGED for c in sweep]
            for kernel, C in variants:
                qq = torch.empty(B, 1, H, n, device="cuda", dtype=BF)
                plan_C = ef.CudaBackend.pinned(kernel).plan(qq, n) if C is None else C
                impl = kernel if C is None else f"{kernel} C={C}"
                try:
                    f, fb = e88_pair(B, H, n, kernel, C, args.reps, args.warmup)
                    rows.append(dict(shape=shape, H=H, n=n, B=B, impl=impl, C=plan_C, fwd_ms=round(f, 3),
                                     fwdbwd_ms=round(fb, 3), note=""))
                except Exception as exc:
                    rows.append(dict(shape=shape, H=H, n=n, B=B, impl=impl, C=plan_C, fwd_ms=None, fwdbwd_ms=None,
                                     note=f"failed: {type(exc).__name__}: {str(exc)[:160]}"))
                r = rows[-1]
                print(f"  {shape:20s} {impl:10s} C={plan_C:<3d} fwd {r['fwd_ms']} ms  fwd+bwd {r['fwdbwd_ms']} ms "
                      f"{r['note']}", flush=True)
            if not args.no_fla:
                try:
                    f, fb, note, Hg = fla_pair(B, H * n, args.reps, args.warmup)
                    rows.append(dict(shape=shape, H=H, n=n, B=B, impl="fla-gdn", C=None, fwd_ms=round(f, 3),
                                     fwdbwd_ms=None if fb is None else round(fb, 3),
                                     note=f"GDN H{Hg} K128 V256 {note}".strip()))
                except Exception as exc:
                    rows.append(dict(shape=shape, H=H, n=n, B=B, impl="fla-gdn", C=None, fwd_ms=None,
                                     fwdbwd_ms=None, note=f"fla: {type(exc).__name__}: {str(exc)[:160]}"))
                r = rows[-1]
                print(f"  {shape:20s} {'fla-gdn':10s}       fwd {r['fwd_ms']} ms  fwd+bwd {r['fwdbwd_ms']} ms "
                      f"{r['note']}", flush=True)
            torch.cuda.empty_cache()

    # table: each row with its ratio to fla (fwd+bwd) and to v2
    def ref_of(shape, impl):
        return next((r for r in rows if r["shape"] == shape and r["impl"] == impl and r["fwdbwd_ms"]), None)
    lines = [f"GPU: {gpu}; torch {torch.__version__}; bf16 q/k/v, fp32 decay and state; T={T}; median of "
             f"{args.reps} CUDA-event timings after {args.warmup} warm-up calls", "",
             "| shape | impl | C | fwd ms | fwd+bwd ms | vs v2 (fwd+bwd) | vs v3 (fwd+bwd) | fla / this (fwd+bwd) | note |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        v2 = ref_of(r["shape"], "v2")
        v3 = ref_of(r["shape"], "v3")
        fla = ref_of(r["shape"], "fla-gdn")
        sp = f"{v2['fwdbwd_ms'] / r['fwdbwd_ms']:.2f}x" if v2 and r["fwdbwd_ms"] and r["impl"] != "fla-gdn" else ""
        s3 = f"{v3['fwdbwd_ms'] / r['fwdbwd_ms']:.2f}x" if v3 and r["fwdbwd_ms"] and r["impl"] != "fla-gdn" else ""
        r["speedup_vs_v3"] = s3
        vf = f"{fla['fwdbwd_ms'] / r['fwdbwd_ms']:.2f}" if fla and r["fwdbwd_ms"] and r["impl"] != "fla-gdn" else ""
        r["speedup_vs_v2"] = sp
        r["fla_over_this"] = vf
        lines.append(f"| {r['shape']} | {r['impl']} | {r['C'] if r['C'] is not None else ''} | {r['fwd_ms']} | "
                     f"{r['fwdbwd_ms']} | {sp} | {s3} | {vf} | {r['note']} |")
    if checks:
        lines += ["", "| check | kernel | ok | worst rel err | tol |", "|---|---|---|---|---|"]
        for c in checks:
            lines.append(f"| {c['case']} | {c['kernel']} | {'yes' if c['ok'] else 'NO'} | "
                         f"{c.get('worst', c.get('error', ''))} | {c.get('tol', '')} |")
    table = "\n".join(lines)
    print("\n" + table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from elmanlab.hardware import source_info
    out.write_text(json.dumps(dict(gpu=gpu, torch=torch.__version__, source=source_info(), T=T, reps=args.reps, warmup=args.warmup,
                                   default_kernel=ef.kernel_variant(), checks=checks, rows=rows,
                                   seconds=round(time.time() - t_start, 1)), indent=1))
    out.with_suffix(".md").write_text(table + "\n")
    print(f"\nwrote {out} and {out.with_suffix('.md')} in {time.time() - t_start:.0f} s")
    return 0 if all(c["ok"] for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
