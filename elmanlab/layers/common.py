"""Pieces shared by several layers: fused projections, short causal convolution (and its fast path),
gated RMSNorm, spectral norm."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from elmanlab.ops._dispatch import fast_path_enabled, up


def fused_linear(x: torch.Tensor, weights, align: int | None = None) -> torch.Tensor:
    """``torch.cat([F.linear(x, w) for w in weights], -1)`` as one GEMM whose output width is padded to
    a multiple of 8 on CUDA (no bias).

    One product instead of several saves launches; the padding matters more: cuBLAS runs a GEMM
    whose output width (in the backward, reduction width) is not a multiple of 8 bf16 elements on
    slow unaligned kernels. Mamba2's in_proj at 400M (width 7222) took 3.5x the time of the aligned
    product on an H200. Zero rows are appended to the concatenated weight and the extra outputs
    sliced off, so the result and every gradient are those of the separate products. ``align``:
    the multiple (default 8 on CUDA, 1 elsewhere).
    """
    weights = list(weights)
    n = sum(w.shape[0] for w in weights)
    pad = (-n) % (align or (8 if x.is_cuda else 1))
    if pad:
        weights.append(weights[0].new_zeros(pad, weights[0].shape[1]))
    w = weights[0] if len(weights) == 1 else torch.cat(weights)
    y = F.linear(x, w)
    return y[..., :n] if pad else y


class ShortConv(nn.Module):
    """Depthwise causal conv over time on [B, T, C], carrying the last (K-1) inputs as state.

    ``forward(x, state)`` with state [B, K-1, C] (zeros when None) returns (y [B, T, C], new_state),
    so that running a sequence in pieces equals running it whole.
    """

    def __init__(self, channels: int, kernel_size: int = 4, bias: bool = False):
        super().__init__()
        self.channels, self.kernel_size = channels, kernel_size
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel_size))
        self.bias = nn.Parameter(torch.zeros(channels)) if bias else None
        bound = 1.0 / math.sqrt(kernel_size)
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None):
        B, T, C = x.shape
        K = self.kernel_size
        if state is None:
            state = x.new_zeros(B, K - 1, C)
        xs = torch.cat([state.to(x.dtype), x], dim=1)                  # [B, K-1+T, C]
        y = F.conv1d(xs.transpose(1, 2), self.weight.to(x.dtype),
                     None if self.bias is None else self.bias.to(x.dtype), groups=C)
        return y.transpose(1, 2), xs[:, xs.shape[1] - (K - 1):]

    @staticmethod
    def param_count(channels: int, kernel_size: int, bias: bool) -> int:
        return channels * kernel_size + (channels if bias else 0)


def conv_state_of(x: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """The last (K-1) inputs of x [B, T, C] (zeros before the start): ShortConv's new state."""
    K1 = kernel_size - 1
    T = x.shape[1]
    return x[:, T - K1:] if T >= K1 else F.pad(x, (0, 0, K1 - T, 0))


def fast_short_conv(x: torch.Tensor, weights: list, bias, state, activation: str | None):
    """(y, new_state) through fla's Triton conv on CUDA when there is no carried state, else None.
    ``weights``: ShortConv weights [C_i, 1, K] of consecutive channel blocks of x, run as one conv."""
    if state is not None or not fast_path_enabled(x):
        return None
    from elmanlab.ops.delta.fast import short_conv_fast
    y = short_conv_fast(x, weights[0] if len(weights) == 1 else torch.cat(weights), bias, activation)
    return None if y is None else (y, conv_state_of(x, weights[0].shape[-1]))


