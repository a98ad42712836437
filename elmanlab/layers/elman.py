"""The Elman family: E1 (gated), E33 (self-gated), E42 (linear, tied weights)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from elmanlab.layers.base import RecurrentLayer, d_inner_of
from elmanlab.layers.common import SpectralNormWeight, orthogonal_
from elmanlab.ops.elman import elman_scan


@dataclass
class ElmanOptions:
    expansion: float = field(default=1.0, metadata={"help": "d_inner = dim * expansion"})
    spectral_norm: bool = field(default=False, metadata={"help": "keep ||W_h|| <= 0.99 by power iteration"})
    w_h_scale: float = field(default=0.9, metadata={"help": "W_h initialised orthogonal times this scale (< 1)"})


@dataclass
class E42Options:
    expansion: float = field(default=1.0, metadata={"help": "d_inner = dim * expansion"})
    spectral_radius: float = field(default=0.99, metadata={"help": "spectral norm bound of the tied W"})


class _ElmanBase(RecurrentLayer):
    Options = ElmanOptions
    op = "elman"

    @classmethod
    def resolve(cls, dim, opts):
        cls.check_number("expansion", opts.expansion)
        cls.check_number("w_h_scale", opts.w_h_scale, 0.0, 1.0)
        return super().resolve(dim, opts)

    @classmethod
    def op_shapes(cls, dim, opts):
        return {"d_inner": d_inner_of(dim, opts.expansion), "nonlinearity": "tanh"}

    @classmethod
    def state_size(cls, dim, opts):
        return d_inner_of(dim, opts.expansion)

    def _init_recurrence(self, di: int, opts: ElmanOptions):
        self.W_x = nn.Linear(di, di, bias=False)
        if opts.spectral_norm:
            self.W_h_param = SpectralNormWeight(di, radius=0.99, init_scale=opts.w_h_scale)
        else:
            self.W_h = nn.Parameter(orthogonal_(torch.empty(di, di), opts.w_h_scale))
        self.b = nn.Parameter(torch.zeros(di))

    def _W_h(self):
        return self.W_h_param() if self.opts.spectral_norm else self.W_h

    def _recur(self, x, state):
        h0 = None if state is None else state[0]
        h, hT = elman_scan(self.W_x(x), self._W_h(), self.b, h0, "tanh")
        return h, (hT,)


class E1(_ElmanBase):
    name = "e1"
    description = "gated Elman: h = tanh(W_x silu(x) + W_h h + b), y = h * silu(z)"

    def __init__(self, dim: int, opts: ElmanOptions, layer_idx: int = 0, depth: int = 1):
        super().__init__()
        self.opts = opts
        di = d_inner_of(dim, opts.expansion)
        self.in_proj = nn.Linear(dim, 2 * di, bias=False)
        self._init_recurrence(di, opts)
        self.out_proj = nn.Linear(di, dim, bias=False)

    def forward(self, u, state=None):
        x, z = self.in_proj(u).chunk(2, dim=-1)
        h, new_state = self._recur(F.silu(x), state)
        return self.out_proj(h * F.silu(z)), new_state

    @classmethod
    def param_count(cls, dim, opts):
        di = d_inner_of(dim, opts.expansion)
        return 3 * dim * di + 2 * di * di + di


class E33(_ElmanBase):
    name = "e33"
    description = "self-gated Elman: h = tanh(W_x silu(x) + W_h h + b), y = h * silu(h)"

    def __init__(self, dim: int, opts: ElmanOptions, layer_idx: int = 0, depth: int = 1):
        super().__init__()
        self.opts = opts
        di = d_inner_of(dim, opts.expansion)
        self.in_proj = nn.Linear(dim, di, bias=False)
        self._init_recurrence(di, opts)
        self.out_proj = nn.Linear(di, dim, bias=False)

    def forward(self, u, state=None):
        h, new_state = self._recur(F.silu(self.in_proj(u)), state)
        return self.out_proj(h * F.silu(h)), new_state

    @classmethod
    def param_count(cls, dim, opts):
        di = d_inner_of(dim, opts.expansion)
        return 2 * dim * di + 2 * di * di + di


class E42(RecurrentLayer):
    name = "e42"
    description = "linear tied Elman: h = W (silu(x) + h) + b with ||W|| bounded, y = h * silu(h)"
    Options = E42Options
    op = "elman"

    def __init__(self, dim: int, opts: E42Options, layer_idx: int = 0, depth: int = 1):
        super().__init__()
        self.opts = opts
        di = d_inner_of(dim, opts.expansion)
        self.in_proj = nn.Linear(dim, di, bias=False)
        self.W = SpectralNormWeight(di, radius=opts.spectral_radius, init_scale=opts.spectral_radius * 0.9)
        self.b = nn.Parameter(torch.zeros(di))
        self.out_proj = nn.Linear(di, dim, bias=False)

    def forward(self, u, state=None):
        x = F.silu(self.in_proj(u))
        W = self.W()
        h0 = None if state is None else state[0]
        h, hT = elman_scan(F.linear(x, W), W, self.b, h0, "linear")
        return self.out_proj(h * F.silu(h)), (hT,)

    @classmethod
    def resolve(cls, dim, opts):
        cls.check_number("expansion", opts.expansion)
        cls.check_number("spectral_radius", opts.spectral_radius, 0.0, 1.0)
        return super().resolve(dim, opts)

    @classmethod
    def op_shapes(cls, dim, opts):
        return {"d_inner": d_inner_of(dim, opts.expansion), "nonlinearity": "linear"}

    @classmethod
    def param_count(cls, dim, opts):
        di = d_inner_of(dim, opts.expansion)
        return 2 * dim * di + di * di + di

    @classmethod
    def state_size(cls, dim, opts):
        return d_inner_of(dim, opts.expansion)
