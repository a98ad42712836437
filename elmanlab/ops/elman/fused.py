"""Fast paths for the Elman recurrences: the persistent CUDA kernel and cuDNN's tanh RNN.

``ElmanScanFn`` is the autograd wrapper around a *backend* that provides two sequential scans
with the persistent kernel's contract:

* ``fwd(wx, W [D,D] fp32, b fp32|None, h0 fp32|None, mode) -> (h [B,T,D] in wx's dtype, h_T fp32)``
  with ``s_t = act(wx_t + b + s_{t-1} @ W^T)`` in fp32 (mode 0 tanh, 1 linear);
* ``bwd(dh, h, W fp32, dh_T fp32|None, mode) -> dpre [B,T,D] fp32``, the reverse-time scan
  ``dpre_t = (dh_t + dpre_{t+1} @ W) * act'(h_t)`` (``dh_T`` enters at the last step).

The weight gradient is then one GEMM over all steps, ``dW = dpre^T h_prev``; ``db = sum dpre``,
``dwx = dpre``, ``dh0 = dpre_0 @ W``. :class:`CudaBackend` runs both scans as one cooperative
launch each (``persistent.cu``); :class:`TorchBackend` is the same contract in plain PyTorch
(used on CPU to test the wrapper and the backward algebra).
"""
from __future__ import annotations

import ctypes
import os
import warnings
from pathlib import Path

import torch

from elmanlab.ops._build import device_index
from elmanlab.ops._dispatch import REFERENCE, env_flag, record
from elmanlab.ops.elman.reference import elman_scan_ref

_SRC = Path(__file__).with_name("persistent.cu")
_DTYPE_CODE = {torch.float32: 0, torch.bfloat16: 1}
MODES = {"tanh": 0, "linear": 1}
MMA_MAX_KP = 16 * 8 * 17       # the 16-unit tensor-core kernel: 8 warps x 17 k-steps of 16
WIDE_MAX_KP = 16 * 16 * 16     # the 32-unit one: 16 warps x 16 k-steps of 16 (d_inner <= 4096)
WIDE_UNITS = 32                # output units per block of the wide kernel
SYNC_MODES = ("fence", "release")     # in the kernel's order: sync 0, 1
SYNC_DEFAULT = "release"     # 2-5% faster than "fence" in 9 of 9 rows side by side on an H200
POISON = False      # tests set this: kernel outputs start as NaN, so an unwritten element fails


def _empty(shape, dtype, device):
    t = torch.empty(shape, dtype=dtype, device=device)
    return t.fill_(float("nan")) if POISON else t


class TorchBackend:
    """The kernel contract in plain PyTorch, fp32 state (CPU tests, and any device)."""

    name = "torch"

    @staticmethod
    def fwd(wx, W, b, h0, mode):
        B, T, D = wx.shape
        s = wx.new_zeros(B, D, dtype=torch.float32) if h0 is None else h0
        Wt = W.t()
        outs = []
        for t in range(T):
            pre = wx[:, t].float() + s @ Wt
            if b is not None:
                pre = pre + b
            s = torch.tanh(pre) if mode == 0 else pre
            outs.append(s.to(wx.dtype))
        return torch.stack(outs, 1), s

    @staticmethod
    def bwd(dh, h, W, dhT, mode):
        B, T, D = h.shape
        c = dh.new_zeros(B, D, dtype=torch.float32) if dhT is None else dhT
        out = torch.empty(B, T, D, dtype=torch.float32, device=h.device)
        for t in range(T - 1, -1, -1):
            g = dh[:, t].float() + c
            dp = g * (1.0 - h[:, t].float() ** 2) if mode == 0 else g
            out[:, t] = dp
            c = dp @ W
        return out


