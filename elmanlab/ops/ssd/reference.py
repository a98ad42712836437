"""Plain-PyTorch reference for Mamba2's state-space duality (SSD) scan.

Per head h with state H [P, N] (P = headdim, N = d_state), groups g(h) sharing B and C:

    H_t = exp(dt_t A_h) H_{t-1} + dt_t x_t B_t^T
    y_t = H_t C_t + D_h x_t

Shapes: x [B, T, H, P]; dt [B, T, H] (already softplus'ed and positive); A [H] (negative);
Bm, Cm [B, T, G, N] with H % G == 0; D [H] or None; state [B, H, P, N].

:func:`ssd_sequential` is the definition; :func:`ssd_chunked` is the chunked SSD form of the
Mamba2 paper ("ssd_minimal"), used on CPU.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from elmanlab.ops._dispatch import up


def _expand_groups(M: torch.Tensor, H: int) -> torch.Tensor:
    G = M.shape[2]
    if H % G:
        raise ValueError(f"n_heads ({H}) must be a multiple of n_groups ({G})")
    return M.repeat_interleave(H // G, dim=2) if G != H else M


def step_size(dt, dt_bias=None, softplus: bool = False):
    """softplus(dt + dt_bias) in at least float32 (mamba_ssm's dt_softplus), or dt unchanged."""
    if dt_bias is None and not softplus:
        return dt
    dt = up(dt)
    if dt_bias is not None:
        dt = dt + dt_bias.to(dt.dtype)
    return F.softplus(dt) if softplus else dt


def ssd_sequential(x, dt, A, Bm, Cm, D=None, initial_state=None):
    Bsz, T, H, P = x.shape
    N = Bm.shape[-1]
    Bh, Ch = _expand_groups(Bm, H), _expand_groups(Cm, H)
    st = x.new_zeros(Bsz, H, P, N) if initial_state is None else initial_state.to(x.dtype)
    ys = []
    for t in range(T):
        dA = torch.exp(dt[:, t] * A)                               # [B, H]
        st = dA[..., None, None] * st + (dt[:, t, :, None] * x[:, t]).unsqueeze(-1) * Bh[:, t].unsqueeze(-2)
        ys.append(torch.einsum("bhpn,bhn->bhp", st, Ch[:, t]))
    y = torch.stack(ys, dim=1) if T else x.new_zeros(Bsz, 0, H, P)
    if D is not None:
        y = y + x * D[:, None]
    return y, st


def _segsum(x: torch.Tensor) -> torch.Tensor:
    """x [..., L] -> [..., L, L] with out[i, j] = sum_{j < k <= i} x_k (and -inf above the diagonal)."""
    L = x.size(-1)
    xx = x.unsqueeze(-1).expand(*x.shape, L)
    mask = torch.tril(torch.ones(L, L, dtype=torch.bool, device=x.device), diagonal=-1)
    xx = xx.masked_fill(~mask, 0)
    seg = torch.cumsum(xx, dim=-2)
    mask = torch.tril(torch.ones(L, L, dtype=torch.bool, device=x.device), diagonal=0)
    return seg.masked_fill(~mask, float("-inf"))


def ssd_chunked(x, dt, A, Bm, Cm, D=None, initial_state=None, chunk_size: int = 64):
    Bsz, T, H, P = x.shape
    N = Bm.shape[-1]
    if T == 0:
        st = x.new_zeros(Bsz, H, P, N) if initial_state is None else initial_state.to(x.dtype)
        return x.new_zeros(Bsz, 0, H, P), st
    Bh, Ch = _expand_groups(Bm, H).to(x.dtype), _expand_groups(Cm, H).to(x.dtype)
    X = x * dt.unsqueeze(-1)
    Ad = dt * A                                                     # [B, T, H]
    L = min(chunk_size, T)             # a short sequence (generation: T = 1) is not padded to a whole chunk
    pad = (-T) % L
    if pad:  # padded steps: no input (X = 0, B = 0) and no decay (Ad = 0): state unchanged
        X = F.pad(X, (0, 0, 0, 0, 0, pad))
        Ad = F.pad(Ad, (0, 0, 0, pad))
        Bh = F.pad(Bh, (0, 0, 0, 0, 0, pad))
        Ch = F.pad(Ch, (0, 0, 0, 0, 0, pad))
    c = (T + pad) // L
    X = X.reshape(Bsz, c, L, H, P)
    Bc = Bh.reshape(Bsz, c, L, H, N)
    Cc = Ch.reshape(Bsz, c, L, H, N)
    Ac = Ad.reshape(Bsz, c, L, H).permute(0, 3, 1, 2)               # [B, H, c, L]
    A_cum = torch.cumsum(Ac, dim=-1)
    # 1. within-chunk outputs (the quadratic, attention-like part)
    Lmat = torch.exp(_segsum(Ac))                                   # [B, H, c, L, L]
    Y_diag = torch.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", Cc, Bc, Lmat, X)
    # 2. state at the end of each chunk from its own inputs
    decay_states = torch.exp(A_cum[..., -1:] - A_cum)
    states = torch.einsum("bclhn,bhcl,bclhp->bchpn", Bc, decay_states, X)
    # 3. pass states between chunks
    init = x.new_zeros(Bsz, 1, H, P, N) if initial_state is None else initial_state.to(x.dtype).unsqueeze(1)
    states = torch.cat([init, states], dim=1)
    decay_chunk = torch.exp(_segsum(F.pad(A_cum[..., -1], (1, 0))))  # [B, H, c+1, c+1]
    new_states = torch.einsum("bhzc,bchpn->bzhpn", decay_chunk, states)
    states, final_state = new_states[:, :-1], new_states[:, -1]
    # 4. contribution of the carried state to each position
    Y_off = torch.einsum("bclhn,bchpn,bhcl->bclhp", Cc, states, torch.exp(A_cum))
    y = (Y_diag + Y_off).reshape(Bsz, c * L, H, P)[:, :T]
    if D is not None:
        y = y + x * D[:, None]
    return y, final_state
