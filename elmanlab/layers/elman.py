"""The Elman family: E1 (gated), E33 (self-gated), E42 (linear, tied weights).

``init`` picks the initialisation. default: the projections keep PyTorch's Linear init, W_h is
orthogonal times ``w_h_scale`` (E42: the tied W orthogonal times 0.9 x its radius) and the LM
rescales out_proj to N(0, 0.02 / sqrt(2 depth)) (GPT-2 style). reference: ekg/elman's, as its
LadderLM builds these layers: xavier-uniform in_proj, W_x and out_proj (out_proj is not rescaled
with depth), W_h (E42: W) xavier-uniform with gain 0.1 (LadderLM's ``r_h_init_gain``), b zero.
The reference's LadderLM also turns its spectral normalisation on (``r_h_mode='spectral_norm'``),
which *sets* ||W_h|| to 0.99 in every forward: here ``spectral_norm: true, spectral_mode: fixed``
(docs/reference/ekg-elman-differences.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from elmanlab.layers.base import RecurrentLayer, d_inner_of
from elmanlab.layers.common import SpectralNormWeight, orthogonal_
from elmanlab.ops.elman import elman_scan


INITS = ("default", "reference")
SPECTRAL_MODES = ("bound", "fixed")
REFERENCE_W_H_GAIN = 0.1        # ekg/elman LadderLM's r_h_init_gain: xavier-uniform gain of W_h
FIXED_POWER_ITERS = 3           # ekg/elman's power-iteration steps per forward (spectral_mode fixed)
BOUND_POWER_ITERS = 8           # elmanlab's, for the bound (see SpectralNormWeight)

_INIT_HELP = ("default: PyTorch Linear init, W_h orthogonal x w_h_scale, out_proj rescaled with depth by "
              "the LM; reference: ekg/elman's, xavier-uniform projections (out_proj not rescaled) and W_h "
              f"xavier-uniform with gain {REFERENCE_W_H_GAIN}")
_MODE_HELP = ("with spectral_norm: bound keeps ||W_h|| <= 0.99 (8 power-iteration steps per training "
              "forward); fixed sets ||W_h|| = 0.99, W_h x 0.99 / sigma (3 steps; ekg/elman's)")


@dataclass
class ElmanOptions:
    expansion: float = field(default=1.0, metadata={"help": "d_inner = dim * expansion"})
    spectral_norm: bool = field(default=False, metadata={"help": "constrain ||W_h|| by power iteration "
                                                                 "(spectral_mode says how)"})
    w_h_scale: float = field(default=0.9, metadata={"help": "W_h initialised orthogonal times this scale (< 1; "
                                                            "init default)"})
    init: str = field(default="default", metadata={"help": _INIT_HELP, "choices": INITS})
    spectral_mode: str = field(default="bound", metadata={"help": _MODE_HELP, "choices": SPECTRAL_MODES})


@dataclass
class E42Options:
    expansion: float = field(default=1.0, metadata={"help": "d_inner = dim * expansion"})
    spectral_radius: float = field(default=0.99, metadata={"help": "spectral norm bound of the tied W"})
    init: str = field(default="default", metadata={
        "help": "default: PyTorch Linear init, W orthogonal x 0.9 x spectral_radius, out_proj rescaled with "
                "depth by the LM; reference: ekg/elman's, xavier-uniform projections (out_proj not "
                f"rescaled) and W xavier-uniform with gain {REFERENCE_W_H_GAIN}", "choices": INITS})
    spectral_mode: str = field(default="bound", metadata={
        "help": "bound keeps ||W|| <= spectral_radius (8 power-iteration steps per training forward); fixed "
                "sets ||W|| = spectral_radius (3 steps; ekg/elman's)", "choices": SPECTRAL_MODES})


def _xavier_(*weights) -> None:
    with torch.no_grad():
        for w in weights:
            nn.init.xavier_uniform_(w)


class _ElmanBase(RecurrentLayer):
    """E1 and E33: in_proj, the tanh recurrence (W_x, W_h, b) and out_proj; they differ in what
    gates the output (``forward``) and so in in_proj's width (``in_mult`` x d_inner)."""
    Options = ElmanOptions
    op = "elman"
    in_mult = 1

    def __init__(self, dim: int, opts: ElmanOptions, layer_idx: int = 0, depth: int = 1):
        super().__init__()
        self.opts = opts
        di = d_inner_of(dim, opts.expansion)
        self.in_proj = nn.Linear(dim, self.in_mult * di, bias=False)
        self._init_recurrence(di, opts)
        self.out_proj = nn.Linear(di, dim, bias=False)
        self._reference_projections()

    @classmethod
    def param_count(cls, dim, opts):
        di = d_inner_of(dim, opts.expansion)
        return (cls.in_mult + 1) * dim * di + 2 * di * di + di

    @classmethod
    def resolve(cls, dim, opts):
        cls.check_number("expansion", opts.expansion)
        cls.check_number("w_h_scale", opts.w_h_scale, 0.0, 1.0)
        return super().resolve(dim, opts)

    @classmethod
    def inactive_options(cls, values: dict) -> set[str]:
        off = set()
        if not values.get("spectral_norm", False):
            off.add("spectral_mode")
        if values.get("init", "default") == "reference":
            off.add("w_h_scale")
        return off

    @classmethod
    def op_shapes(cls, dim, opts):
        return {"d_inner": d_inner_of(dim, opts.expansion), "nonlinearity": "tanh"}

    @classmethod
    def state_size(cls, dim, opts):
        return d_inner_of(dim, opts.expansion)

    def _init_recurrence(self, di: int, opts: ElmanOptions):
        ref = opts.init == "reference"
        self.own_out_init = ref                 # the LM leaves out_proj as the layer made it
        self.W_x = nn.Linear(di, di, bias=False)
        if opts.spectral_norm:
            fixed = opts.spectral_mode == "fixed"
            self.W_h_param = SpectralNormWeight(
                di, radius=0.99, init_scale=REFERENCE_W_H_GAIN if ref else opts.w_h_scale,
                power_iters=FIXED_POWER_ITERS if fixed else BOUND_POWER_ITERS, mode=opts.spectral_mode,
                init="xavier" if ref else "orthogonal")
        elif ref:
            w = torch.empty(di, di)
            nn.init.xavier_uniform_(w, gain=REFERENCE_W_H_GAIN)
            self.W_h = nn.Parameter(w)
        else:
            self.W_h = nn.Parameter(orthogonal_(torch.empty(di, di), opts.w_h_scale))
        self.b = nn.Parameter(torch.zeros(di))

    def _reference_projections(self):
        """init reference: xavier-uniform in_proj, W_x and out_proj (after the default ones were made)."""
        if self.opts.init == "reference":
            _xavier_(self.in_proj.weight, self.W_x.weight, self.out_proj.weight)

    def _W_h(self):
        return self.W_h_param() if self.opts.spectral_norm else self.W_h

    def recurrence_matrix(self):
        return self.W_h_param.weight if self.opts.spectral_norm else self.W_h

    def _recur(self, x, state):
        h0 = None if state is None else state[0]
        h, hT = elman_scan(self.W_x(x), self._W_h(), self.b, h0, "tanh")
        return h, (hT,)