class CudaBackend:
    """The persistent kernels: each block keeps its slice of W resident for the whole sequence (in
    registers and/or shared memory), one grid barrier per step; :meth:`variant` picks which."""

    name = "persistent"
    _plans: dict = {}
    # bf16 inputs run the tensor-core variant (bf16 W in registers, bf16 state exchange); False
    # runs them through the fp32 CUDA-core kernel instead (kept for comparison). None: read from
    # ELMANLAB_ELMAN_MMA (1/true or 0/false; default on) on the first launch.
    use_mma: bool | None = None
    force_variant: str | None = None      # "mma" or "wide": tests and benchmarks only
    # the tensor-core kernels' grid barrier every step: "fence" (__threadfence, atomicAdd, spin,
    # __threadfence) or "release" (one release reduction, then the acquire spin). None: read
    # ELMANLAB_ELMAN_SYNC, default SYNC_DEFAULT.
    sync: str | None = None
    # B > 16 on the 16-unit kernel: True runs all (up to 4) batch tiles of a step in one pass over W
    # ("mma-multi"), False one tile after another. On: fwd+bwd 1.12x at B64 d_inner 1024, 1.03x at 1760,
    # a tie at 2112 on an H200 (benchmarks/results/kernels-candidates-h200-2026-12-03.md).
    multi_tile: bool = True
    # timing probes of the 16-unit kernel (benchmarks/kernels.py --probe only; the results are WRONG):
    # 1 no grid barrier, 2 no state loads, 6 no state loads and no mma's, 7 none of the three
    probe: int = 0
    last_variant: str | None = None       # the variant of the last launch (tests assert it)

    @classmethod
    def mma_enabled(cls) -> bool:
        if cls.use_mma is None:
            cls.use_mma = env_flag("ELMANLAB_ELMAN_MMA", True)
        return cls.use_mma

    @staticmethod
    def lib(device_index: int):
        from elmanlab.ops._build import load_library

        lib = load_library(_SRC, device_index)
        if not getattr(lib, "_elk_typed", False):
            P, I = ctypes.c_void_p, ctypes.c_int
            lib.elman_plan.argtypes = [I, I] + [ctypes.POINTER(ctypes.c_int)] * 5
            lib.elman_plan.restype = I
            lib.elman_persistent_launch.argtypes = [I, P, I, I] + [P] * 9 + [I] * 8
            lib.elman_persistent_launch.restype = I
            lib.elman_mma_launch.argtypes = [I, P, I] + [P] * 9 + [I] * 10
            lib.elman_mma_launch.restype = I
            lib.elman_mma_wide_launch.argtypes = [I, P, I] + [P] * 9 + [I] * 8
            lib.elman_mma_wide_launch.restype = I
            lib.elman_mma_wide_smem.argtypes = [I]
            lib.elman_mma_wide_smem.restype = I
            lib._elk_typed = True
        return lib

    @classmethod
    def plan(cls, device_index: int, D: int):
        """The kernels' limits at width ``D`` on this GPU: ``ok`` (the fp32 CUDA-core kernel runs),
        ``mma_ok`` (the 16-unit tensor-core kernel: D <= 16 x SMs), ``wide_ok`` (the 32-unit one:
        D <= 4096 and <= 32 x SMs, its shared memory fits)."""
        key = (device_index, D)
        if key not in cls._plans:
            from elmanlab.ops._build import check

            lib = cls.lib(device_index)
            vals = [ctypes.c_int(0) for _ in range(5)]
            check(lib, lib.elman_plan(device_index, D, *[ctypes.byref(v) for v in vals]), "elman_plan")
            KP, KC, smem, blocks, sms = (v.value for v in vals)
            optin = torch.cuda.get_device_properties(device_index).shared_memory_per_block_optin
            wide_blocks = -(-D // WIDE_UNITS)
            wide_smem = lib.elman_mma_wide_smem(KP)
            cls._plans[key] = dict(
                KP=KP, KC=KC, smem=smem, blocks=blocks, sms=sms, ok=KC > 0 and blocks <= sms,
                mma_ok=KP <= MMA_MAX_KP and blocks <= sms, wide_blocks=wide_blocks, wide_smem=wide_smem,
                wide_ok=KP <= WIDE_MAX_KP and wide_blocks <= sms and wide_smem <= optin, smem_optin=optin)
        return cls._plans[key]

    @classmethod
    def sync_mode(cls) -> str:
        if cls.sync is None:
            raw = os.environ.get("ELMANLAB_ELMAN_SYNC") or SYNC_DEFAULT
            if raw.lower() not in SYNC_MODES:
                from elmanlab.errors import ElmanlabError
                raise ElmanlabError(f"ELMANLAB_ELMAN_SYNC={raw!r} is not understood: use "
                                    f"{', '.join(SYNC_MODES)}, or unset it")
            cls.sync = raw.lower()
        return cls.sync

    @classmethod
    def variant(cls, device_index: int, D: int, dtype) -> str | None:
        """Which kernel runs ``dtype`` inputs of width ``D``: "mma" (bf16, 16 units per block, W in
        registers), "wide" (bf16, 32 units per block, W split between registers and shared memory),
        "fp32" (CUDA cores, W in shared memory), or None (none fits). ``force_variant`` (tests,
        benchmarks) picks "mma" or "wide" where that one fits."""
        p = cls.plan(device_index, D)
        if dtype == torch.bfloat16 and cls.mma_enabled():
            if cls.force_variant is not None:
                return cls.force_variant if p[f"{cls.force_variant}_ok"] else None
            if p["mma_ok"]:
                return "mma"
            if p["wide_ok"]:
                return "wide"
        return "fp32" if p["ok"] else None

    @classmethod
    def _launch(cls, X, aux, bias, M, c0, out, sfinal, B, T, D, reverse, mode, has_s0, s0=None):
        from elmanlab.ops._build import check, ptr, stream_ptr

        dev = X.device
        idx = device_index(dev)
        p = cls.plan(idx, D)
        lib = cls.lib(idx)
        kind = cls.variant(idx, D, X.dtype)
        if kind is None:
            raise RuntimeError(f"persistent Elman kernel does not support D={D}, dtype={X.dtype}")
        multi = 1 if (kind == "mma" and B > 16 and cls.multi_tile) else 0
        cls.last_variant = "mma-multi" if multi else kind
        if kind in ("mma", "wide"):
            sbuf = torch.zeros(2, B, p["KP"], dtype=torch.bfloat16, device=dev)
            if s0 is not None:
                sbuf[0, :, :D] = s0
            counter = torch.zeros(1, dtype=torch.int32, device=dev)
            launch = lib.elman_mma_launch if kind == "mma" else lib.elman_mma_wide_launch
            code = launch(
                idx, stream_ptr(dev), _DTYPE_CODE[out.dtype], ptr(X), ptr(aux), ptr(bias), ptr(M), ptr(c0),
                ptr(out), ptr(sfinal), ptr(sbuf), ptr(counter), B, T, D, p["KP"], reverse, mode, has_s0,
                SYNC_MODES.index(cls.sync_mode()), *((multi, cls.probe) if kind == "mma" else ()))
            check(lib, code, f"elman {kind} kernel launch")
            return
        sbuf = torch.zeros(2, B, p["KP"], dtype=torch.float32, device=dev)
        if s0 is not None:
            sbuf[0, :, :D] = s0
        counter = torch.zeros(1, dtype=torch.int32, device=dev)
        code = lib.elman_persistent_launch(
            idx, stream_ptr(dev), _DTYPE_CODE[X.dtype], _DTYPE_CODE[out.dtype], ptr(X), ptr(aux), ptr(bias),
            ptr(M), ptr(c0), ptr(out), ptr(sfinal), ptr(sbuf), ptr(counter), B, T, D, p["KP"], p["KC"],
            reverse, mode, has_s0)
        check(lib, code, "elman persistent kernel launch")

    @classmethod
    def fwd(cls, wx, W, b, h0, mode):
        B, T, D = wx.shape
        h = _empty(wx.shape, wx.dtype, wx.device)
        hT = _empty((B, D), torch.float32, wx.device)
        cls._launch(wx, None, b, W, None, h, hT, B, T, D, 0, mode, int(h0 is not None), s0=h0)
        return h, hT

    @classmethod
    def bwd(cls, dh, h, W, dhT, mode):
        B, T, D = h.shape
        dpre = _empty((B, T, D), torch.float32, h.device)
        MT = W.t().contiguous()
        cls._launch(dh, h if mode == 0 else None, None, MT, dhT, dpre, None, B, T, D, 1, mode + 2, 0)
        return dpre


class ElmanScanFn(torch.autograd.Function):
    """(wx, W_h, b, h0) -> (h [B,T,D] in wx's dtype, h_T [B,D] fp32) through ``backend``."""

    @staticmethod
    def forward(ctx, wx, W_h, b, h0, mode, backend):
        W32 = W_h.detach().float().contiguous()
        b32 = None if b is None else b.detach().float().contiguous()
        h032 = None if h0 is None else h0.detach().float().contiguous()
        h, hT = backend.fwd(wx.detach().contiguous(), W32, b32, h032, mode)
        ctx.save_for_backward(h, W_h, h0)
        ctx.mode, ctx.backend, ctx.has_b = mode, backend, b is not None
        ctx.wx_dtype = wx.dtype
        ctx.b_dtype = None if b is None else b.dtype
        return h, hT

    @staticmethod
    def backward(ctx, dh, dhT):
        h, W_h, h0 = ctx.saved_tensors
        B, T, D = h.shape
        W32 = W_h.detach().float().contiguous()
        if dh is None:
            dh = torch.zeros_like(h)
        dhT32 = None if dhT is None else dhT.float().contiguous()
        dpre = ctx.backend.bwd(dh.to(h.dtype).contiguous(), h, W32, dhT32, ctx.mode)
        need = ctx.needs_input_grad
        dwx = dpre.to(ctx.wx_dtype) if need[0] else None
        dW = None
        if need[1]:
            gd = h.dtype if h.dtype in (torch.bfloat16, torch.float16) else torch.float32
            first = (h.new_zeros(B, 1, D, dtype=gd) if h0 is None else h0.detach().to(gd).reshape(B, 1, D))
            hprev = torch.cat([first, h[:, :-1].to(gd)], dim=1).reshape(B * T, D)
            dW = (dpre.to(gd).reshape(B * T, D).t() @ hprev).float().to(W_h.dtype)
        db = dpre.sum((0, 1)).to(ctx.b_dtype) if (ctx.has_b and need[2]) else None
        dh0 = (dpre[:, 0] @ W32).to(h0.dtype) if (h0 is not None and need[3]) else None
        return dwx, dW, db, dh0, None, None


def _empty_scan(wx, h0):
    B, T, D = wx.shape
    hT = wx.new_zeros(B, D, dtype=torch.float32) if h0 is None else h0.float()
    return wx.new_zeros(B, 0, D), hT


def elman_scan_backend(wx, W_h, b=None, h0=None, nonlinearity="tanh", backend=TorchBackend):
    """The fused-kernel contract through ``backend`` (TorchBackend on any device)."""
    if nonlinearity not in MODES:
        raise ValueError(f"nonlinearity must be 'tanh' or 'linear', got {nonlinearity!r}")
    if wx.shape[1] == 0:
        return _empty_scan(wx, h0)
    return ElmanScanFn.apply(wx, W_h, b, h0, MODES[nonlinearity], backend)


def elman_scan_persistent(wx, W_h, b=None, h0=None, nonlinearity="tanh"):
    """The persistent CUDA kernel (raises when the shape or dtype is not supported)."""
    if not persistent_supported(wx):
        raise RuntimeError(f"persistent Elman kernel does not support D={wx.shape[-1]}, dtype={wx.dtype}")
    return elman_scan_backend(wx, W_h, b, h0, nonlinearity, CudaBackend)


def elman_scan_cudnn(wx, W_h, b=None, h0=None):
    """cuDNN's tanh RNN with W_ih = I: h_t = tanh(I wx_t + W_h h_{t-1} + b) (state in wx's dtype)."""
    B, T, D = wx.shape
    if T == 0:
        return _empty_scan(wx, h0)
    dt = wx.dtype
    hx = (wx.new_zeros(B, D) if h0 is None else h0.to(dt)).unsqueeze(0).contiguous()
    bias = wx.new_zeros(D) if b is None else b.to(dt)
    params = [torch.eye(D, device=wx.device, dtype=dt), W_h.to(dt), bias, wx.new_zeros(D)]
    out, hT = torch._VF.rnn_tanh(wx.contiguous(), hx, params, True, 1, 0.0, torch.is_grad_enabled(),
                                 False, True)
    return out, hT[0]


_WARNED = set()


def _warn_once(key, msg):
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)


