"""Time the Elman-family recurrences alone: forward and forward+backward, bf16 inputs.

For each recurrence at the seeds' shapes: the plain PyTorch loop (the reference, one matmul per
step), cuDNN's tanh RNN where it applies (and at equal D for E42), fla's chunk Gated DeltaNet at
the same key width (for E88, when fla is installed), and ours. Prints a table naming the GPU and
the speedups, and writes JSON (and a Markdown copy of the table).

    python3 benchmarks/kernels.py --out benchmarks/results/kernels-h200.json
    python3 benchmarks/kernels.py --quick          # fewer shapes, no plain loops
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _harness import cuda_time_ms as timeit  # noqa: E402
from elmanlab.ops.e88.fused import e88_scan_cuda  # noqa: E402
from elmanlab.ops.e88.reference import e88_scan_ref  # noqa: E402
from elmanlab.ops.elman.fused import SYNC_MODES, CudaBackend, elman_scan_cudnn, elman_scan_persistent  # noqa: E402
from elmanlab.ops.elman.reference import elman_scan_ref  # noqa: E402

BF = torch.bfloat16


def bench_pair(make_inputs, run, reps):
    """(forward ms, forward+backward ms) of ``run(*inputs)`` with fresh random inputs."""
    ins = make_inputs()
    outs = run(*ins)
    grads = [torch.randn_like(o) for o in outs]

    def fwd():
        run(*ins)

    def fwdbwd():
        outs = run(*ins)
        torch.autograd.backward(outs, grads)

    f = timeit(fwd, reps)
    try:
        return f, timeit(fwdbwd, reps)
    except Exception as exc:  # e.g. fla refusing its backward on this Triton: keep the forward time
        raise PartialResult(f, exc) from exc


class PartialResult(Exception):
    def __init__(self, fwd_ms, exc):
        super().__init__(str(exc))
        self.fwd_ms, self.exc = fwd_ms, exc


def elman_inputs(B, T, D, linear=False):
    def make():
        wx = torch.randn(B, T, D, device="cuda", dtype=BF, requires_grad=True)
        W = (torch.randn(D, D, device="cuda") * (0.45 if linear else 1.0) / D ** 0.5).requires_grad_()
        b = torch.zeros(D, device="cuda", requires_grad=True)
        h0 = torch.zeros(B, D, device="cuda", requires_grad=True)
        return wx, W, b, h0
    return make


def cudnn_module(B, T, D):
    """cuDNN's tanh RNN as ``nn.RNN`` uses it: the weights flattened once into one buffer (W_ih = I,
    frozen, so its gradient GEMM is not timed), bf16. (make, run) for :func:`bench_pair`."""
    rnn = torch.nn.RNN(D, D, nonlinearity="tanh", batch_first=True).to("cuda", BF)
    with torch.no_grad():
        rnn.weight_ih_l0.copy_(torch.eye(D))
        rnn.weight_hh_l0.copy_(torch.randn(D, D) / D ** 0.5)
    rnn.weight_ih_l0.requires_grad_(False)
    rnn.flatten_parameters()

    def make():
        return (torch.randn(B, T, D, device="cuda", dtype=BF, requires_grad=True),)

    def run(wx):
        return (rnn(wx)[0],)
    return make, run


def patched(fn, **attrs):
    """``fn`` run with CudaBackend's attributes ``attrs`` set for the call (force_variant "mma"/"wide",
    sync, multi_tile, probe), restored afterwards."""
    def run(*x):
        old = {k: getattr(CudaBackend, k) for k in attrs}
        for k, v in attrs.items():
            setattr(CudaBackend, k, v)
        try:
            return fn(*x)
        finally:
            for k, v in old.items():
                setattr(CudaBackend, k, v)
    return run


def e88_inputs(B, T, H, n):
    def make():
        q = torch.nn.functional.normalize(torch.randn(B, T, H, n, device="cuda"), dim=-1).to(BF).requires_grad_()
        k = torch.nn.functional.normalize(torch.randn(B, T, H, n, device="cuda"), dim=-1).to(BF).requires_grad_()
        v = torch.randn(B, T, H, n, device="cuda", dtype=BF, requires_grad=True)
        a = (0.6 + 0.4 * torch.rand(B, T, H, device="cuda")).requires_grad_()
        return q, k, v, a
    return make


def gdn_runner():
    """fla's chunk Gated DeltaNet (q, k [B,T,H,K], v [B,T,H,V], g log-decay, beta), or None."""
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    except Exception as exc:  # not installed
        return None, f"fla not importable: {type(exc).__name__}: {exc}"[:200]

    def run(q, k, v, g, beta):
        o, _ = chunk_gated_delta_rule(q, k, v, g, beta, output_final_state=False)
        return (o,)
    return run, ""


