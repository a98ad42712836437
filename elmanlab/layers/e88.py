"""E88: multi-head nonlinear matrix-state recurrence with the delta rule.

q, k, v = proj(u) (one fused linear, dim -> H (2n + m)), optional SiLU and short causal conv;
k, q L2-normalised per head; per-head decay a_t; per head S = tanh(a S + (v - S k) k^T), o = S q;
optional output gate o * silu(g) or o * sigmoid(g), g = g_proj(u); out_proj: H m -> dim.
n = n_state (key dim), m = round(n * expansion) (value dim).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from elmanlab.layers.base import RecurrentLayer
from elmanlab.layers.common import up, ShortConv, init_A_log, init_dt_bias
from elmanlab.ops.e88 import e88_scan

SUPPORTED_N_STATE = tuple(range(8, 65, 8))
DECAY_MODES = ("mamba2", "sigmoid", "fixed")


@dataclass
class E88Options:
    n_heads: int | None = field(default=None, metadata={"help": "heads H (default: round(balance * dim / n_state))"})
    n_state: int = field(default=32, metadata={"help": f"key dim n per head, one of {SUPPORTED_N_STATE}"})
    balance: float = field(default=1.0, metadata={"help": "target H * n_state / dim when n_heads is not given"})
    expansion: float = field(default=1.0, metadata={"help": "value dim per head = n_state * expansion"})
    linear_state: bool = field(default=False, metadata={"help": "linear state update instead of tanh"})
    use_gate: bool = field(default=False, metadata={"help": "output gate o * act(g_proj(u))"})
    gate_activation: str = field(default="silu", metadata={"help": "gate activation", "choices": ("silu", "sigmoid")})
    use_conv: bool = field(default=False, metadata={"help": "short causal depthwise conv on q, k, v"})
    conv_size: int = field(default=4, metadata={"help": "short conv kernel size"})
    use_silu: bool = field(default=False, metadata={"help": "SiLU on q, k, v after the projection (and conv)"})
    qk_autocast: bool = field(default=False, metadata={
        "help": "give the scan q and k in the projections' dtype (bf16 under autocast, so its bf16 kernel runs); "
                "off: the normalised q, k stay fp32 (autocast takes norms in fp32) and the scan runs in fp32"})
    decay: str = field(default="mamba2", metadata={
        "help": "decay a_t: mamba2 = exp(-exp(A_log) softplus(a_proj u + dt_bias)); "
                "sigmoid = sigmoid(a_proj u + b); fixed = sigmoid(per-head parameter)",
        "choices": DECAY_MODES})


_MANTISSA_BITS = {torch.bfloat16: 8, torch.float16: 11, torch.float32: 24, torch.float64: 53}


class _L2Normalize(torch.autograd.Function):
    """``F.normalize(x, dim=-1, eps)`` with the same output and the same gradient (bit for bit), whose
    backward keeps x only when it cannot rebuild it exactly.

    Under CUDA bf16 autocast the norm is taken in fp32 (``linalg_vector_norm`` is autocast's
    ``fp32_set_opt_dtype``), so q and k come out in fp32 from bf16 projections. Plain autograd then
    keeps the bf16 input, a view that pins the whole qkv projection output (q, k and v) until the
    backward: 2 x H (2n + m) bytes per token per layer (2.1 GB for E88 500M n48 at B16 x T512;
    ``benchmarks/memory_breakdown.py``). Here the forward keeps the fp32 output (which the scan keeps
    anyway) and the [..., 1] denominator. The backward rebuilds x = y * denom rounded to x's dtype,
    exact whenever the output has at least 10 more mantissa bits than x (fp32 against bf16 or fp16:
    the rebuilt value is within 2 fp32 ulps of x, far inside half a bf16 ulp), then runs
    ``F.normalize`` again on it under the forward's autocast state and returns that gradient: the
    same operations on the same values as plain autograd. Without that precision gap (fp32 or fp64
    throughout) x itself is kept, and the backward recomputes from it.
    """

    @staticmethod
    def forward(ctx, x, eps):
        denom = x.norm(2, -1, keepdim=True).clamp_min(eps)          # F.normalize's own operations
        y = x / denom.expand_as(x)
        dev = x.device.type
        ctx.eps, ctx.x_dtype, ctx.dev = eps, x.dtype, dev
        ctx.autocast = (torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev))
        ctx.rebuild = _MANTISSA_BITS.get(y.dtype, 0) >= _MANTISSA_BITS.get(x.dtype, 99) + 10
        ctx.save_for_backward(*((y, denom) if ctx.rebuild else (x,)))
        return y

    @staticmethod
    def backward(ctx, dy):
        if ctx.rebuild:
            y, denom = ctx.saved_tensors
            x = (y * denom).to(ctx.x_dtype)
        else:
            (x,) = ctx.saved_tensors
        on, dtype = ctx.autocast
        with torch.enable_grad(), torch.autocast(ctx.dev, dtype=dtype, enabled=on, cache_enabled=False):
            xr = x.detach().requires_grad_()
            out = F.normalize(xr, dim=-1, eps=ctx.eps)
        (dx,) = torch.autograd.grad(out, xr, dy)
        return dx, None


def l2_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``F.normalize(x, dim=-1, eps=eps)``; when a gradient is needed, through :class:`_L2Normalize`."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _L2Normalize.apply(x, eps)
    return F.normalize(x, dim=-1, eps=eps)


def _value_dim(opts: E88Options) -> int:
    return max(1, int(round(opts.n_state * opts.expansion)))


class E88(RecurrentLayer):
    name = "e88"
    description = "multi-head matrix state: S = tanh(a S + (v - S k) k^T), o = S q"
    Options = E88Options
    op = "e88"

    def __init__(self, dim: int, opts: E88Options, layer_idx: int = 0, depth: int = 1):
        super().__init__()
        self.opts = opts
        H, n, m = opts.n_heads, opts.n_state, _value_dim(opts)
        self.H, self.n, self.m = H, n, m
        self.qkv = nn.Linear(dim, H * (2 * n + m), bias=False)
        self.conv = ShortConv(H * (2 * n + m), opts.conv_size, bias=False) if opts.use_conv else None
        if opts.decay == "mamba2":
            self.a_proj = nn.Linear(dim, H, bias=False)
            self.A_log = nn.Parameter(init_A_log(H))
            self.dt_bias = nn.Parameter(init_dt_bias(H))
        elif opts.decay == "sigmoid":
            self.a_proj = nn.Linear(dim, H, bias=True)
            nn.init.constant_(self.a_proj.bias, 3.0)           # a ~ 0.95 at start
        else:
            self.a_logit = nn.Parameter(torch.linspace(2.0, 5.0, H))
        self.g_proj = nn.Linear(dim, H * m, bias=False) if opts.use_gate else None
        self.out_proj = nn.Linear(H * m, dim, bias=False)

    def decay(self, u: torch.Tensor) -> torch.Tensor:
        o = self.opts
        if o.decay == "mamba2":
            return torch.exp(-torch.exp(up(self.A_log)) * F.softplus(up(self.a_proj(u)) + up(self.dt_bias)))
        if o.decay == "sigmoid":
            return torch.sigmoid(up(self.a_proj(u)))
        B, T = u.shape[:2]
        return torch.sigmoid(up(self.a_logit)).expand(B, T, self.H)

    def forward(self, u, state=None):
        B, T, _ = u.shape
        conv_state, S0 = (None, None) if state is None else state
        qkv = self.qkv(u)
        if self.conv is not None:
            qkv, conv_state = self.conv(qkv, conv_state)
        if self.opts.use_silu:
            qkv = F.silu(qkv)
        H, n, m = self.H, self.n, self.m
        q, k, v = qkv.split([H * n, H * n, H * m], dim=-1)
        q = l2_normalize(q.reshape(B, T, H, n))      # keeps no bf16 q/k (see _L2Normalize)
        k = l2_normalize(k.reshape(B, T, H, n))
        v = v.reshape(B, T, H, m)
        if self.opts.qk_autocast:
            q, k = q.to(v.dtype), k.to(v.dtype)
        g = None if self.g_proj is None else self.g_proj(u).reshape(B, T, H, m)
        y, S = e88_scan(q, k, v, self.decay(u), S0, "linear" if self.opts.linear_state else "tanh",
                        g, self.opts.gate_activation)
        return self.out_proj(y.reshape(B, T, H * m).to(u.dtype)), (conv_state, S)

    @classmethod
    def inactive_options(cls, values: dict) -> set[str]:
        return set() if values.get("use_gate") else {"gate_activation"}

    @classmethod
    def resolve(cls, dim, opts):
        cls.check(opts.n_state in SUPPORTED_N_STATE,
                  f"n_state {opts.n_state} is not supported; use one of {', '.join(map(str, SUPPORTED_N_STATE))}")
        cls.check(opts.gate_activation in ("silu", "sigmoid"),
                  f"gate_activation must be silu or sigmoid, got {opts.gate_activation!r}")
        cls.check(opts.decay in DECAY_MODES, f"decay must be one of {', '.join(DECAY_MODES)}, got {opts.decay!r}")
        cls.check_number("expansion", opts.expansion)
        cls.check_int("conv_size", opts.conv_size, 2)
        cls.check_number("balance", opts.balance)
        if opts.n_heads is not None:
            cls.check_int("n_heads", opts.n_heads, 1)
        out = super().resolve(dim, opts)
        if out.n_heads is None:
            out.n_heads = max(1, int(round(opts.balance * dim / opts.n_state)))
        return out

    @classmethod
    def op_shapes(cls, dim, opts):
        return {"n_state": opts.n_state, "head_v_dim": _value_dim(opts)}

    @classmethod
    def param_count(cls, dim, opts):
        H, n, m = opts.n_heads, opts.n_state, _value_dim(opts)
        c = H * (2 * n + m)
        p = dim * c + H * m * dim
        if opts.use_conv:
            p += ShortConv.param_count(c, opts.conv_size, bias=False)
        p += {"mamba2": dim * H + 2 * H, "sigmoid": dim * H + H, "fixed": H}[opts.decay]
        if opts.use_gate:
            p += dim * H * m
        return p

    @classmethod
    def d_inner(cls, dim, opts):
        return opts.n_heads * _value_dim(opts)

    @classmethod
    def state_size(cls, dim, opts):
        return opts.n_heads * opts.n_state * _value_dim(opts)

    @classmethod
    def conv_state_size(cls, dim, opts):
        return (opts.conv_size - 1) * opts.n_heads * (2 * opts.n_state + _value_dim(opts)) if opts.use_conv else 0