# path names, shared by backend_info and the record of what ran (ops.implementations_used). The
# persistent kernel is the fast path; where the width is too large for it the stepping stones
# (cuDNN, the chunked form) are the fastest that runs, and count as fast; where it could run but
# its build failed (no nvcc, a compile error) they are a fallback and do not.
PERSISTENT = {nl: f"elmanlab persistent Elman CUDA kernel ({nl})" for nl in MODES}
WIDE = {nl: f"elmanlab persistent Elman CUDA kernel ({nl}, wide: 32 units per block)" for nl in MODES}
CUDNN = "cuDNN tanh RNN"
CUDNN_STEP = "cuDNN tanh RNN (stepping stone)"
CHUNKED = "chunked linear scan (PyTorch GEMMs, ops/elman/chunked.py)"
UNBUILT = " (fallback: persistent kernel unavailable)"
IMPLS = ("auto", "persistent", "cudnn")
UNSET_IMPL = "unset ELMANLAB_ELMAN_IMPL (auto picks the fastest path that runs here)"
CUDNN_LINEAR = "cuDNN has no linear RNN, so E42's linear recurrence cannot run on it"


def persistent_status(wx) -> tuple[str, str, str]:
    """(kind, reason, fix) of the persistent kernel on this input. kind: "ok" (it runs), "input"
    (not a CUDA [B, T, D] float32/bfloat16 tensor), "size" (W_h does not fit the GPU), "build" (no
    nvcc, a compile or load error); reason and fix say why not and what would change it."""
    if not wx.is_cuda:
        return "input", "not a CUDA tensor", "run on a CUDA GPU"
    if wx.dtype not in _DTYPE_CODE or wx.dim() != 3:
        return ("input", f"{wx.dtype} input of {wx.dim()} dims (the kernel takes [B, T, D] float32 or bfloat16)",
                "train in bf16 autocast or float32")
    idx = device_index(wx.device)
    return plan_status(idx, wx.shape[-1], wx.dtype)