class E1(_ElmanBase):
    name = "e1"
    description = "gated Elman: h = tanh(W_x silu(x) + W_h h + b), y = h * silu(z)"
    in_mult = 2                                 # x and the gate z

    def forward(self, u, state=None):
        x, z = self.in_proj(u).chunk(2, dim=-1)
        h, new_state = self._recur(F.silu(x), state)
        return self.out_proj(h * F.silu(z)), new_state


class E33(_ElmanBase):
    name = "e33"
    description = "self-gated Elman: h = tanh(W_x silu(x) + W_h h + b), y = h * silu(h)"

    def forward(self, u, state=None):
        h, new_state = self._recur(F.silu(self.in_proj(u)), state)
        return self.out_proj(h * F.silu(h)), new_state


class E42(RecurrentLayer):
    name = "e42"
    description = "linear tied Elman: h = W (silu(x) + h) + b with ||W|| bounded, y = h * silu(h)"
    Options = E42Options
    op = "elman"

    def __init__(self, dim: int, opts: E42Options, layer_idx: int = 0, depth: int = 1):
        super().__init__()
        self.opts = opts
        di = d_inner_of(dim, opts.expansion)
        ref = opts.init == "reference"
        self.own_out_init = ref                 # the LM leaves out_proj as the layer made it
        self.in_proj = nn.Linear(dim, di, bias=False)
        fixed = opts.spectral_mode == "fixed"
        self.W = SpectralNormWeight(di, radius=opts.spectral_radius,
                                    init_scale=REFERENCE_W_H_GAIN if ref else opts.spectral_radius * 0.9,
                                    power_iters=FIXED_POWER_ITERS if fixed else BOUND_POWER_ITERS,
                                    mode=opts.spectral_mode, init="xavier" if ref else "orthogonal")
        self.b = nn.Parameter(torch.zeros(di))
        self.out_proj = nn.Linear(di, dim, bias=False)
        if ref:
            _xavier_(self.in_proj.weight, self.out_proj.weight)

    def recurrence_matrix(self):
        return self.W.weight

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
