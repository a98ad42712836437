"""Diagonal linear recurrence h_t = a_t * h_{t-1} + b_t (minGRU, minLSTM).

Two plain-PyTorch forms:

* :func:`linear_scan_sequential` -- one step at a time, the definition.
* :func:`linear_scan_parallel`  -- the parallel (log-space) form used on CPU: with
  A_t = sum_{s<=t} log a_s,  h_t = exp(A_t) h_0 + sum_{s<=t} exp(A_t - A_s) b_s, evaluated with
  ``logcumsumexp`` on the positive and negative parts of b separately so that it never overflows.
  Requires 0 < a_t <= 1 (true for minGRU's 1 - z and minLSTM's normalised forget gate).
"""
from __future__ import annotations

import torch


def linear_scan_sequential(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None):
    """a, b [B, T, D]; h0 [B, D] -> (h [B, T, D], h_T [B, D])."""
    B, T, D = b.shape
    h = b.new_zeros(B, D) if h0 is None else h0.to(b.dtype)
    outs = []
    for t in range(T):
        h = a[:, t] * h + b[:, t]
        outs.append(h)
    if T == 0:
        return b.new_zeros(B, 0, D), h
    return torch.stack(outs, dim=1), h


_TINY = 1e-30


def linear_scan_parallel(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None):
    """Log-space parallel scan; same contract as :func:`linear_scan_sequential`."""
    B, T, D = b.shape
    if T == 0:
        h = b.new_zeros(B, D) if h0 is None else h0.to(b.dtype)
        return b.new_zeros(B, 0, D), h
    log_a = torch.log(a.clamp_min(_TINY))
    A = torch.cumsum(log_a, dim=1)                       # [B, T, D], non-increasing
    pos = torch.log(b.clamp_min(0) + _TINY) - A          # log of b+ / prod a
    neg = torch.log((-b).clamp_min(0) + _TINY) - A
    h = torch.exp(A + torch.logcumsumexp(pos, dim=1)) - torch.exp(A + torch.logcumsumexp(neg, dim=1))
    # the _TINY floors add a bias of at most T * _TINY * max(exp(A_t - A_s)) <= T * 1e-30: negligible
    if h0 is not None:
        h = h + torch.exp(A) * h0.to(b.dtype).unsqueeze(1)
    return h, h[:, -1]


def _g_plus(x: torch.Tensor) -> torch.Tensor:
    """g(x) = x + 0.5 for x >= 0, sigmoid(x) otherwise (Feng et al.'s positive activation)."""
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def minrnn_coefficients(p: torch.Tensor, kind: str):
    """Scan coefficients (a, b) of minGRU / minLSTM from the raw projection p [B, T, n D].

    minGRU  (n = 2, p = [h~, z]):    a = 1 - sigmoid(z) (as sigmoid(-z)),  b = sigmoid(z) g(h~)
    minLSTM (n = 3, p = [f, i, h~]): d = logsigmoid(f) - logsigmoid(i), a = sigmoid(d) = f' ,
                                      b = sigmoid(-d) g(h~) = i' g(h~)
    """
    if kind == "mingru":
        h_tilde, zg = p.chunk(2, dim=-1)
        return torch.sigmoid(-zg), torch.sigmoid(zg) * _g_plus(h_tilde)
    if kind == "minlstm":
        fg, ig, h_tilde = p.chunk(3, dim=-1)
        d = torch.nn.functional.logsigmoid(fg) - torch.nn.functional.logsigmoid(ig)
        return torch.sigmoid(d), torch.sigmoid(-d) * _g_plus(h_tilde)
    raise ValueError(f"unknown minRNN kind {kind!r} (expected 'mingru' or 'minlstm')")
