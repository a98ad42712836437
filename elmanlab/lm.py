"""The byte-level language model: embedding -> pre-norm residual blocks -> norm -> head.

A block is ``x + layer(norm(x))`` (plus ``x + mlp(norm(x))`` when ``mlp_ratio > 0``). The norm is
RMSNorm by default; ``ModelConfig.norm = "layer"`` makes every norm a LayerNorm with weight and bias
(eps 1e-5), as ekg/elman's 400M runs had. The head is untied from the embedding by default;
``tie_embeddings`` ties it (the reference's). Output projections of the residual branches are
rescaled with depth (GPT-2 style) unless the layer keeps its own initialisation (``own_out_init``,
e.g. a family's ``init: reference``).

``dropout`` (a training setting, off by default) drops elements of the embedding output and of
every residual branch's output (layer and MLP) in training mode; evaluation, generation and the
Schedule-Free average never see it (``model.eval()``).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from elmanlab.config import ModelConfig
from elmanlab.errors import ElmanlabError
from elmanlab.layers.common import power_iterate

VOCAB = 256
RECURRENCE_POWER_ITERS = 20      # training lines' w_h_norm_max: power-iteration steps (LM.recurrence_norm_max)
EXACT_NORM_MAX = 256             # ... and the widest W_h it takes an SVD of instead


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden, bias=False)
        self.w3 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


MLP_MULTIPLE = 32        # the Transformer's SwiGLU hidden width is rounded up to this (GPU-friendly GEMMs)


def mlp_hidden(cfg: ModelConfig) -> int:
    """SwiGLU hidden width: round(mlp_ratio x dim); for families whose blocks carry an MLP by default
    (the Transformer), rounded up to a multiple of MLP_MULTIPLE, as LLaMA-style models do."""
    h = int(round(cfg.mlp_ratio * cfg.dim))
    if cfg.family.default_mlp_ratio > 0:
        h = -(-h // MLP_MULTIPLE) * MLP_MULTIPLE
    return h


def make_norm(cfg: ModelConfig) -> nn.Module:
    """The wrapper's normalisation (pre-norm of each block and the final norm) for ``cfg.norm``."""
    if cfg.norm == "layer":
        return nn.LayerNorm(cfg.dim, eps=1e-5)
    return nn.RMSNorm(cfg.dim, eps=1e-5)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int, dropout: float = 0.0):
        super().__init__()
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.norm = make_norm(cfg)
        self.layer = cfg.family(cfg.dim, cfg.options, layer_idx=layer_idx, depth=cfg.depth)
        if cfg.mlp_ratio > 0:
            self.mlp_norm = make_norm(cfg)
            self.mlp = SwiGLU(cfg.dim, mlp_hidden(cfg))
        else:
            self.mlp = None

    def forward(self, x, state=None):
        y, state = self.layer(self.norm(x), state)
        x = x + self.drop(y)
        if self.mlp is not None:
            x = x + self.drop(self.mlp(self.mlp_norm(x)))
        return x, state


class LM(nn.Module):
    def __init__(self, cfg: ModelConfig, dropout: float = 0.0):
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ElmanlabError(f"dropout must be in [0, 1), got {dropout}")
        self.cfg = cfg
        self.dropout = dropout
        self.embed = nn.Embedding(VOCAB, cfg.dim)
        self.embed_drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.blocks = nn.ModuleList(Block(cfg, i, dropout) for i in range(cfg.depth))
        self.norm = make_norm(cfg)
        self.head = None if cfg.tie_embeddings else nn.Linear(cfg.dim, VOCAB, bias=False)
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.normal_(self.embed.weight, std=0.02)
        if self.head is not None:
            nn.init.normal_(self.head.weight, std=0.02)
        # residual branch outputs scaled down with depth (GPT-2 style), unless the layer keeps its own
        std = 0.02 / (2 * self.cfg.depth) ** 0.5
        for blk in self.blocks:
            for name in ("out_proj", "o_proj"):
                lin = getattr(blk.layer, name, None)
                if isinstance(lin, nn.Linear) and not blk.layer.own_out_init:
                    nn.init.normal_(lin.weight, std=std)
            if blk.mlp is not None:
                nn.init.normal_(blk.mlp.w3.weight, std=std)

    def logits_from_hidden(self, x):
        x = self.norm(x)
        return F.linear(x, self.embed.weight) if self.head is None else self.head(x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, states=None,
                return_states: bool = False):
        """idx [B, T] bytes (int64) -> logits [B, T, 256]; loss (mean nats/byte) when targets given.

        With ``return_states`` the per-layer final states come back too, so a sequence can be
        processed in segments; ``states`` (one entry per layer, None for zeros) continues one.
        """
        x = self.embed_drop(self.embed(idx))
        new_states = []
        for i, blk in enumerate(self.blocks):
            x, st = blk(x, None if states is None else states[i])
            new_states.append(st)
        logits = self.logits_from_hidden(x)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().reshape(-1, VOCAB), targets.reshape(-1))
        if return_states:
            return logits, loss, new_states
        return logits, loss

    @torch.no_grad()
    def step(self, byte: torch.Tensor, states=None):
        """One byte per sequence: byte [B] -> (logits [B, 256], states). O(1) memory per byte."""
        logits, _, states = self.forward(byte.view(-1, 1), states=states, return_states=True)
        return logits[:, -1], states

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @torch.no_grad()
    def recurrence_norm_max(self) -> float | None:
        """The largest spectral norm, over the layers, of the recurrent weight W_h as a parameter
        (``RecurrentLayer.recurrence_matrix``, before any spectral normalisation rescales it; None for
        families without one): RECURRENCE_POWER_ITERS steps of power iteration on W W^T from one fixed
        vector, so that it is deterministic (a resumed run logs what the uninterrupted one did). A lower
        bound, tight once the top singular value stands apart; exact for an orthogonal W times a scale,
        whose singular values are all equal. Up to EXACT_NORM_MAX wide, an SVD instead (exact, and cheaper
        there). Synchronises (the training lines call it between timed steps)."""
        best, start = None, {}
        for blk in self.blocks:
            W = blk.layer.recurrence_matrix()
            if W is None:
                continue
            W = W.detach().float()
            n = W.shape[1]
            if n <= EXACT_NORM_MAX:
                s = torch.linalg.matrix_norm(W, ord=2)
                best = s if best is None else torch.maximum(best, s)
                continue
            if n not in start:
                g = torch.Generator().manual_seed(0)
                start[n] = F.normalize(torch.randn(n, generator=g), dim=0).to(W.device)
            s = torch.linalg.vector_norm(W.t() @ power_iterate(W, start[n], RECURRENCE_POWER_ITERS))
            best = s if best is None else torch.maximum(best, s)
        return None if best is None else round(float(best), 5)