class GatedRMSNorm(nn.Module):
    """RMSNorm over the last dim, optionally of ``x * silu(z)`` (Mamba2 / fla style)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None, gate_after: bool = False):
        if z is not None and not gate_after:
            x = x * F.silu(z)
        xf = up(x)
        y = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight.to(x.dtype)
        if z is not None and gate_after:
            y = y * F.silu(z)
        return y


def power_iterate(W: torch.Tensor, u: torch.Tensor, steps: int) -> torch.Tensor:
    """``steps`` steps of power iteration on W W^T from ``u``: the left singular vector of W's largest
    singular value as they converge to it (sigma ~ ||W^T u||)."""
    for _ in range(steps):
        u = F.normalize(W @ (W.t() @ u), dim=0)
    return u


class SpectralNormWeight(nn.Module):
    """A square weight whose spectral norm is kept <= ``radius`` (``mode="bound"``) or set to
    ``radius`` (``mode="fixed"``).

    bound: W_eff = W / max(1, sigma(W) / radius); fixed: W_eff = W * radius / sigma(W) (ekg/elman's
    E1/E33/E42 cells, which rescale W_h to spectral norm 0.99 in every forward, up or down). sigma is
    estimated by power iteration on W^T W, warm-started from the previous forward's vector:
    ``power_iters`` steps per training forward, none in eval mode (so eval is deterministic). One
    step per forward (the usual spectral-norm recipe) is not enough for a bound on a linear
    recurrence: Adam's first updates are sign-like, lr * sign(g), and a low-rank gradient then raises
    sigma by up to lr * dim in one step (E42 at d_inner 2176, lr 1e-3: 0.89 -> 1.8), while one step
    from the stale vector still reads 0.89; the linear recurrence then diverges within a sequence.
    From the stale vector, 8 steps reached sigma to 2e-4 there; each is two matrix-vector products.

    ``init``: "orthogonal" (W orthogonal times ``init_scale``) or "xavier" (xavier-uniform with gain
    ``init_scale``, the reference's). Every combination but the original (bound, orthogonal) starts
    from a converged vector, so that a forward before any training step (also in eval mode) divides
    by sigma(W) rather than by a random vector's estimate; the original keeps its random start, so
    its weights and buffers are bit for bit those of before.
    """

    MODES = ("bound", "fixed")

    def __init__(self, dim: int, radius: float = 0.99, init_scale: float = 0.9, power_iters: int = 8,
                 mode: str = "bound", init: str = "orthogonal"):
        super().__init__()
        if mode not in self.MODES or init not in ("orthogonal", "xavier"):
            raise ValueError(f"SpectralNormWeight: mode {mode!r} / init {init!r}")
        self.radius = radius
        self.power_iters = power_iters
        self.mode = mode
        w = torch.empty(dim, dim)
        if init == "orthogonal":
            nn.init.orthogonal_(w)
            w = w * init_scale
        else:
            nn.init.xavier_uniform_(w, gain=init_scale)
        self.weight = nn.Parameter(w)
        u = torch.randn(dim)
        self.register_buffer("u", u / u.norm())
        if (mode, init) != ("bound", "orthogonal"):
            self.settle()

    @torch.no_grad()
    def settle(self, steps: int = 64) -> None:
        """Run ``steps`` power-iteration steps now (no random numbers drawn): after an initialisation
        that replaced the weight, so that the stored vector matches it."""
        Wf = self.weight.detach().double()
        u = power_iterate(Wf, self.u.double(), steps)
        self.u.copy_(u.to(self.u.dtype))

    def forward(self) -> torch.Tensor:
        W = self.weight
        Wf = W if W.dtype == torch.float64 else W.float()
        if self.training:
            with torch.no_grad():
                self.u.copy_(power_iterate(Wf, self.u.to(Wf.dtype), self.power_iters))
        u = self.u.to(Wf.dtype)
        v = F.normalize(Wf.t() @ u, dim=0).detach()
        sigma = torch.dot(u, Wf @ v)
        if self.mode == "fixed":
            return W * (self.radius / (sigma + 1e-8)).to(W.dtype)
        return W / torch.clamp(sigma / self.radius, min=1.0).to(W.dtype)


def orthogonal_(weight: torch.Tensor, scale: float) -> torch.Tensor:
    with torch.no_grad():
        nn.init.orthogonal_(weight)
        weight.mul_(scale)
    return weight


def inv_softplus(x: torch.Tensor) -> torch.Tensor:
    return x + torch.log(-torch.expm1(-x))


def init_dt_bias(n: int, dt_min: float = 1e-3, dt_max: float = 0.1) -> torch.Tensor:
    dt = torch.exp(torch.rand(n) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    return inv_softplus(dt.clamp(min=1e-4))


def init_A_log(n: int, lo: float = 1.0, hi: float = 16.0) -> torch.Tensor:
    return torch.log(torch.empty(n).uniform_(lo, hi))
