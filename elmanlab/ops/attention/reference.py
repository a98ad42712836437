"""Causal softmax attention written out: the definition the CUDA path (torch's flash SDPA) is
tested against, and what runs on the CPU.

Query ``i`` of ``q`` sits at position ``q_offset + i`` and sees keys ``0 .. q_offset + i`` (a KV
cache of ``q_offset`` earlier positions precedes the queries). Scores and softmax in float32 at
least (float64 stays float64), the output in q's dtype.
"""
from __future__ import annotations

import torch

from elmanlab.ops._dispatch import up


def causal_mask(Tq: int, Tk: int, q_offset: int, device) -> torch.Tensor:
    """[Tq, Tk] boolean, True where query i may see key j (j <= q_offset + i). Built on ``device``
    from arange: no host synchronisation (CUDA-graph capturable)."""
    qi = torch.arange(Tq, device=device)[:, None] + q_offset
    return torch.arange(Tk, device=device)[None, :] <= qi


def attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_offset: int = 0,
                  scale: float | None = None) -> torch.Tensor:
    """q [B, Tq, H, D], k, v [B, Tk, H, D] -> o [B, Tq, H, D]; causal, queries at positions
    q_offset .. q_offset + Tq - 1 of keys 0 .. Tk - 1; ``scale`` default D ** -0.5."""
    B, Tq, H, D = q.shape
    Tk = k.shape[1]
    scale = D ** -0.5 if scale is None else scale
    qf, kf, vf = up(q), up(k), up(v)
    s = torch.einsum("bqhd,bkhd->bhqk", qf, kf.to(qf.dtype)) * scale
    s = s.masked_fill(~causal_mask(Tq, Tk, q_offset, q.device), float("-inf"))
    p = torch.softmax(s, dim=-1)
    return torch.einsum("bhqk,bkhd->bqhd", p, vf.to(p.dtype)).to(q.dtype)