def plan_status(device_index: int, D: int, dtype=torch.bfloat16) -> tuple[str, str, str]:
    """:func:`persistent_status` for ``dtype`` inputs of width ``D`` on a GPU (builds the kernel once)."""
    try:
        p = CudaBackend.plan(device_index, D)
        kind = CudaBackend.variant(device_index, D, dtype)
    except Exception as exc:  # no nvcc, compile error: the caller falls back (or refuses); say so once
        from elmanlab.ops._build import failure
        reason, fix = failure(exc)
        _warn_once("build", f"elmanlab: persistent Elman kernel unavailable ({reason}); using the fallback")
        return "build", f"persistent kernel unavailable: {reason}", fix
    if kind is not None:
        return "ok", "", ""
    if dtype == torch.bfloat16 and CudaBackend.mma_enabled() and CudaBackend.force_variant is None:
        if D > WIDE_MAX_KP:
            return "size", f"d_inner {D}: the widest persistent kernel holds d_inner <= {WIDE_MAX_KP}", \
                "use a smaller d_inner"
        return "size", (f"d_inner {D} needs {p['wide_blocks']} resident blocks of {WIDE_UNITS} units, the GPU has "
                        f"{p['sms']} SMs"), "use a smaller d_inner"
    if dtype != torch.bfloat16:
        return "size", (f"d_inner {D} with {dtype} inputs needs {p['blocks']} resident blocks of 16 units, "
                        f"the GPU has {p['sms']} SMs"), "train in bf16 autocast (its kernels hold wider layers)"
    return "size", f"d_inner {D} does not fit the selected persistent kernel", "use a smaller d_inner"


