"""Fast path for the E88 scan: a CUDA kernel with the state in registers, checkpointed backward.

``E88ScanFn`` wraps a *backend* with two entry points:

* ``fwd(q, k, v, a, S0, g, tanh_on, gate, C) -> (y, S_T, ckpt)``: the scan, storing the state
  before every C-th step (``ckpt [B, H, ceil(T/C), m, n]``: memory O(B T H m n / C));
* ``bwd(q, k, v, a, g, dy, ckpt, dS_T, tanh_on, gate, C) -> (dq, dk, dv, da, dg, dS0)``:
  chunks in reverse, each recomputed from its checkpoint, then the reverse step

      do = dy gate(g);  dg = dy o gate'(g);  dS += do q^T;  dq = S^T do
      dP = dS (1 - S^2) [tanh];  da = <dP, S_prev>;  dv = dP k;  delta = v - S_prev k
      dk = dP^T delta - S_prev^T dv;  dS_prev = a dP - dv k^T

:class:`CudaBackend` runs both in ``e88_kernel.cu`` (one block per (batch, head));
:class:`TorchBackend` is the same algorithm in plain PyTorch (CPU tests of the algebra).

The kernel comes in two variants (same algorithm, same results up to float rounding order):

* ``v3`` (the default): inputs staged in shared memory a chunk at a time (cp.async,
  double-buffered), the recompute keeps delta = v - S_prev k for the reverse step, capped
  registers, and C chosen per shape and batch for the fewest waves of blocks (then the largest C,
  4 <= C <= 16; 1..3 when none of those fits);
* ``v2``, kept as the fallback for the shapes v3 does not take: inputs read from global memory step
  by step (one step prefetched), C from a 64 KB shared-memory budget (8 at n = 32, 4 at n = 48, 2 at
  n = 64). v3's backward needs more registers than v2's at n = 8 and n = 24, so fewer threads per
  block, i.e. a smaller largest value dim m (4 threads per row of the state): on an H200 (sm_90,
  nvcc 13.0, ptxas's register counts) v2 takes m up to 256 at n = 8 where v3 takes 160, and at
  n = 24 up to 160 (fp32) / 224 (bf16) where v3 takes 128 (every other n_state: v3 takes at least
  v2's m); v3 in turn takes some value dims v2 does not. By default the variant that takes the
  shape runs (:func:`choose_variant`, v3 first); ``ELMANLAB_E88_KERNEL=v2|v3`` pins one.

v3 was 1.5-1.8x faster than v2 at every shape of issue 17 on an H200
(benchmarks/results/e88-ab-h200-2026-12-03-n48.md). Two further variants, v4 (v3 with the backward's
registers capped lower) and v5 (a 2-D thread tile in the backward), were removed: side by side on an
H200 v4 was 0.95-1.01x v3 and v5 within -1%..+6% of it (benchmarks/results/e88-ab-h200-2026-12-03-v345.md).

Which one runs: ``CudaBackend.kernel`` when set, else ``$ELMANLAB_E88_KERNEL`` (v2 or v3), else
:data:`DEFAULT_KERNEL`; the record of what ran names it (:data:`PATHS`).
"""
from __future__ import annotations

import ctypes
import os
import warnings
from pathlib import Path

import torch

from elmanlab.ops._build import device_index
from elmanlab.ops._dispatch import REFERENCE, record
from elmanlab.ops.e88.reference import e88_scan_ref

_SRC = Path(__file__).with_name("e88_kernel.cu")
GATES = {None: 0, "silu": 1, "sigmoid": 2}
POISON = False      # tests set this: kernel outputs start as NaN, so an unwritten element fails
SMEM_BUDGET = 64 * 1024      # v2: backward shared memory per block that picks the checkpoint interval
KERNELS = ("v2", "v3")
DEFAULT_KERNEL = "v3"        # the variant that runs when neither CudaBackend.kernel nor the env var says
                             # (v3: 1.5-1.8x faster than v2 at every shape of issue 17 on an H200,
                             # benchmarks/results/e88-ab-h200-2026-12-03*.md)
KERNEL_ENV = "ELMANLAB_E88_KERNEL"
V3_C_RANGE = (4, 16)         # v3: the checkpoint intervals the plan chooses from (then 1..3 if none fits)
STAGED = ("v3",)             # the variants with staged inputs and a per-batch plan (e88v3_plan)


