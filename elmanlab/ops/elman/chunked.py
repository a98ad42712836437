"""Chunked parallel form of the linear Elman recurrence (E42), in plain PyTorch.

    h_t = u_t + h_{t-1} M,    u_t = wx_t + b,   M = W_h^T

Within a chunk of C steps with carry-in h_in (the state before the chunk):

    h_i = sum_{j <= i} u_j M^{i-j} + h_in M^{i+1}

so a chunk is C large matmuls against the powers M^0 .. M^C (computed once, in float32), and only
T / C small matmuls remain sequential (the carries). The FLOPs grow with C (B T (C+1) D^2 MACs)
but run as a few big GEMMs instead of T small latency-bound steps. It is exact algebra (tested
against the step-by-step reference in float64); gradients come from autograd. Used on CUDA for
E42 where the persistent kernel cannot hold W (d_inner above 16 x the SM count).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_CHUNK = 16


def elman_linear_chunked(wx: torch.Tensor, W_h: torch.Tensor, b: torch.Tensor | None = None,
                         h0: torch.Tensor | None = None, chunk: int = DEFAULT_CHUNK):
    """wx [B, T, D], W_h [D, D], b [D], h0 [B, D] -> (h [B, T, D], h_T [B, D]) for act = identity."""
    B, T, D = wx.shape
    state_dtype = torch.float64 if wx.dtype == torch.float64 else torch.float32
    if T == 0:
        h = wx.new_zeros(B, D, dtype=state_dtype) if h0 is None else h0.to(state_dtype)
        return wx.new_zeros(B, 0, D), h
    u = wx if b is None else wx + b.to(wx.dtype)
    C = max(1, min(chunk, T))
    pad = (-T) % C
    if pad:  # padded steps come after T: they change nothing before T, and h_T is read at T - 1
        u = F.pad(u, (0, 0, 0, pad))
    nC = (T + pad) // C
    U = u.reshape(B, nC, C, D)
    with torch.autocast(device_type=wx.device.type, enabled=False):
        M = W_h.t().to(state_dtype)
        powers = [torch.eye(D, dtype=state_dtype, device=wx.device), M]
        for _ in range(C - 1):
            powers.append(powers[-1] @ M)                       # M^0 .. M^C in float32 (or float64)
    P = [p.to(u.dtype) for p in powers]
    # within chunks: Y_i = sum_{k <= i} U_{i-k} M^k
    Y = U
    for k in range(1, C):
        Y = Y + F.pad(U[:, :, :C - k] @ P[k], (0, 0, k, 0))
    # between chunks: the carry-in of each chunk, sequential over T / C chunks, in float32
    carry = wx.new_zeros(B, D, dtype=state_dtype) if h0 is None else h0.to(state_dtype)
    carries = []
    last = Y[:, :, C - 1].to(state_dtype)
    with torch.autocast(device_type=wx.device.type, enabled=False):
        for c in range(nC):
            carries.append(carry)
            carry = last[:, c] + carry @ powers[C]
    H_in = torch.stack(carries, dim=1).to(u.dtype)               # [B, nC, D]
    corr = torch.stack([H_in @ P[i + 1] for i in range(C)], dim=2)  # [B, nC, C, D]
    h = (Y + corr).reshape(B, nC * C, D)[:, :T]
    return h, h[:, T - 1].to(state_dtype)