def persistent_supported(wx) -> bool:
    """True when a persistent kernel can run this input (CUDA, fp32 up to 16 x SMs, bf16 up to 4096
    and 32 x SMs)."""
    return persistent_status(wx)[0] == "ok"


def _persistent_name(nl: str, wx=None, d_inner: int | None = None) -> str:
    """The record name of the persistent kernel that runs here (the wide variant has its own)."""
    variant = getattr(CudaBackend, "variant", None)
    if variant is None:                     # tests stand the PyTorch backend in for the kernel
        return PERSISTENT[nl]
    if wx is not None:
        idx = device_index(wx.device)
        kind = variant(idx, wx.shape[-1], wx.dtype)
    else:
        kind = variant(torch.cuda.current_device(), d_inner, torch.bfloat16)
    return WIDE[nl] if kind == "wide" else PERSISTENT[nl]


def _impl_choice() -> str:
    """ELMANLAB_ELMAN_IMPL: auto (unset or empty), persistent or cudnn (any case); anything else is
    a one-line ElmanlabError."""
    raw = os.environ.get("ELMANLAB_ELMAN_IMPL")
    choice = (raw or "auto").lower()
    if choice not in IMPLS:
        from elmanlab.errors import ElmanlabError
        raise ElmanlabError(f"ELMANLAB_ELMAN_IMPL={raw!r} is not understood: use auto, persistent or cudnn, "
                            "or unset it")
    return choice