def _gate_val_grad(g, gate):
    sg = torch.sigmoid(g)
    if gate == 1:
        return g * sg, sg * (1 + g * (1 - sg))
    return sg, sg * (1 - sg)


def _step(S, k, v, a, tanh_on):
    r = torch.einsum("bhmn,bhn->bhm", S, k)
    P = a[..., None, None] * S + (v - r).unsqueeze(-1) * k.unsqueeze(-2)
    return torch.tanh(P) if tanh_on else P


class TorchBackend:
    name = "torch"
    kernel = None

    @classmethod
    def pinned(cls, kernel=None):
        """The same algorithm for every kernel variant."""
        return cls

    @staticmethod
    def plan(q, m):
        return 4

    @staticmethod
    def fwd(q, k, v, a, S0, g, tanh_on, gate, C):
        B, T, H, n = q.shape
        m = v.shape[-1]
        f = torch.float32
        S = q.new_zeros(B, H, m, n, dtype=f) if S0 is None else S0.float()
        NC = (T + C - 1) // C
        ckpt = q.new_empty(B, H, NC, m, n, dtype=f)
        y = q.new_empty(B, T, H, m)
        for t in range(T):
            if t % C == 0:
                ckpt[:, :, t // C] = S
            S = _step(S, k[:, t].float(), v[:, t].float(), a[:, t].float(), tanh_on)
            o = torch.einsum("bhmn,bhn->bhm", S, q[:, t].float())
            if gate:
                o = o * _gate_val_grad(g[:, t].float(), gate)[0]
            y[:, t] = o.to(y.dtype)
        return y, S, ckpt

    @staticmethod
    def bwd(q, k, v, a, g, dy, ckpt, dST, tanh_on, gate, C):
        B, T, H, n = q.shape
        m = v.shape[-1]
        f = torch.float32
        dq = q.new_zeros(B, T, H, n, dtype=f)
        dk = torch.zeros_like(dq)
        dv = q.new_zeros(B, T, H, m, dtype=f)
        dg = torch.zeros_like(dv)
        da = q.new_zeros(B, T, H, dtype=f)
        dS = q.new_zeros(B, H, m, n, dtype=f) if dST is None else dST.float().clone()
        NC = ckpt.shape[2]
        for ch in range(NC - 1, -1, -1):
            t0 = ch * C
            L = min(C, T - t0)
            states = [ckpt[:, :, ch]]
            for l in range(L):
                t = t0 + l
                states.append(_step(states[-1], k[:, t].float(), v[:, t].float(), a[:, t].float(), tanh_on))
            for l in range(L - 1, -1, -1):
                t = t0 + l
                Sc, Sp = states[l + 1], states[l]
                kt, qt, vt, at = k[:, t].float(), q[:, t].float(), v[:, t].float(), a[:, t].float()
                dyt = dy[:, t].float()
                if gate:
                    o = torch.einsum("bhmn,bhn->bhm", Sc, qt)
                    gv, gp = _gate_val_grad(g[:, t].float(), gate)
                    do = dyt * gv
                    dg[:, t] = dyt * o * gp
                else:
                    do = dyt
                dS = dS + do.unsqueeze(-1) * qt.unsqueeze(-2)
                dq[:, t] = torch.einsum("bhmn,bhm->bhn", Sc, do)
                dP = dS * (1 - Sc * Sc) if tanh_on else dS
                da[:, t] = (dP * Sp).sum((-1, -2))
                delta = vt - torch.einsum("bhmn,bhn->bhm", Sp, kt)
                dd = torch.einsum("bhmn,bhn->bhm", dP, kt)
                dv[:, t] = dd
                dk[:, t] = torch.einsum("bhmn,bhm->bhn", dP, delta) - torch.einsum("bhmn,bhm->bhn", Sp, dd)
                dS = at[..., None, None] * dP - dd.unsqueeze(-1) * kt.unsqueeze(-2)
        return dq, dk, dv, da, dg, dS


def _empty(shape, dtype, device):
    t = torch.empty(shape, dtype=dtype, device=device)
    return t.fill_(float("nan")) if POISON else t


def kernel_variant(kernel: str | None = None) -> str:
    """The E88 kernel variant that runs: ``kernel`` when given, else ``CudaBackend.kernel``, else
    ``$ELMANLAB_E88_KERNEL``, else :data:`DEFAULT_KERNEL`. An unknown name is a one-line error."""
    k = kernel or getattr(CudaBackend, "kernel", None)
    source = "kernel"
    if not k:
        k, source = os.environ.get(KERNEL_ENV) or DEFAULT_KERNEL, KERNEL_ENV
    k = k.strip().lower()
    if k not in KERNELS:
        from elmanlab.errors import ElmanlabError
        raise ElmanlabError(f"{source}={k!r} is not an E88 kernel: use one of {', '.join(KERNELS)}")
    return k


class CudaBackend:
    name = "cuda"
    kernel: str | None = None      # None: $ELMANLAB_E88_KERNEL, else DEFAULT_KERNEL (see kernel_variant)
    _plans: dict = {}

    @classmethod
    def variant(cls) -> str:
        return kernel_variant(cls.kernel)

    @classmethod
    def pinned(cls, kernel=None):
        """This backend with the variant fixed (forward and backward of one call run the same one)."""
        return _PINNED[kernel_variant(kernel or cls.kernel)]

    @staticmethod
    def lib(device_index):
        from elmanlab.ops._build import load_library

        lib = load_library(_SRC, device_index)
        if not getattr(lib, "_elk_typed", False):
            P, I = ctypes.c_void_p, ctypes.c_int
            lib.e88_plan.argtypes = [I, I, I, I, I] + [ctypes.POINTER(ctypes.c_int)] * 3
            lib.e88_plan.restype = I
            lib.e88_launch.argtypes = [I, I, P, I] + [P] * 17 + [I] * 9
            lib.e88_launch.restype = I
            for kern in STAGED:
                getattr(lib, f"e88{kern}_plan").argtypes = [I] * 7 + [ctypes.POINTER(ctypes.c_int)] * 4
                getattr(lib, f"e88{kern}_plan").restype = I
                getattr(lib, f"e88{kern}_launch").argtypes = [I, I, P, I] + [P] * 17 + [I] * 9
                getattr(lib, f"e88{kern}_launch").restype = I
            lib._elk_typed = True
        return lib

    @classmethod
    def plan(cls, q, m):
        """Checkpoint interval C for this shape, or 0 when the kernel does not support it."""
        idx = device_index(q.device)
        dtype = 1 if q.dtype == torch.bfloat16 else 0
        kern = cls.variant()
        if kern in STAGED:
            return cls.plan_staged_for(kern, idx, dtype, q.shape[-1], m, q.shape[0] * q.shape[2])
        return cls.plan_for(idx, dtype, q.shape[-1], m)

    @classmethod
    def plan_staged_for(cls, kern: str, idx: int, dtype: int, n: int, m: int, bh: int = 1) -> int:
        """The checkpoint interval of the staged variant ``kern`` (v3, by its kernels' occupancy) for
        key dim n, value dim m, B*H = bh blocks (0: not supported): the fewest waves of backward
        blocks over the SMs, then the largest C in V3_C_RANGE (1..3 when none of those fits the
        device's shared memory)."""
        from elmanlab.ops._build import check

        key = (kern, idx, dtype, n, m, bh)
        if key not in cls._plans:
            lib = cls.lib(idx)
            plan = getattr(lib, f"e88{kern}_plan")
            C = 0
            for lo, hi in (V3_C_RANGE, (1, V3_C_RANGE[0] - 1)):
                vals = [ctypes.c_int(0) for _ in range(4)]
                check(lib, plan(idx, dtype, n, m, bh, lo, hi, *[ctypes.byref(x) for x in vals]),
                      f"e88{kern}_plan")
                C = vals[0].value
                if C > 0:
                    break
            cls._plans[key] = C
        return cls._plans[key]

    @classmethod
    def fits(cls, q, m: int, C: int, kern: str) -> bool:
        """Whether the backward of ``kern`` (a staged variant: v3) at checkpoint interval ``C`` fits the device
        (shared memory, one block)."""
        from elmanlab.ops._build import check

        idx = device_index(q.device)
        lib = cls.lib(idx)
        vals = [ctypes.c_int(0) for _ in range(4)]
        check(lib, getattr(lib, f"e88{kern}_plan")(idx, 1 if q.dtype == torch.bfloat16 else 0, q.shape[-1], m, 1,
                                                   C, C, *[ctypes.byref(x) for x in vals]), f"e88{kern}_plan")
        return vals[0].value == C

    @classmethod
    def plan_for(cls, idx: int, dtype: int, n: int, m: int) -> int:
        """:meth:`plan` for key dim n, value dim m, dtype code (1 bf16, 0 float32) on GPU idx."""
        from elmanlab.ops._build import check

        key = (idx, dtype, n, m)
        if key not in cls._plans:
            lib = cls.lib(idx)
            vals = [ctypes.c_int(0) for _ in range(3)]
            check(lib, lib.e88_plan(idx, dtype, n, m, SMEM_BUDGET, *[ctypes.byref(x) for x in vals]), "e88_plan")
            cls._plans[key] = vals[0].value
        return cls._plans[key]

    @classmethod
    def _launch(cls, fwd, q, k, v, g, a, S0, y, ST, ckpt, dy, dST, dq, dk, dv, da, dg, dS0, tanh_on, gate, C):
        from elmanlab.ops._build import check, ptr, stream_ptr

        B, T, H, n = q.shape
        m = v.shape[-1]
        idx = device_index(q.device)
        lib = cls.lib(idx)
        kern = cls.variant()
        launch = getattr(lib, f"e88{kern}_launch") if kern in STAGED else lib.e88_launch
        code = launch(int(fwd), idx, stream_ptr(q.device), 1 if q.dtype == torch.bfloat16 else 0,
                      ptr(q), ptr(k), ptr(v), ptr(g), ptr(a), ptr(S0), ptr(y), ptr(ST), ptr(ckpt),
                      ptr(dy), ptr(dST), ptr(dq), ptr(dk), ptr(dv), ptr(da), ptr(dg), ptr(dS0),
                      B, T, H, n, m, C, ckpt.shape[2], int(tanh_on), gate)
        check(lib, code, "e88 kernel launch")

    @classmethod
    def fwd(cls, q, k, v, a, S0, g, tanh_on, gate, C):
        B, T, H, n = q.shape
        m = v.shape[-1]
        f = torch.float32
        y = _empty((B, T, H, m), q.dtype, q.device)
        ST = _empty((B, H, m, n), f, q.device)
        ckpt = _empty((B, H, (T + C - 1) // C, m, n), f, q.device)
        cls._launch(True, q, k, v, g, a, S0, y, ST, ckpt, None, None, None, None, None, None, None, None,
                    tanh_on, gate, C)
        return y, ST, ckpt

    @classmethod
    def bwd(cls, q, k, v, a, g, dy, ckpt, dST, tanh_on, gate, C):
        B, T, H, n = q.shape
        m = v.shape[-1]
        f = torch.float32
        dq = _empty((B, T, H, n), f, q.device)
        dk = _empty((B, T, H, n), f, q.device)
        dv = _empty((B, T, H, m), f, q.device)
        dg = _empty((B, T, H, m), f, q.device) if gate else None
        da = _empty((B, T, H), f, q.device)
        dS0 = _empty((B, H, m, n), f, q.device)
        cls._launch(False, q, k, v, g, a, None, None, None, ckpt, dy, dST, dq, dk, dv, da, dg, dS0,
                    tanh_on, gate, C)
        return dq, dk, dv, da, dg, dS0


class CudaBackendV2(CudaBackend):
    kernel = "v2"


class CudaBackendV3(CudaBackend):
    kernel = "v3"


_PINNED = {"v2": CudaBackendV2, "v3": CudaBackendV3}


class E88ScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, decay, S0, g, tanh_on, gate, backend, C):
        wd = torch.bfloat16 if q.dtype == torch.bfloat16 else torch.float32
        qc, kc, vc = (x.detach().to(wd).contiguous() for x in (q, k, v))
        gc = None if g is None else g.detach().to(wd).contiguous()
        ac = decay.detach().float().contiguous()
        S0c = None if S0 is None else S0.detach().float().contiguous()
        y, ST, ckpt = backend.fwd(qc, kc, vc, ac, S0c, gc, tanh_on, gate, C)
        ctx.save_for_backward(qc, kc, vc, ac, gc, ckpt)
        ctx.cfg = (tanh_on, gate, backend, C)
        ctx.dtypes = (q.dtype, k.dtype, v.dtype, decay.dtype, None if S0 is None else S0.dtype,
                      None if g is None else g.dtype)
        return y.to(q.dtype), ST

    @staticmethod
    def backward(ctx, dy, dST):
        qc, kc, vc, ac, gc, ckpt = ctx.saved_tensors
        tanh_on, gate, backend, C = ctx.cfg
        if dy is None:
            dy = torch.zeros(*qc.shape[:3], vc.shape[-1], dtype=qc.dtype, device=qc.device)
        dyc = dy.to(qc.dtype).contiguous()
        dSTc = None if dST is None else dST.float().contiguous()
        dq, dk, dv, da, dg, dS0 = backend.bwd(qc, kc, vc, ac, gc, dyc, ckpt, dSTc, tanh_on, gate, C)
        tq, tk, tv, ta, tS, tg = ctx.dtypes
        return (dq.to(tq), dk.to(tk), dv.to(tv), da.to(ta), None if tS is None else dS0.to(tS),
                None if tg is None else dg.to(tg), None, None, None, None)


def e88_scan_backend(q, k, v, decay, S0=None, nonlinearity="tanh", g=None, gate_activation="silu",
                     backend=TorchBackend, C=None):
    if nonlinearity not in ("tanh", "linear"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'linear', got {nonlinearity!r}")
    if gate_activation not in ("silu", "sigmoid"):
        raise ValueError(f"gate_activation must be 'silu' or 'sigmoid', got {gate_activation!r}")
    B, T, H, n = q.shape
    m = v.shape[-1]
    if T == 0:
        ST = q.new_zeros(B, H, m, n, dtype=torch.float32) if S0 is None else S0.float()
        return q.new_zeros(B, 0, H, m), ST
    if C is None:
        C = backend.plan(q, m)
    gate = 0 if g is None else GATES[gate_activation]
    return E88ScanFn.apply(q, k, v, decay, S0, g, nonlinearity == "tanh", gate, backend, C)


_WARNED = set()
NAME = "elmanlab E88 CUDA kernel"          # the path name of v2 (every variant's starts with it)
# the path name in backend_info and in the record of what ran
PATHS = {"v2": NAME, "v3": f"{NAME} v3"}
WIDTH_FIX = ("choose n_state and expansion so that the value dim (n_state * expansion) is one the kernel "
             "takes (expansion 1.0 always is)")


def _explicit(kernel: str | None) -> bool:
    """Whether a variant was asked for (argument, CudaBackend.kernel or $ELMANLAB_E88_KERNEL), not defaulted."""
    return bool(kernel or getattr(CudaBackend, "kernel", None) or os.environ.get(KERNEL_ENV))


def _takes(kern: str, idx: int, dtype: int, n: int, m: int) -> bool:
    """Whether variant ``kern`` takes key dim n, value dim m in this dtype on GPU idx (builds the library)."""
    if kern in STAGED:
        return CudaBackend.plan_staged_for(kern, idx, dtype, n, m) > 0
    return CudaBackend.plan_for(idx, dtype, n, m) > 0


def choose_variant(idx: int, dtype: int, n: int, m: int, kernel: str | None = None) -> tuple[str | None, str, str]:
    """(variant, reason, fix): the variant that runs key dim n, value dim m, dtype code (1 bf16, 0
    float32) on GPU idx. The default (v3) where it takes the shape, else the other variant that does
    (v2 takes some large value dims at n 8 and 24 that v3 does not, v3 some that v2 does not; the record
    names the one that ran); a variant asked for by name runs only itself. None when none runs it, with
    why and what to do about it."""
    kern = kernel_variant(kernel)
    order = [kern] if _explicit(kernel) else [kern] + [k for k in KERNELS if k != kern]
    try:
        for k in order:
            if _takes(k, idx, dtype, n, m):
                return k, "", ""
        others = [k for k in KERNELS if k != kern and _takes(k, idx, dtype, n, m)]
    except Exception as exc:  # no nvcc or a build failure: fall back once, say so
        from elmanlab.ops._build import failure
        reason, fix = failure(exc)
        if "build" not in _WARNED:
            _WARNED.add("build")
            warnings.warn(f"elmanlab: E88 CUDA kernel unavailable ({reason}); using the reference", RuntimeWarning)
        return None, f"E88 kernel unavailable: {reason}", fix
    fix = (f"unset {KERNEL_ENV} (kernel {others[0]} takes this shape), or " + WIDTH_FIX) if others else WIDTH_FIX
    return None, f"the E88 kernel {kern} does not take key dim {n} with value dim {m} on this GPU", fix


def plan_status(idx: int, dtype: int, n: int, m: int, kernel: str | None = None) -> tuple[bool, str, str]:
    """(runs, reason, fix) of :func:`choose_variant`."""
    kern, reason, fix = choose_variant(idx, dtype, n, m, kernel)
    return kern is not None, reason, fix


def cuda_variant(q, v, kernel: str | None = None) -> tuple[str | None, str, str]:
    """(variant, reason, fix): the CUDA kernel variant (:func:`choose_variant`; ``kernel`` asks for
    one) that runs heads of key dim q.shape[-1] and value dim v.shape[-1] in q's dtype, or None with
    why (not CUDA, the build's first error line, the shape) and what to do about it. A build that
    failed warns once."""
    if not q.is_cuda or q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return None, f"{q.dtype} {'CUDA' if q.is_cuda else 'CPU'} tensors", "run on a CUDA GPU in bf16 or float32"
    return choose_variant(device_index(q.device), 1 if q.dtype == torch.bfloat16 else 0, q.shape[-1],
                          v.shape[-1], kernel)


def e88_scan_cuda(q, k, v, decay, S0=None, nonlinearity="tanh", g=None, gate_activation="silu",
                  kernel: str | None = None, C: int | None = None):
    """The CUDA kernel, variant ``kernel`` (default :func:`kernel_variant`), checkpoint interval
    ``C`` (default: the variant's plan); raises when the shape is not supported. Records what ran."""
    kern = cuda_variant(q, v, kernel)[0]
    if kern is None:
        raise RuntimeError(f"E88 kernel {kernel_variant(kernel)} does not support n={q.shape[-1]}, m={v.shape[-1]}")
    if C is not None and kern in STAGED and not CudaBackend.fits(q, v.shape[-1], C, kern):
        raise ValueError(f"E88 kernel {kern}: checkpoint interval C={C} does not fit the GPU's shared memory at "
                         f"n={q.shape[-1]}, m={v.shape[-1]}, {q.dtype} (omit C: the plan picks one that fits)")
    record("e88", PATHS[kern], True)
    return e88_scan_backend(q, k, v, decay, S0, nonlinearity, g, gate_activation, CudaBackend.pinned(kern), C)


def fast_e88(q, k, v, decay, S0=None, nonlinearity="tanh", g=None, gate_activation="silu"):
    """FAST_IMPLS['default']: the CUDA kernel where it supports the shape, else the reference
    (recorded as such: ``backend_info`` at the layer's shapes says so before a run starts). The
    record names the kernel variant that ran."""
    kern = cuda_variant(q, v)[0]
    if kern is not None:
        record("e88", PATHS[kern], True)
        return e88_scan_backend(q, k, v, decay, S0, nonlinearity, g, gate_activation, CudaBackend.pinned(kern))
    record("e88", REFERENCE, False)
    return e88_scan_ref(q, k, v, decay, S0, nonlinearity, g, gate_activation)


def backend_info(n_state: int, head_v_dim: int) -> dict:
    """What :func:`fast_e88` runs for bf16 heads of key dim ``n_state`` and value dim ``head_v_dim``
    on the current GPU (asks the kernel's plan: builds the kernel once)."""
    kern, reason, fix = choose_variant(torch.cuda.current_device(), 1, n_state, head_v_dim)
    if kern is not None:
        why = "" if kern == kernel_variant() else f" (kernel {kernel_variant()} does not take it)"
        return {"path": PATHS[kern], "fast": True, "reason": f"n_state {n_state}, value dim {head_v_dim}{why}"}
    return {"path": REFERENCE, "fast": False, "reason": reason, "fix": fix}
