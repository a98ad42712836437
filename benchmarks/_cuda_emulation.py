"""The CUDA training step emulated on the CPU, for benchmarks/memory_breakdown.py: a port of the E88
v3 kernel's plan (its state-checkpoint interval C on an H200) and v2's, stand-ins for the families'
CUDA ops that save exactly what their CUDA autograd Functions save (``cuda_paths``), and CUDA's
autocast rules applied on the CPU (``CudaAutocastRules``). See memory_breakdown.py's docstring.
"""
from __future__ import annotations

import collections
import contextlib
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# ------------------------------------------------------------------ the E88 v3 kernel's plan (H200)
H200 = {"sms": 132, "smem_per_sm": 228 * 1024, "smem_per_block": 227 * 1024, "reserved_per_block": 1024}
# Backward blocks per SM allowed by registers, by threads per block. Not readable without the GPU:
# inferred from the C the plan picked on an H200 (benchmarks/results/e88-ab-h200-2026-12-03-n48.md:
# C = 9 at B16/B64 x H32/H44 n48 and B16 H64 n32, C = 7 at B64 H64 n32): only caps of 2 blocks at
# 192 threads (n48) and 5 at 128 threads (n32) reproduce all six. Other widths: shared memory only.
V3_REGISTER_BLOCKS = {192: 2, 128: 5}
V3_C_RANGE = (4, 16)


def _al16(x: int) -> int:
    return (x + 15) // 16 * 16