def _refused(choice: str, why: str):
    from elmanlab.errors import ElmanlabError
    return ElmanlabError(f"ELMANLAB_ELMAN_IMPL={choice}: {why}; {UNSET_IMPL}")


def fast_tanh(wx, W_h, b=None, h0=None):
    """FAST_IMPLS['tanh']: the persistent kernel where it runs, else cuDNN's tanh RNN
    (ELMANLAB_ELMAN_IMPL=cudnn: always cuDNN; =persistent: the persistent kernel or an error)."""
    choice = _impl_choice()
    kind = "input"
    if choice != "cudnn":
        kind, why, _ = persistent_status(wx)
        if kind == "ok":
            record("elman", _persistent_name("tanh", wx), True)
            return elman_scan_backend(wx, W_h, b, h0, "tanh", CudaBackend)
        if choice == "persistent":
            raise _refused(choice, f"the persistent kernel cannot run here ({why})")
    if wx.dtype in (torch.float32, torch.float16, torch.bfloat16):
        if choice == "cudnn":
            record("elman", CUDNN, True)
        elif kind == "build":
            record("elman", CUDNN + UNBUILT, False)
        else:
            record("elman", CUDNN_STEP, True)
        return elman_scan_cudnn(wx, W_h, b, h0)
    record("elman", REFERENCE, False)
    return elman_scan_ref(wx, W_h, b, h0, "tanh")


def fast_linear(wx, W_h, b=None, h0=None):
    """FAST_IMPLS['linear']: the persistent kernel where it runs, else the chunked GEMM form
    (ELMANLAB_ELMAN_IMPL=persistent: the persistent kernel or an error; =cudnn: an error)."""
    choice = _impl_choice()
    if choice == "cudnn":
        raise _refused(choice, CUDNN_LINEAR)
    kind, why, _ = persistent_status(wx)
    if kind == "ok":
        record("elman", _persistent_name("linear", wx), True)
        return elman_scan_backend(wx, W_h, b, h0, "linear", CudaBackend)
    if choice == "persistent":
        raise _refused(choice, f"the persistent kernel cannot run here ({why})")
    from elmanlab.ops.elman.chunked import elman_linear_chunked
    if kind == "build":
        record("elman", CHUNKED + UNBUILT, False)
    else:
        record("elman", CHUNKED, True)
    return elman_linear_chunked(wx, W_h, b, h0)


def backend_info(d_inner: int, nonlinearity: str) -> dict:
    """What :func:`fast_tanh` / :func:`fast_linear` run for bf16 inputs of width ``d_inner`` on the
    current GPU (asks the persistent kernel's plan: builds the kernel once): ``{"path", "fast",
    "reason"}`` and ``"fix"`` when not fast. A path the ELMANLAB_ELMAN_IMPL setting asks for and that
    cannot run here is not fast ("refused"); so is a fallback taken because the kernel's build failed."""
    choice = _impl_choice()
    if choice == "cudnn":
        if nonlinearity == "tanh":
            return {"path": CUDNN, "fast": True, "reason": "ELMANLAB_ELMAN_IMPL=cudnn"}
        return {"path": "refused: ELMANLAB_ELMAN_IMPL=cudnn", "fast": False, "reason": CUDNN_LINEAR,
                "fix": UNSET_IMPL}
    kind, why, fix = plan_status(torch.cuda.current_device(), d_inner)
    if kind == "ok":
        return {"path": _persistent_name(nonlinearity, d_inner=d_inner), "fast": True,
                "reason": f"d_inner {d_inner} fits"}
    if choice == "persistent":
        return {"path": "refused: ELMANLAB_ELMAN_IMPL=persistent", "fast": False,
                "reason": f"the persistent kernel cannot run here ({why})", "fix": f"{UNSET_IMPL}, or {fix}"}
    fallback = CUDNN if nonlinearity == "tanh" else CHUNKED
    if kind == "build":
        return {"path": fallback + UNBUILT, "fast": False, "reason": why, "fix": fix}
    return {"path": CUDNN_STEP if nonlinearity == "tanh" else CHUNKED, "fast": True, "reason": why}
