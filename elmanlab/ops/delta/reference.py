"""Plain-PyTorch reference for the gated delta rule (Gated DeltaNet, Yang et al. 2024).

Per batch and head, state S [K, V]:

    S_t = exp(g_t) S_{t-1}
    S_t = S_t + beta_t k_t (v_t - S_t^T k_t)^T
    o_t = S_t^T (scale * q_t)

Shapes: q, k [B, T, H, K]; v [B, T, H, V]; g [B, T, H] (log decay, <= 0); beta [B, T, H];
state [B, H, K, V] (flash-linear-attention's layout).

:func:`gated_delta_rule_recurrent` is the definition. :func:`gated_delta_rule_chunked` is the
chunked WY form (a triangular solve per chunk), used on CPU.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from elmanlab.ops._dispatch import up


def gdn_gates(a, b, A_log, dt_bias):
    """Gated DeltaNet's log decay g = -exp(A_log) softplus(a + dt_bias) and beta = sigmoid(b), in at
    least float32."""
    return -torch.exp(up(A_log)) * F.softplus(up(a) + up(dt_bias)), torch.sigmoid(up(b))


def gdn_inputs(q, k, a, b, A_log, dt_bias):
    """Gated DeltaNet's transforms of raw layer outputs: q, k L2-normalised per head (last dim),
    and the gates of ``gdn_gates``: (q, k, g, beta). fla's in-kernel versions differ in rounding only:
    its L2 norm is x rsqrt(sum x^2 + 1e-6) (F.normalize clamps the norm at 1e-12), its softplus an
    exp2/log2 approximation (about 2e-7 absolute)."""
    return (F.normalize(q, dim=-1), F.normalize(k, dim=-1)) + gdn_gates(a, b, A_log, dt_bias)


def gdn_chunked(q, k, v, a, b, A_log, dt_bias, scale=None, initial_state=None):
    """Gated DeltaNet's rule from raw layer outputs (``gdn_inputs``), chunked form."""
    qn, kn, g, beta = gdn_inputs(q, k, a, b, A_log, dt_bias)
    return gated_delta_rule_chunked(qn, kn, v, g, beta, scale, initial_state)


def gated_delta_rule_recurrent(q, k, v, g, beta, scale=None, initial_state=None):
    Bsz, T, H, K = q.shape
    V = v.shape[-1]
    scale = K ** -0.5 if scale is None else scale
    S = q.new_zeros(Bsz, H, K, V) if initial_state is None else initial_state.to(q.dtype)
    outs = []
    for t in range(T):
        S = S * torch.exp(g[:, t])[..., None, None]
        kt = k[:, t]
        u = beta[:, t, :, None] * (v[:, t] - torch.einsum("bhkv,bhk->bhv", S, kt))
        S = S + kt.unsqueeze(-1) * u.unsqueeze(-2)
        outs.append(torch.einsum("bhkv,bhk->bhv", S, q[:, t] * scale))
    o = torch.stack(outs, dim=1) if T else q.new_zeros(Bsz, 0, H, V)
    return o, S


def gated_delta_rule_chunked(q, k, v, g, beta, scale=None, initial_state=None, chunk_size: int = 64):
    Bsz, T, H, K = q.shape
    V = v.shape[-1]
    scale = K ** -0.5 if scale is None else scale
    if T == 0:
        S = q.new_zeros(Bsz, H, K, V) if initial_state is None else initial_state.to(q.dtype)
        return q.new_zeros(Bsz, 0, H, V), S
    C = min(chunk_size, T)
    pad = (-T) % C
    # to [B, H, T, .]
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    g, beta = g.transpose(1, 2), beta.transpose(1, 2)
    if pad:  # padded steps: beta = 0 (no write), g = 0 (no decay)
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        g, beta = F.pad(g, (0, pad)), F.pad(beta, (0, pad))
    n = (T + pad) // C
    q = (q * scale).reshape(Bsz, H, n, C, K)
    k = k.reshape(Bsz, H, n, C, K)
    v = v.reshape(Bsz, H, n, C, V)
    beta = beta.reshape(Bsz, H, n, C)
    gc = g.reshape(Bsz, H, n, C).cumsum(-1)                      # cumulative log decay in a chunk
    k_beta = k * beta.unsqueeze(-1)
    v_beta = v * beta.unsqueeze(-1)
    diff = gc.unsqueeze(-1) - gc.unsqueeze(-2)                    # [.., C, C]: gc_i - gc_j
    tril_strict = torch.tril(torch.ones(C, C, dtype=torch.bool, device=q.device), -1)
    tril = torch.tril(torch.ones(C, C, dtype=torch.bool, device=q.device), 0)
    decay_mat = torch.exp(diff.masked_fill(~tril, float("-inf")))  # exp(gc_i - gc_j), j <= i
    # WY representation: T = (I + strict_tril(beta_i k_i.k_j exp(gc_i - gc_j)))^{-1}
    Amat = (k_beta @ k.transpose(-1, -2)) * decay_mat
    Amat = Amat.masked_fill(~tril_strict, 0)
    eye = torch.eye(C, dtype=q.dtype, device=q.device)
    Tm = torch.linalg.solve_triangular(eye + Amat, eye.expand_as(Amat), upper=False)
    w = Tm @ (k_beta * torch.exp(gc).unsqueeze(-1))               # [.., C, K]
    u = Tm @ v_beta                                                # [.., C, V]
    S = q.new_zeros(Bsz, H, K, V) if initial_state is None else initial_state.to(q.dtype)
    attn_all = (q @ k.transpose(-1, -2)) * decay_mat               # [.., C, C] (lower incl. diag)
    outs = []
    for i in range(n):
        v_new = u[:, :, i] - w[:, :, i] @ S                        # [B, H, C, V]
        o_inter = (q[:, :, i] * torch.exp(gc[:, :, i]).unsqueeze(-1)) @ S
        outs.append(o_inter + attn_all[:, :, i] @ v_new)
        last = gc[:, :, i, -1]
        S = S * torch.exp(last)[..., None, None] + \
            (k[:, :, i] * torch.exp(last.unsqueeze(-1) - gc[:, :, i]).unsqueeze(-1)).transpose(-1, -2) @ v_new
    o = torch.stack(outs, dim=2).reshape(Bsz, H, n * C, V)[:, :, :T].transpose(1, 2)
    return o, S
