"""Plain-PyTorch reference for the E88 matrix-state recurrence.

Per batch b and head h, with state S [m, n] (m = value dim, n = key dim = n_state):

    r_t     = S_{t-1} k_t                       (read what the state predicts for k_t)
    delta_t = v_t - r_t                         (delta rule)
    S_t     = act(a_t * S_{t-1} + delta_t k_t^T)   act = tanh (default) or identity
    o_t     = S_t q_t
    y_t     = o_t * gate_act(g_t)               (only when a gate is given)

Shapes: q, k [B, T, H, n]; v [B, T, H, m]; decay a [B, T, H] in (0, 1]; g [B, T, H, m];
S0 / S_T [B, H, m, n]. Keys and queries are expected L2-normalised by the caller.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def apply_gate(o: torch.Tensor, g: torch.Tensor | None, gate_activation: str) -> torch.Tensor:
    if g is None:
        return o
    if gate_activation == "silu":
        return o * F.silu(g)
    if gate_activation == "sigmoid":
        return o * torch.sigmoid(g)
    raise ValueError(f"gate_activation must be 'silu' or 'sigmoid', got {gate_activation!r}")


def e88_scan_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: torch.Tensor,
                 S0: torch.Tensor | None = None, nonlinearity: str = "tanh",
                 g: torch.Tensor | None = None, gate_activation: str = "silu"):
    """Step-by-step reference: returns (y [B, T, H, m], S_T [B, H, m, n]) in q's dtype."""
    if nonlinearity not in ("tanh", "linear"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'linear', got {nonlinearity!r}")
    B, T, H, n = q.shape
    m = v.shape[-1]
    dt = q.dtype
    S = q.new_zeros(B, H, m, n) if S0 is None else S0.to(dt)
    k, v, decay = k.to(dt), v.to(dt), decay.to(dt)
    outs = []
    for t in range(T):
        kt = k[:, t]
        r = torch.einsum("bhmn,bhn->bhm", S, kt)
        delta = v[:, t] - r
        S = decay[:, t, :, None, None] * S + delta.unsqueeze(-1) * kt.unsqueeze(-2)
        if nonlinearity == "tanh":
            S = torch.tanh(S)
        outs.append(torch.einsum("bhmn,bhn->bhm", S, q[:, t]))
    o = torch.stack(outs, dim=1) if T > 0 else q.new_zeros(B, 0, H, m)
    return apply_gate(o, None if g is None else g.to(dt), gate_activation), S
