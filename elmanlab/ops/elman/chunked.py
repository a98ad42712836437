"""Chunked parallel form of the linear Elman recurrence (E42), in plain PyTorch.

    h_t = u_t + h_{t-1} M,    u_t = wx_t + b,   M = W_h^T

Split time into nC chunks of C steps; every chunk runs at once, so each sequential step is one
large GEMM over B * nC rows instead of a latency-bound one over B rows:

1. within the chunks, from a zero carry-in: y_i = u_i + y_{i-1} M          (C - 1 steps)
2. the carry-in of each chunk: H_{c+1} = y_{C-1}(c) + H_c M^C               (nC small steps)
3. the carry through each chunk: h_i = y_i + H M^{i+1}, g_i = g_{i-1} M    (C steps)

That is 2 B T D^2 multiply-adds (the step-by-step recurrence does B T D^2) in 2C + nC sequential
GEMMs instead of T, plus M^C by repeated squaring (log2 C products of D x D). The matmuls take the
inputs' precision (bf16 in training, as the persistent kernel's tensor cores do) and accumulate
into float32 states; M^C and the carries stay in float32. It is exact algebra (tested against the
step-by-step reference in float64); gradients come from autograd. Used on CUDA for E42 where the
persistent kernel cannot hold W (d_inner above 16 x the SM count).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_CHUNK = 16


def elman_linear_chunked(wx: torch.Tensor, W_h: torch.Tensor, b: torch.Tensor | None = None,
                         h0: torch.Tensor | None = None, chunk: int = DEFAULT_CHUNK):
    """wx [B, T, D], W_h [D, D], b [D], h0 [B, D] -> (h [B, T, D], h_T [B, D]) for act = identity."""
    B, T, D = wx.shape
    sd = torch.float64 if wx.dtype == torch.float64 else torch.float32          # state dtype
    if T == 0:
        h = wx.new_zeros(B, D, dtype=sd) if h0 is None else h0.to(sd)
        return wx.new_zeros(B, 0, D), h
    md = wx.dtype if wx.dtype in (torch.bfloat16, torch.float16) else sd        # matmul input dtype
    C = max(1, min(chunk, T))
    pad = (-T) % C
    with torch.autocast(device_type=wx.device.type, enabled=False):
        u = wx.to(sd) if b is None else wx.to(sd) + b.to(sd)
        if pad:  # padded steps come after T: they change nothing before T, and h_T is read at T - 1
            u = F.pad(u, (0, 0, 0, pad))
        nC = (T + pad) // C
        U = u.reshape(B, nC, C, D)
        M = W_h.t().to(md)
        # 1. within chunks, all chunks at once, from a zero carry-in
        ys = [U[:, :, 0]]
        for i in range(1, C):
            ys.append(U[:, :, i] + (ys[-1].to(md) @ M).to(sd))
        # 2. carries between chunks (float32; M^C by repeated squaring)
        MC = torch.linalg.matrix_power(W_h.t().to(sd), C)
        carry = wx.new_zeros(B, D, dtype=sd) if h0 is None else h0.to(sd)
        carries = []
        for c in range(nC):
            carries.append(carry)
            carry = ys[-1][:, c] + carry @ MC
        g = torch.stack(carries, dim=1)                                          # [B, nC, D]
        # 3. each chunk's carry-in through its steps
        hs = []
        for i in range(C):
            g = (g.to(md) @ M).to(sd)
            hs.append(ys[i] + g)
        h = torch.stack(hs, dim=2).reshape(B, nC * C, D)[:, :T]
    return h.to(wx.dtype), h[:, T - 1]
