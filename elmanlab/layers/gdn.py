"""Gated DeltaNet (Yang, Kautz & Hatamizadeh 2024) with flash-linear-attention's layer layout.

q, k, v = silu(short_conv(proj(u))); q, k L2-normalised per head; beta = sigmoid(b_proj u);
g = -exp(A_log) softplus(a_proj u + dt_bias); gated delta rule; per-head gated RMSNorm with
g_proj(u) (or plain RMSNorm without the gate); o_proj. Defaults follow fla's ``GatedDeltaNet``
(head_dim 256, expand_v 2, gate and short conv on), with n_heads = round(0.75 dim / head_dim) when
not given (fla's 6 heads of 256 at hidden 2048).
On CUDA (fast path) the recurrence is fla's chunk kernel, the short convs + SiLU fla's Triton
causal_conv1d and the gated RMSNorm fla's fused kernel (same math as the CPU modules).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn as nn
import torch.nn.functional as F

from elmanlab.layers.base import RecurrentLayer
from elmanlab.layers.common import GatedRMSNorm, ShortConv, fast_short_conv, fused_linear, init_A_log, init_dt_bias
from elmanlab.ops._dispatch import REFERENCE, fast_path_enabled, record
from elmanlab.ops.delta import gdn


@dataclass
class GDNOptions:
    n_heads: int | None = field(default=None, metadata={"help": "heads (default round(0.75 dim / head_dim), at least 1)"})
    head_dim: int = field(default=256, metadata={"help": "key dim per head"})
    expand_v: float = field(default=2.0, metadata={"help": "value dim per head = head_dim * expand_v"})
    use_gate: bool = field(default=True, metadata={"help": "output gate through the gated RMSNorm"})
    use_short_conv: bool = field(default=True, metadata={"help": "short causal conv on q, k, v"})
    conv_size: int = field(default=4, metadata={"help": "short conv kernel size"})


class GDN(RecurrentLayer):
    name = "gdn"
    description = "Gated DeltaNet (fla layout): S = a S (I - b k k^T) + b v k^T"
    Options = GDNOptions
    op = "delta"

    def __init__(self, dim: int, opts: GDNOptions, layer_idx: int = 0, depth: int = 1):
        super().__init__()
        self.opts = opts
        H, dk = opts.n_heads, opts.head_dim
        dv = int(dk * opts.expand_v)
        self.H, self.dk, self.dv = H, dk, dv
        K, V = H * dk, H * dv
        self.q_proj = nn.Linear(dim, K, bias=False)
        self.k_proj = nn.Linear(dim, K, bias=False)
        self.v_proj = nn.Linear(dim, V, bias=False)
        self.a_proj = nn.Linear(dim, H, bias=False)
        self.b_proj = nn.Linear(dim, H, bias=False)
        self.A_log = nn.Parameter(init_A_log(H, 0.0 + 1e-4, 16.0))
        self.dt_bias = nn.Parameter(init_dt_bias(H))
        if opts.use_short_conv:
            self.q_conv = ShortConv(K, opts.conv_size)
            self.k_conv = ShortConv(K, opts.conv_size)
            self.v_conv = ShortConv(V, opts.conv_size)
        self.g_proj = nn.Linear(dim, V, bias=False) if opts.use_gate else None
        self.o_norm = GatedRMSNorm(dv)
        self.o_proj = nn.Linear(V, dim, bias=False)

    def forward(self, u, state=None):
        B, T, _ = u.shape
        H, dk, dv = self.H, self.dk, self.dv
        K, V = H * dk, H * dv
        cq, ck, cv, S0 = (None, None, None, None) if state is None else state
        fast = fast_path_enabled(u)
        # the six input projections as one GEMM (q, k, v first: on CUDA their convs then run as one)
        ws = [self.q_proj.weight, self.k_proj.weight, self.v_proj.weight, self.a_proj.weight, self.b_proj.weight]
        if self.g_proj is not None:
            ws.append(self.g_proj.weight)
        proj = fused_linear(u, ws)
        qkv, a, b, gate = proj.split([2 * K + V, H, H, V if self.g_proj is not None else 0], dim=-1)
        q, k, v = qkv.split([K, K, V], dim=-1)
        fq = None
        if self.opts.use_short_conv:                                # on CUDA: fla's conv + SiLU, one call
            fq = fast_short_conv(qkv, [self.q_conv.weight, self.k_conv.weight, self.v_conv.weight], None,
                                 cq, "silu")
        if fq is not None:
            q, k, v = fq[0].split([K, K, V], dim=-1)
            cq, ck, cv = fq[1].split([K, K, V], dim=-1)
        else:
            if self.opts.use_short_conv:
                record("short_conv", REFERENCE, False)
                q, cq = self.q_conv(q, cq)
                k, ck = self.k_conv(k, ck)
                v, cv = self.v_conv(v, cv)
            q, k, v = F.silu(q), F.silu(k), F.silu(v)
        o, S = gdn(q.reshape(B, T, H, dk), k.reshape(B, T, H, dk), v.reshape(B, T, H, dv), a, b,
                   self.A_log, self.dt_bias, dk ** -0.5, S0)
        if self.g_proj is None:
            o = self.o_norm(o)
        else:
            gate = gate.reshape(B, T, H, dv)
            on = None
            if fast:
                from elmanlab.ops.delta.fast import rms_norm_gated_fast
                on = rms_norm_gated_fast(o.reshape(-1, dv), gate.reshape(-1, dv), self.o_norm.weight,
                                         self.o_norm.eps)
            if on is None:
                record("gated_rmsnorm", REFERENCE, False)
                o = self.o_norm(o.to(gate.dtype), gate, gate_after=True)
            else:
                o = on.reshape(B, T, H, dv)
        return self.o_proj(o.reshape(B, T, V)), (cq, ck, cv, S)

    @classmethod
    def resolve(cls, dim, opts):
        cls.check_int("head_dim", opts.head_dim, 1)
        cls.check_number("expand_v", opts.expand_v)
        cls.check(float(opts.head_dim * opts.expand_v).is_integer(),
                  f"head_dim * expand_v must be a positive integer, got {opts.head_dim} * {opts.expand_v}")
        cls.check_int("conv_size", opts.conv_size, 2)
        if opts.n_heads is not None:
            cls.check_int("n_heads", opts.n_heads, 1)
        out = super().resolve(dim, opts)
        if out.n_heads is None:
            out.n_heads = max(1, int(round(0.75 * dim / opts.head_dim)))
        return out

    @classmethod
    def helper_infos(cls, dim, opts):
        from elmanlab.ops.delta import rms_norm_gated_info, short_conv_info
        helpers = {"short_conv": short_conv_info} if opts.use_short_conv else {}
        if opts.use_gate:
            helpers["gated_rmsnorm"] = rms_norm_gated_info
        return helpers

    @classmethod
    def param_count(cls, dim, opts):
        H, dk = opts.n_heads, opts.head_dim
        dv = int(dk * opts.expand_v)
        K, V = H * dk, H * dv
        p = 2 * dim * K + dim * V + 2 * dim * H + 2 * H + dv + V * dim
        if opts.use_short_conv:
            p += (2 * K + V) * opts.conv_size
        if opts.use_gate:
            p += dim * V
        return p

    @classmethod
    def d_inner(cls, dim, opts):
        return opts.n_heads * int(opts.head_dim * opts.expand_v)

    @classmethod
    def state_size(cls, dim, opts):
        return opts.n_heads * opts.head_dim * int(opts.head_dim * opts.expand_v)

    @classmethod
    def conv_state_size(cls, dim, opts):
        if not opts.use_short_conv:
            return 0
        H, dk = opts.n_heads, opts.head_dim
        return (opts.conv_size - 1) * (2 * H * dk + H * int(dk * opts.expand_v))