def e88_v3_bwd_smem(N: int, M: int, C: int, itemsize: int) -> int:
    """Bytes of shared memory of v3's backward block (``v3_bwd_layout`` in e88_kernel.cu)."""
    npt, nth = N // 4, ((4 * M + 31) // 32) * 32
    slot = _al16(C * N * itemsize) * 2 + _al16(C * M * itemsize) * 3 + _al16(C * 4)
    part = _al16(C * npt * nth * 4)
    dl = _al16(C * (nth // 32) * (2 * N + 1) * 4)
    return part + dl + _al16(C * M * 4) + 2 * slot


def e88_v3_plan(N: int, M: int, BH: int, itemsize: int, gpu: dict = H200) -> dict:
    """v3's checkpoint interval (``e88v3_plan``): fewest waves of B*H backward blocks over the SMs,
    then the largest C in 4..16."""
    nth = ((4 * M + 31) // 32) * 32
    best = None
    for c in range(V3_C_RANGE[0], V3_C_RANGE[1] + 1):
        sm = e88_v3_bwd_smem(N, M, c, itemsize)
        if sm > gpu["smem_per_block"]:
            break
        nb = gpu["smem_per_sm"] // (sm + gpu["reserved_per_block"])
        nb = min(nb, V3_REGISTER_BLOCKS.get(nth, nb))
        if nb < 1:
            break
        waves = -(-BH // (nb * gpu["sms"]))
        if best is None or waves <= best["waves"]:
            best = {"C": c, "waves": waves, "blocks_per_sm": nb, "smem": sm,
                    "register_cap_known": nth in V3_REGISTER_BLOCKS}
    return best or {"C": 1, "waves": None, "blocks_per_sm": None, "smem": None, "register_cap_known": False}


def e88_v2_plan(N: int, M: int, budget: int = 64 * 1024) -> dict:
    """v2's checkpoint interval (``e88_plan``): the largest of 16, 8, 4, 2, 1 whose backward shared
    memory fits 64 KB; the same for fp32 and bf16."""
    npt, nth = N // 4, ((4 * M + 31) // 32) * 32
    for c in (16, 8, 4, 2, 1):
        sm = ((c + 1) * npt * nth + c * (nth // 32) * (2 * N + 1)) * 4
        if sm <= budget:
            return {"C": c, "waves": None, "blocks_per_sm": None, "smem": sm, "register_cap_known": True}
    return {"C": 1, "waves": None, "blocks_per_sm": None, "smem": None, "register_cap_known": False}


# ------------------------------------------------------------------ stand-ins for the CUDA ops
class E88ShapeBackend:
    """``fused.CudaBackend``'s outputs (shapes and dtypes) without the kernel."""
    name = "shape"
    kernel = "v3"                                     # whose plan picks C (v3: today's default)
    plans: list = []                                  # one dict per call: what the plan picked

    @classmethod
    def plan(cls, q, m):
        B, T, H, n = q.shape
        p = e88_v3_plan(n, m, B * H, q.element_size()) if cls.kernel == "v3" else e88_v2_plan(n, m)
        cls.plans.append({"kernel": cls.kernel, "n": n, "m": m, "BH": B * H,
                          "dtype": str(q.dtype).replace("torch.", ""), **p})
        return p["C"]

    @staticmethod
    def fwd(q, k, v, a, S0, g, tanh_on, gate, C):
        B, T, H, n = q.shape
        m = v.shape[-1]
        f = torch.float32
        return (q.new_zeros(B, T, H, m), q.new_zeros(B, H, m, n, dtype=f),
                q.new_zeros(B, H, (T + C - 1) // C, m, n, dtype=f))


def e88_scan_cuda_standin(q, k, v, decay, S0=None, nonlinearity="tanh", g=None, gate_activation="silu"):
    from elmanlab.ops.e88 import fused
    return fused.e88_scan_backend(q, k, v, decay, S0, nonlinearity, g, gate_activation, E88ShapeBackend)


class ElmanShapeBackend:
    name = "shape"

    @staticmethod
    def fwd(wx, W, b, h0, mode):
        B, T, D = wx.shape
        return wx.new_zeros(B, T, D), wx.new_zeros(B, D, dtype=torch.float32)


def elman_scan_cuda_standin(wx, W_h, b=None, h0=None, nonlinearity="tanh"):
    from elmanlab.ops.elman import fused
    return fused.elman_scan_backend(wx, W_h, b, h0, nonlinearity, ElmanShapeBackend)


class _SSDFn(torch.autograd.Function):
    """mamba_ssm ``MambaChunkScanCombinedFn`` (z None): saves out, x, dt, dA_cumsum [B,H,T] fp32 (T
    rounded up to the chunk), A, B, C, D, dt_bias."""

    @staticmethod
    def forward(ctx, x, dt, A, Bm, Cm, D, dt_bias, chunk_size):
        Bsz, T, H, P = x.shape
        nchunks = -(-T // chunk_size)
        out = x.new_zeros(Bsz, T, H, P)
        dA_cumsum = x.new_zeros(Bsz, H, nchunks, chunk_size, dtype=torch.float32)
        ctx.save_for_backward(out, x, dt, dA_cumsum, A, Bm, Cm, D, dt_bias)
        return out, x.new_zeros(Bsz, H, P, Bm.shape[-1], dtype=torch.float32)

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError("shape stand-in: forward only")


def ssd_cuda_standin(x, dt, A, Bm, Cm, D=None, initial_state=None, chunk_size=64, dt_bias=None,
                     dt_softplus=False):
    return _SSDFn.apply(x, dt, A, Bm, Cm, D, dt_bias, chunk_size)


class _ConvFn(torch.autograd.Function):
    """fla's ``causal_conv1d`` (its input_guard makes x contiguous): saves x, weight, bias."""

    @staticmethod
    def forward(ctx, x, w, b):
        x = x.contiguous()
        ctx.save_for_backward(x, w, b)
        return x.new_zeros(x.shape)

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError("shape stand-in: forward only")


def short_conv_cuda_standin(x, weights, bias, state, activation):
    from elmanlab.layers.common import conv_state_of
    if state is not None:
        return None
    w = (weights[0] if len(weights) == 1 else torch.cat(weights)).squeeze(1).to(x.dtype)
    y = _ConvFn.apply(x, w, None if bias is None else bias.to(x.dtype))
    return y, conv_state_of(x, weights[0].shape[-1])


class _GatedNormFn(torch.autograd.Function):
    """mamba_ssm ``rmsnorm_fn`` (gated): saves x (contiguous [B*T, d]), weight, z, rstd [B*T] fp32."""

    @staticmethod
    def forward(ctx, x, z, weight):
        x2 = x.reshape(-1, x.shape[-1]).contiguous()
        z2 = z.reshape(-1, z.shape[-1])
        ctx.save_for_backward(x2, weight, z2, x.new_zeros(x2.shape[0], dtype=torch.float32))
        return x.new_zeros(x.shape)

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError("shape stand-in: forward only")


def gated_rmsnorm_cuda_standin(x, z, weight, eps, gate_after):
    return _GatedNormFn.apply(x, z, weight)


class _FusedRMSNormFn(torch.autograd.Function):
    """CUDA's ``_fused_rms_norm`` (what F.rms_norm runs on CUDA): saves input, weight, rstd."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        y = F.rms_norm(x, (x.shape[-1],), weight, eps)
        ctx.save_for_backward(x, weight, x.new_zeros(*x.shape[:-1], 1, dtype=torch.float32))
        return y

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError("shape stand-in: forward only")


@contextlib.contextmanager
def cuda_paths(families=("e88", "e1", "mamba2")):
    """Route the layers to the CUDA stand-ins for the duration."""
    import elmanlab.layers.e88 as le88
    import elmanlab.layers.elman as lelman
    import elmanlab.layers.mamba2 as lm2
    import elmanlab.ops.ssd.fast as ssd_fast
    patches = [(le88, "e88_scan", e88_scan_cuda_standin), (lelman, "elman_scan", elman_scan_cuda_standin),
               (lm2, "ssd", ssd_cuda_standin), (lm2, "fast_short_conv", short_conv_cuda_standin),
               (lm2, "fast_path_enabled", lambda *t: True),
               (ssd_fast, "gated_rmsnorm_fast", gated_rmsnorm_cuda_standin)]
    old = [(mod, name, getattr(mod, name)) for mod, name, _ in patches]
    try:
        for mod, name, new in patches:
            setattr(mod, name, new)
        yield
    finally:
        for mod, name, val in old:
            setattr(mod, name, val)


# ------------------------------------------------------------------ CUDA autocast rules on the CPU
_LOW = (torch.bfloat16, torch.float16)
_FP32_OPS = {torch.exp, torch.Tensor.exp, torch.log, torch.Tensor.log, torch.pow, torch.Tensor.pow,
             torch.rsqrt, torch.Tensor.rsqrt, F.softplus, F.softmax, F.log_softmax, torch.Tensor.softmax,
             torch.Tensor.log_softmax, F.layer_norm}


class CudaAutocastRules(TorchFunctionMode):
    """Inside a CPU autocast region, apply CUDA autocast's rules where they differ from the CPU's
    for the calls these models make; ``changed`` counts each rewritten call."""

    def __init__(self, fused_rms_norm: bool = True):
        super().__init__()
        self.changed = collections.Counter()
        self.fused_rms_norm = fused_rms_norm

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not torch.is_autocast_enabled("cpu"):
            return func(*args, **kwargs)
        if func is F.normalize and args[0].dtype in _LOW:          # its body, with CUDA's norm
            x = args[0]
            p = args[1] if len(args) > 1 else kwargs.get("p", 2.0)
            dim = args[2] if len(args) > 2 else kwargs.get("dim", 1)
            eps = args[3] if len(args) > 3 else kwargs.get("eps", 1e-12)
            self.changed["linalg_vector_norm: fp32 result (fp32_set_opt_dtype)"] += 1
            denom = torch.linalg.vector_norm(x, p, dim, True, dtype=torch.float32).clamp_min(eps).expand_as(x)
            return x / denom
        if func in (torch.Tensor.norm, torch.norm) and args and args[0].dtype in _LOW \
                and kwargs.get("dtype") is None:
            x = args[0]
            p = args[1] if len(args) > 1 else kwargs.get("p", 2)
            dim = args[2] if len(args) > 2 else kwargs.get("dim")
            keepdim = args[3] if len(args) > 3 else kwargs.get("keepdim", False)
            if isinstance(p, (int, float)) and dim is not None:
                self.changed["linalg_vector_norm: fp32 result (fp32_set_opt_dtype)"] += 1
                return torch.linalg.vector_norm(x, p, dim, keepdim, dtype=torch.float32)
        if func is torch.linalg.vector_norm and args and args[0].dtype in _LOW and kwargs.get("dtype") is None:
            self.changed["linalg_vector_norm: fp32 result (fp32_set_opt_dtype)"] += 1
            return func(*args, **{**kwargs, "dtype": torch.float32})
        if func is F.rms_norm and self.fused_rms_norm:
            x = args[0]
            w = args[2] if len(args) > 2 else kwargs.get("weight")
            eps = args[3] if len(args) > 3 else kwargs.get("eps")
            if x.dtype in _LOW:
                x = x.float()
            self.changed["rms_norm: CUDA's fused kernel (saves input and rstd)"] += 1
            return _FusedRMSNormFn.apply(x, w, 1e-5 if eps is None else eps)
        if func in _FP32_OPS and any(isinstance(a, torch.Tensor) and a.dtype in _LOW for a in args):
            self.changed[f"{getattr(func, '__name__', func)}: inputs cast to fp32"] += 1
            args = tuple(a.float() if isinstance(a, torch.Tensor) and a.dtype in _LOW else a for a in args)
        return func(*args, **kwargs)
