"""minGRU and minLSTM (Feng et al. 2024, "Were RNNs all we needed?"), log-space form.

minGRU:  h_t = (1 - z_t) h_{t-1} + z_t g(h~_t),       [h~, z] = linear(u), z = sigmoid
minLSTM: h_t = f'_t h_{t-1} + i'_t g(h~_t),            f' = f / (f + i), i' = i / (f + i)
g(x) = x + 0.5 (x >= 0) or sigmoid(x): the positive activation of the paper's log-space version.
Both are diagonal linear recurrences, computed by a parallel scan (never a loop over time):
``ops.scan.minrnn_scan`` takes the raw projection, so on CUDA the gates are computed inside the
Triton scan and only the projection is kept for the backward (memory-lean).
An output projection d_inner -> dim exists only when expansion != 1.
``init: reference`` initialises the projections as ekg/elman's MinGRULM / MinLSTMLM do:
xavier-uniform, the output projection not rescaled with depth.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from elmanlab.layers.base import RecurrentLayer, d_inner_of
from elmanlab.ops.scan import minrnn_scan


@dataclass
class MinRNNOptions:
    expansion: float = field(default=1.0, metadata={"help": "d_inner = dim * expansion (out projection when != 1)"})
    init: str = field(default="default", metadata={
        "help": "default: PyTorch's Linear init, out_proj rescaled with depth by the LM; reference: "
                "ekg/elman's, xavier-uniform projections (out_proj not rescaled)", "choices": ("default", "reference")})


class _MinRNN(RecurrentLayer):
    Options = MinRNNOptions
    op = "scan"
    n_proj = 2

    def __init__(self, dim: int, opts: MinRNNOptions, layer_idx: int = 0, depth: int = 1):
        super().__init__()
        self.opts = opts
        di = d_inner_of(dim, opts.expansion)
        self.di = di
        self.proj = nn.Linear(dim, self.n_proj * di, bias=False)
        self.out_proj = nn.Linear(di, dim, bias=False) if di != dim else None
        self.own_out_init = opts.init == "reference"    # the LM leaves out_proj as made here
        if self.own_out_init:
            with torch.no_grad():
                for lin in (self.proj, self.out_proj):
                    if lin is not None:
                        nn.init.xavier_uniform_(lin.weight)

    def forward(self, u, state=None):
        h0 = None if state is None else state[0]
        h, hT = minrnn_scan(self.proj(u), self.name, h0)
        h = h.to(u.dtype)
        return (h if self.out_proj is None else self.out_proj(h)), (hT,)

    @classmethod
    def resolve(cls, dim, opts):
        cls.check_number("expansion", opts.expansion)
        return super().resolve(dim, opts)

    @classmethod
    def param_count(cls, dim, opts):
        di = d_inner_of(dim, opts.expansion)
        return cls.n_proj * dim * di + (di * dim if di != dim else 0)

    @classmethod
    def state_size(cls, dim, opts):
        return d_inner_of(dim, opts.expansion)


class MinGRU(_MinRNN):
    name = "mingru"
    description = "minGRU: h = (1 - z) h + z g(h~), parallel scan"
    n_proj = 2


class MinLSTM(_MinRNN):
    name = "minlstm"
    description = "minLSTM: h = f' h + i' g(h~) with normalised gates, parallel scan"
    n_proj = 3
