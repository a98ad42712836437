"""A pre-norm GPT baseline as the field trains it today: RoPE, causal softmax attention, no biases.

The layer is the attention sublayer: one fused q/k/v projection, rotary position embeddings
(rotate-half form, base ``rope_base``) on q and k, causal attention (``ops.attention``: torch's
flash SDPA on CUDA, the plain softmax reference elsewhere), ``o_proj``. The LM's block adds the
SwiGLU MLP (``default_mlp_ratio`` 8/3, LLaMA's choice) and the RMSNorms around it.

The "state" is the KV cache: the rotated keys and the values of every position so far, [B, T, H,
Dh] each. Feeding it into the next segment continues the sequence (RoPE positions continue from
the cache length), so segments and one-byte steps equal one long pass; unlike the recurrent
families it grows with the context (``state_grows``), by ``state_size`` values per byte per layer.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from elmanlab.layers.base import RecurrentLayer
from elmanlab.layers.common import fused_linear
from elmanlab.ops._dispatch import up
from elmanlab.ops.attention import attention


@dataclass
class TransformerOptions:
    head_dim: int = field(default=64, metadata={"help": "dim per attention head (even, >= 8; 64 or 128 typical)"})
    n_heads: int | None = field(default=None, metadata={"help": "attention heads (default dim / head_dim; dim "
                                                                  "must then be a multiple of head_dim)"})
    rope_base: float = field(default=10000.0, metadata={"help": "RoPE base (theta)"})


def apply_rope(q: torch.Tensor, k: torch.Tensor, offset: int, base: float):
    """Rotary embeddings (rotate-half form) on q, k [B, T, H, D] at positions offset .. offset + T - 1;
    computed in float32 at least, returned in each input's dtype. No host synchronisation."""
    T, D = q.shape[1], q.shape[-1]
    dt = up(q).dtype
    inv_freq = base ** (-torch.arange(0, D, 2, device=q.device, dtype=dt) / D)
    pos = torch.arange(offset, offset + T, device=q.device, dtype=dt)
    ang = pos[:, None] * inv_freq[None, :]                                  # [T, D/2]
    cos, sin = ang.cos()[None, :, None, :], ang.sin()[None, :, None, :]

    def rot(x):
        x1, x2 = up(x).to(dt).chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)
    return rot(q), rot(k)


class Transformer(RecurrentLayer):
    name = "transformer"
    description = "GPT baseline: causal softmax attention (RoPE, flash SDPA) + SwiGLU MLP, pre-norm"
    Options = TransformerOptions
    op = "attention"
    dim_multiple = 64
    default_mlp_ratio = 8 / 3
    state_grows = True

    def __init__(self, dim: int, opts: TransformerOptions, layer_idx: int = 0, depth: int = 1):
        super().__init__()
        self.opts = opts
        self.H, self.Dh = opts.n_heads, opts.head_dim
        inner = self.H * self.Dh
        self.qkv_proj = nn.Linear(dim, 3 * inner, bias=False)
        self.o_proj = nn.Linear(inner, dim, bias=False)          # LM.reset_parameters scales it by depth
        nn.init.normal_(self.qkv_proj.weight, std=0.02)

    def forward(self, x, state=None):
        B, T, _ = x.shape
        H, Dh = self.H, self.Dh
        q, k, v = fused_linear(x, [self.qkv_proj.weight]).reshape(B, T, 3, H, Dh).unbind(2)
        past = 0 if state is None else state[0].shape[1]          # a Python int: no host sync
        q, k = apply_rope(q, k, past, self.opts.rope_base)
        if state is not None:
            k = torch.cat([state[0].to(k.dtype), k], dim=1)
            v = torch.cat([state[1].to(v.dtype), v], dim=1)
        o = attention(q, k, v, q_offset=past)
        return self.o_proj(o.reshape(B, T, H * Dh)), (k, v)

    @classmethod
    def resolve(cls, dim, opts):
        cls.check_int("head_dim", opts.head_dim, 8)
        cls.check(opts.head_dim % 2 == 0, f"{cls.name} option head_dim must be even (RoPE rotates pairs), "
                                          f"got {opts.head_dim}")
        cls.check_number("rope_base", opts.rope_base, 1.0)
        if opts.n_heads is not None:
            cls.check_int("n_heads", opts.n_heads, 1)
        else:
            cls.check(dim % opts.head_dim == 0,
                      f"{cls.name} dim {dim} is not a multiple of head_dim {opts.head_dim}: pick a dim that is "
                      f"(e.g. {max(1, dim // opts.head_dim) * opts.head_dim}), or set --head-dim / --n-heads")
        out = super().resolve(dim, opts)
        if out.n_heads is None:
            out.n_heads = dim // opts.head_dim
        return out

    @classmethod
    def op_shapes(cls, dim, opts):
        return {"head_dim": opts.head_dim}

    @classmethod
    def param_count(cls, dim, opts):
        return 4 * dim * opts.n_heads * opts.head_dim           # q, k, v and o projections

    @classmethod
    def d_inner(cls, dim, opts):
        return opts.n_heads * opts.head_dim

    @classmethod
    def state_size(cls, dim, opts):
        """KV cache elements per byte of context per layer (keys and values of every head)."""
        return 2 * opts.n_heads * opts.head_dim

    @classmethod
    def attention_flops_per_token(cls, dim, opts, seq_len):
        """Per layer: 12 x (n_heads x head_dim) x seq_len (QK^T and AV, forward + backward, full)."""
        return 12 * opts.n_heads * opts.head_dim * seq_len
