"""Plain-PyTorch reference for the Elman recurrences (E1, E33: tanh; E42: linear tied).

    h_t = act(wx_t + h_{t-1} @ W_h^T + b)          act = tanh or identity

``wx`` is the input contribution already projected (W_x x_t for E1/E33, W x_t for E42, whose tied
matrix makes h_t = W (x_t + h_{t-1}) + b). ``W_h`` is ``[D, D]`` in nn.Linear layout (out, in).
"""
from __future__ import annotations

import torch


def elman_scan_ref(wx: torch.Tensor, W_h: torch.Tensor, b: torch.Tensor | None = None,
                   h0: torch.Tensor | None = None, nonlinearity: str = "tanh"):
    """wx [B, T, D], W_h [D, D], b [D], h0 [B, D] -> (h [B, T, D], h_T [B, D]).

    Computed in the dtype of ``wx`` (pass float64 for a reference), one step at a time.
    """
    if nonlinearity not in ("tanh", "linear"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'linear', got {nonlinearity!r}")
    B, T, D = wx.shape
    h = wx.new_zeros(B, D) if h0 is None else h0.to(wx.dtype)
    W_t = W_h.to(wx.dtype).t()
    if b is not None:
        wx = wx + b.to(wx.dtype)
    outs = []
    for t in range(T):
        pre = torch.addmm(wx[:, t], h, W_t)
        h = torch.tanh(pre) if nonlinearity == "tanh" else pre
        outs.append(h)
    if T == 0:
        return wx.new_zeros(B, 0, D), h
    return torch.stack(outs, dim=1), h
