"""Mamba2 mixer (Dao & Gu 2024): in_proj -> causal conv on (x, B, C) -> SSD -> gated RMSNorm -> out_proj.

The same parameter layout as mamba_ssm's ``Mamba2`` (ngroups, headdim, d_state, conv with bias,
dt_bias, A_log, D, RMSNormGated with norm_before_gate=False), so the official kernels can run it.
On CUDA (fast path) the SSD is mamba_ssm's Triton chunk scan, the causal conv + SiLU fla's Triton
causal_conv1d and the gated RMSNorm mamba_ssm's fused Triton kernel (same math as the modules
used on CPU); each piece falls back to the plain-PyTorch module where its library is missing.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from elmanlab.layers.base import RecurrentLayer
from elmanlab.layers.common import (up, GatedRMSNorm, ShortConv, fast_short_conv, fused_linear, init_A_log,
                                    init_dt_bias)
from elmanlab.ops._dispatch import REFERENCE, fast_path_enabled, record
from elmanlab.ops.ssd import ssd


@dataclass
class Mamba2Options:
    expand: int = field(default=2, metadata={"help": "d_inner = expand * dim"})
    d_state: int = field(default=128, metadata={"help": "SSM state size N per head"})
    headdim: int = field(default=64, metadata={"help": "head dim P (n_heads = d_inner / headdim)"})
    ngroups: int = field(default=1, metadata={"help": "groups sharing B and C"})
    d_conv: int = field(default=4, metadata={"help": "causal conv kernel size"})
    chunk_size: int = field(default=256, metadata={"help": "SSD chunk length (speed only: the result does not "
                                                       "depend on it; mamba_ssm's Mamba2 default)"})
    init: str = field(default="default", metadata={
        "help": "default: out_proj rescaled with depth by the LM, conv bias zero; reference: mamba_ssm's Mamba2 "
                "module as ekg/elman used it (PyTorch's Linear init for out_proj, not rescaled; PyTorch's Conv1d "
                "bias init)", "choices": ("default", "reference")})


class Mamba2(RecurrentLayer):
    name = "mamba2"
    description = "Mamba2 mixer (SSD), expand 2, d_state 128, headdim 64"
    Options = Mamba2Options
    op = "ssd"
    dim_multiple = 32

    def __init__(self, dim: int, opts: Mamba2Options, layer_idx: int = 0, depth: int = 1):
        super().__init__()
        self.opts = opts
        di = opts.expand * dim
        self.di, self.H, self.P = di, di // opts.headdim, opts.headdim
        self.G, self.N = opts.ngroups, opts.d_state
        self.conv_dim = di + 2 * self.G * self.N
        self.in_proj = nn.Linear(dim, 2 * di + 2 * self.G * self.N + self.H, bias=False)
        self.conv = ShortConv(self.conv_dim, opts.d_conv, bias=True)
        self.dt_bias = nn.Parameter(init_dt_bias(self.H))
        self.A_log = nn.Parameter(init_A_log(self.H))
        self.D = nn.Parameter(torch.ones(self.H))
        self.norm = GatedRMSNorm(di)
        self.out_proj = nn.Linear(di, dim, bias=False)
        self.own_out_init = opts.init == "reference"    # the LM leaves out_proj as made here
        if self.own_out_init:                          # nn.Conv1d's bias init: U(-1/sqrt(K), 1/sqrt(K))
            bound = 1.0 / opts.d_conv ** 0.5
            with torch.no_grad():
                self.conv.bias.uniform_(-bound, bound)

    def forward(self, u, state=None):
        B, T, _ = u.shape
        conv_state, S0 = (None, None) if state is None else state
        z, xBC, dt = fused_linear(u, [self.in_proj.weight]).split([self.di, self.conv_dim, self.H], dim=-1)
        fast = fast_short_conv(xBC, [self.conv.weight], self.conv.bias, conv_state, "silu")
        if fast is None:
            record("short_conv", REFERENCE, False)
            xBC, conv_state = self.conv(xBC, conv_state)
            xBC = F.silu(xBC)
        else:
            xBC, conv_state = fast
        x, Bm, Cm = xBC.split([self.di, self.G * self.N, self.G * self.N], dim=-1)
        A = -torch.exp(up(self.A_log))
        # step size softplus(dt + dt_bias), applied inside the SSD (in mamba_ssm's kernel on CUDA)
        y, S = ssd(x.reshape(B, T, self.H, self.P), dt, A, Bm.reshape(B, T, self.G, self.N),
                   Cm.reshape(B, T, self.G, self.N), up(self.D), S0, self.opts.chunk_size,
                   dt_bias=up(self.dt_bias), dt_softplus=True)
        y = y.reshape(B, T, self.di)
        yn = None
        if fast_path_enabled(y):
            from elmanlab.ops.ssd.fast import gated_rmsnorm_fast
            yn = gated_rmsnorm_fast(y, z, self.norm.weight, self.norm.eps, gate_after=False)
        if yn is None:
            record("gated_rmsnorm", REFERENCE, False)
            yn = self.norm(y.to(u.dtype), z)
        y = yn
        return self.out_proj(y), (conv_state, S)

    @classmethod
    def resolve(cls, dim, opts):
        for name, lo in (("expand", 1), ("d_state", 1), ("headdim", 1), ("ngroups", 1), ("d_conv", 2),
                         ("chunk_size", 1)):
            cls.check_int(name, getattr(opts, name), lo)
        di = opts.expand * dim
        cls.check(di % opts.headdim == 0,
                  f"d_inner = expand * dim = {di} must be a multiple of headdim {opts.headdim}; pick dim accordingly")
        cls.check((di // opts.headdim) % opts.ngroups == 0,
                  f"n_heads {di // opts.headdim} must be a multiple of ngroups {opts.ngroups}")
        return super().resolve(dim, opts)

    @classmethod
    def helper_infos(cls, dim, opts):
        from elmanlab.ops.delta import short_conv_info
        from elmanlab.ops.ssd import gated_rmsnorm_info
        return {"short_conv": short_conv_info, "gated_rmsnorm": gated_rmsnorm_info}

    @classmethod
    def param_count(cls, dim, opts):
        di = opts.expand * dim
        H = di // opts.headdim
        GN = opts.ngroups * opts.d_state
        conv_dim = di + 2 * GN
        return (dim * (2 * di + 2 * GN + H) + ShortConv.param_count(conv_dim, opts.d_conv, True)
                + 3 * H + di + di * dim)

    @classmethod
    def state_size(cls, dim, opts):
        return opts.expand * dim * opts.d_state

    @classmethod
    def d_inner(cls, dim, opts):
        return opts.expand * dim

    @classmethod
    def n_heads(cls, dim, opts):
        return opts.expand * dim // opts.headdim

    @classmethod
    def conv_state_size(cls, dim, opts):
        return (opts.d_conv - 1) * (opts.expand * dim + 2 * opts.ngroups * opts.d_state)