def gdn_inputs(B, T, width, K=128, V=256):
    H = max(1, width // K)

    def make():
        q = torch.nn.functional.normalize(torch.randn(B, T, H, K, device="cuda"), dim=-1).to(BF).requires_grad_()
        k = torch.nn.functional.normalize(torch.randn(B, T, H, K, device="cuda"), dim=-1).to(BF).requires_grad_()
        v = torch.randn(B, T, H, V, device="cuda", dtype=BF, requires_grad=True)
        g = torch.nn.functional.logsigmoid(torch.randn(B, T, H, device="cuda")).requires_grad_()
        beta = torch.rand(B, T, H, device="cuda", dtype=BF).requires_grad_()
        return q, k, v, g, beta
    return make, H


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="JSON path (a .md table is written beside it)")
    ap.add_argument("--reps", type=int, default=20, help="timed repetitions for fast paths (median)")
    ap.add_argument("--loop-reps", type=int, default=3, help="timed repetitions for the plain loops")
    ap.add_argument("--quick", action="store_true", help="B=16 shapes only, no plain loops")
    ap.add_argument("--only", default="", help="comma list of recurrences to run (E1,E33,E42,E88); default all")
    ap.add_argument("--no-loops", action="store_true", help="skip the plain PyTorch loops")
    ap.add_argument("--widths", default="1024,1760,2112,2200,2272,2560,3584,4096",
                    help="d_inner of the width sweep (recurrences 'tanh' and 'linear' in --only): ours (the "
                         "variant that runs by default, and each variant forced where both fit) against "
                         "cuDNN's nn.RNN with flattened weights")
    ap.add_argument("--probe", default="",
                    help="d_inner (<= 16 x SMs: the 16-unit kernel) at which to time its probes (B16 T512 tanh, comma list): "
                         "without the grid barrier, without the state loads, without loads and mma's, and "
                         "with none of the three; the probes' results are wrong, only their times count")
    ap.add_argument("--long", default="1760,4096",
                    help="d_inner of the T=2048 rows of the sweep (B16), empty for none")
    args = ap.parse_args(argv)
    only = {x.strip().upper() for x in args.only.split(",") if x.strip()}
    if args.quick:
        args.no_loops = True

    def want(name):
        return not only or name in only
    if not torch.cuda.is_available():
        print("error: benchmarks/kernels.py needs a CUDA GPU", file=sys.stderr)
        return 2
    gpu = torch.cuda.get_device_name()
    T = 512
    rows = []

    def add(recurrence, shape, impl, fn_pair, note=""):
        try:
            f, fb = fn_pair()
            rows.append(dict(recurrence=recurrence, shape=shape, impl=impl, fwd_ms=round(f, 3),
                             fwdbwd_ms=round(fb, 3), note=note))
        except PartialResult as part:
            rows.append(dict(recurrence=recurrence, shape=shape, impl=impl, fwd_ms=round(part.fwd_ms, 3),
                             fwdbwd_ms=None, note=f"backward failed: {type(part.exc).__name__}: "
                                                  f"{str(part.exc)[:160]}"))
        except Exception as exc:  # record the failure, keep going
            rows.append(dict(recurrence=recurrence, shape=shape, impl=impl, fwd_ms=None, fwdbwd_ms=None,
                             note=f"failed: {type(exc).__name__}: {str(exc)[:160]}"))
        r = rows[-1]
        print(f"  {recurrence:5s} {shape:22s} {impl:12s} fwd {r['fwd_ms']} ms  fwd+bwd {r['fwdbwd_ms']} ms "
              f"{r['note']}", flush=True)

    batches = [16] if args.quick else [16, 64]
    # Elman tanh: E1 at D 1760 and 2112, E33 at D 1024
    for name, D in (("E1", 1760), ("E1", 2112), ("E33", 1024)):
        for B in batches if want(name) else []:
            shape = f"B{B} T{T} D{D}"
            mk = elman_inputs(B, T, D)
            if B == 16 and not args.no_loops:
                add(name, shape, "loop", lambda: bench_pair(mk, lambda wx, W, b, h0: elman_scan_ref(
                    wx, W.to(BF), b.to(BF), h0.to(BF), "tanh"), args.loop_reps))
            add(name, shape, "cudnn", lambda: bench_pair(mk, elman_scan_cudnn, args.reps))
            add(name, shape, "ours", lambda: bench_pair(
                mk, lambda *x: elman_scan_persistent(*x, nonlinearity="tanh"), args.reps),
                note="tensor-core (mma) kernel")
            if name == "E1" and D == 1760:
                CudaBackend.use_mma = False
                add(name, shape, "ours-fma", lambda: bench_pair(
                    mk, lambda *x: elman_scan_persistent(*x, nonlinearity="tanh"), args.reps),
                    note="v1: fp32 CUDA-core kernel, W in shared memory")
                CudaBackend.use_mma = True
    # E42 linear tied at D 1024 (cuDNN tanh at equal D for comparison)
    for B in batches if want("E42") else []:
        D = 1024
        shape = f"B{B} T{T} D{D}"
        mk = elman_inputs(B, T, D, linear=True)
        if B == 16 and not args.no_loops:
            add("E42", shape, "loop", lambda: bench_pair(mk, lambda wx, W, b, h0: elman_scan_ref(
                wx, W.to(BF), b.to(BF), h0.to(BF), "linear"), args.loop_reps))
        add("E42", shape, "cudnn-tanh", lambda: bench_pair(mk, elman_scan_cudnn, args.reps))
        add("E42", shape, "ours", lambda: bench_pair(
            mk, lambda *x: elman_scan_persistent(*x, nonlinearity="linear"), args.reps))
    # E88: H56 n32 and H32 n48, against fla's chunk Gated DeltaNet at the same key width
    gdn, gdn_note = gdn_runner()
    for H, n in ((56, 32), (32, 48)):
        for B in batches if want("E88") else []:
            shape = f"B{B} T{T} H{H} n{n}"
            mk = e88_inputs(B, T, H, n)
            if B == 16 and not args.no_loops:
                add("E88", shape, "loop", lambda: bench_pair(mk, lambda q, k, v, a: e88_scan_ref(q, k, v, a),
                                                             args.loop_reps))
            if gdn is not None:
                gmk, gH = gdn_inputs(B, T, H * n)
                add("E88", shape, "fla-gdn", lambda: bench_pair(gmk, gdn, args.reps),
                    note=f"GDN H{gH} K128 V256")
            else:
                rows.append(dict(recurrence="E88", shape=shape, impl="fla-gdn", fwd_ms=None, fwdbwd_ms=None,
                                 note=gdn_note))
            add("E88", shape, "ours", lambda: bench_pair(mk, lambda q, k, v, a: e88_scan_cuda(q, k, v, a),
                                                         args.reps))

    # width sweep: every d_inner the sizing solver produces up to 4096, tanh and linear, T 512
    # (and T 2048 for --long), against cuDNN's flattened nn.RNN
    widths = [int(x) for x in args.widths.split(",") if x.strip()]
    longs = [int(x) for x in args.long.split(",") if x.strip()]
    sweep = [(nl, B, T, D) for nl in ("tanh", "linear") for D in widths for B in batches]
    sweep += [("tanh", 16, 2048, D) for D in longs]
    for nl, B, TT, D in sweep:
        if not want(nl.upper()):
            continue
        shape = f"B{B} T{TT} D{D}"
        mk = elman_inputs(B, TT, D, linear=nl == "linear")
        if nl == "tanh":
            add(nl, shape, "cudnn-nn", lambda: bench_pair(*cudnn_module(B, TT, D), args.reps),
                note="nn.RNN(tanh), weights flattened once, W_ih frozen")
        plan = CudaBackend.plan(torch.cuda.current_device(), D)
        kind = CudaBackend.variant(torch.cuda.current_device(), D, BF)
        run = (lambda *x, nl=nl: elman_scan_persistent(*x, nonlinearity=nl))
        if kind is None:
            rows.append(dict(recurrence=nl, shape=shape, impl="ours", fwd_ms=None, fwdbwd_ms=None,
                             note=f"no persistent kernel fits d_inner {D}"))
            continue
        sync = CudaBackend.sync_mode()
        add(nl, shape, "ours", lambda: bench_pair(mk, run, args.reps), note=f"default: {kind}, {sync} sync")
        other_syncs = [m for m in SYNC_MODES if m != sync]
        for other_sync in other_syncs:
            add(nl, shape, f"ours-{other_sync}", lambda: bench_pair(mk, patched(run, sync=other_sync), args.reps),
                note=f"{kind}, {other_sync} sync forced")
        if kind == "mma" and B > 16:    # the 16-unit kernel's multi-tile pass, flipped
            on = CudaBackend.multi_tile
            add(nl, shape, f"ours-{'no-' if on else ''}multi-tile",
                lambda: bench_pair(mk, patched(run, multi_tile=not on), args.reps),
                note=f"mma, multi_tile {'off' if on else 'on'}")
        if plan["mma_ok"] and plan["wide_ok"] and TT == 512:
            other = "wide" if kind == "mma" else "mma"
            for sy in (sync, other_syncs[0]):
                add(nl, shape, f"ours-{other}-{sy}", lambda: bench_pair(mk, patched(run, force_variant=other, sync=sy), args.reps),
                    note=f"{other} variant, {sy} sync forced")
        if nl == "linear" and not plan["mma_ok"] and TT == 512 and B == 16 and D == min(
                d for d in widths if not CudaBackend.plan(torch.cuda.current_device(), d)["mma_ok"]):
            from elmanlab.ops.elman.chunked import elman_linear_chunked
            add(nl, shape, "chunked", lambda: bench_pair(mk, lambda wx, W, b, h0: elman_linear_chunked(
                wx, W.to(BF), b, h0), args.reps), note="the chunked GEMM form (the path before the wide kernel)")

    # where a step's time goes: the 16-unit kernel with parts of its step left out (wrong results)
    probes = {1: "no barrier", 2: "no state loads", 6: "no loads, no mma", 7: "no barrier, loads, mma"}
    for D in [int(x) for x in args.probe.split(",") if x.strip()]:
        shape = f"B16 T{T} D{D}"
        mk = elman_inputs(16, T, D)
        run = (lambda *x: elman_scan_persistent(*x, nonlinearity="tanh"))
        add("probe", shape, "ours", lambda: bench_pair(mk, run, args.reps), note="the kernel, all of it")
        for code, what in probes.items():
            add("probe", shape, f"probe-{code}", lambda: bench_pair(mk, patched(run, probe=code), args.reps),
                note=f"{what} (results wrong)")

    # speedups of ours against each other implementation of the same row
    by = {}
    for r in rows:
        by.setdefault((r["recurrence"], r["shape"]), {})[r["impl"]] = r
    lines = [f"GPU: {gpu}; torch {torch.__version__}; bf16 inputs, fp32 state; T={T}; median of "
             f"{args.reps} (loops: {args.loop_reps}) CUDA-event timings",
             "", "| recurrence | shape | impl | fwd ms | fwd us/step | fwd+bwd ms | ours speedup (fwd+bwd) | note |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ours = by[(r["recurrence"], r["shape"])].get("ours")
        sp = ""
        if ours and ours["fwdbwd_ms"] and r["fwdbwd_ms"] and r["impl"] != "ours":
            sp = f"{r['fwdbwd_ms'] / ours['fwdbwd_ms']:.1f}x"
            r["ours_speedup_fwdbwd"] = round(r["fwdbwd_ms"] / ours["fwdbwd_ms"], 2)
        steps = int(r["shape"].split(" T")[1].split()[0])          # "B16 T512 D1760" -> 512
        per_step = f"{1e3 * r['fwd_ms'] / steps:.2f}" if r["fwd_ms"] else ""
        lines.append(f"| {r['recurrence']} | {r['shape']} | {r['impl']} | {r['fwd_ms']} | {per_step} | "
                     f"{r['fwdbwd_ms']} | {sp} | {r['note']} |")
    table = "\n".join(lines)
    print()
    print(table)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        from elmanlab.hardware import source_info
        payload = dict(gpu=gpu, torch=torch.__version__, source=source_info(), T=T, dtype="bfloat16", reps=args.reps,
                       loop_reps=args.loop_reps, time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       rows=rows)
        from elmanlab.fsutil import atomic_write_text
        atomic_write_text(out, json.dumps(payload, indent=1))
        atomic_write_text(out.with_suffix(".md"), table + "\n")
        print(f"\nwrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
