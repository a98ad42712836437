"""The contract every layer family follows.

A family is an ``nn.Module`` subclass of :class:`RecurrentLayer` with a typed ``Options``
dataclass. The class knows its exact parameter count in closed form (checked against the module
in the tests), its recurrent state size, and how to fill options derived from the width.

``forward(x [B, T, dim], state=None) -> (y [B, T, dim], new_state)``: state is a tuple of
tensors (zeros when None); feeding ``new_state`` into the next segment equals one long pass,
which is also how the LM's ``step()`` runs one byte at a time. (The transformer's state is its KV
cache, empty when None, which grows with the context: ``state_grows``.)

``op`` names the family's recurrence (its folder under ``elmanlab/ops``); ``backend_info(dim,
opts)`` says what the family will run on this machine at its shapes (the op, and the fused helpers
its layer calls), before anything runs. What did run is ``elmanlab.ops.implementations_used()``.
"""
from __future__ import annotations

import dataclasses
import importlib
import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from elmanlab.errors import ElmanlabError


@dataclass
class NoOptions:
    pass


class RecurrentLayer(nn.Module):
    name: str = ""
    description: str = ""
    op: str = ""                   # the recurrence's folder under elmanlab/ops (its record key too)
    Options: type = NoOptions
    dim_multiple: int = 8          # the solver keeps dim a multiple of this (at least)
    default_mlp_ratio: float = 0.0  # ModelConfig.mlp_ratio when not given (0: no MLP sublayer)
    state_grows: bool = False      # True: the state is a cache that grows with the context (attention)
    own_out_init: bool = False     # True (set per instance): the LM leaves out_proj as the layer initialised it
                                   # instead of rescaling it with depth (an option such as init: reference)

    @classmethod
    def op_shapes(cls, dim: int, opts) -> dict:
        """The keyword arguments of the op's ``backend_info`` at this layer's shapes."""
        return {}

    @classmethod
    def helper_infos(cls, dim: int, opts) -> dict:
        """The fused helpers this layer calls besides its op (record key -> their ``backend_info``)."""
        return {}

    @classmethod
    def backend_info(cls, dim: int, opts) -> dict:
        """What this family runs on this machine at width ``dim`` with ``opts``: the op's
        ``backend_info`` at the layer's shapes, ``{"path", "fast", "reason"}``, plus ``"helpers"``
        ({name: backend_info}) where the layer also calls fused helpers (short conv, gated RMSNorm),
        and ``"fix"`` (one sentence: what to install or set) whenever ``fast`` is False. ``fast`` is
        True only when the op and every helper run their fast paths; when a helper does not, the
        reason and fix are the helper's. On CUDA this imports the kernel libraries and may build the
        package's own kernels; a bad implementation switch (ELMANLAB_*) is an ElmanlabError."""
        opts = cls.resolve(dim, opts)
        mod = importlib.import_module(f"elmanlab.ops.{cls.op}")
        info = dict(mod.backend_info(**cls.op_shapes(dim, opts)))
        helpers = {name: dict(fn()) for name, fn in cls.helper_infos(dim, opts).items()}
        if helpers:
            info["helpers"] = helpers
        slow = next(((n, h) for n, h in helpers.items() if not h["fast"]), None)
        if info["fast"] and slow is not None:
            info.update(fast=False, reason=f"{slow[0]}: {slow[1]['reason']}", fix=slow[1].get("fix"))
        if not info["fast"] and not info.get("fix"):
            info["fix"] = "see `elmanlab doctor`"
        return info

    @classmethod
    def resolve(cls, dim: int, opts):
        """Validate ``opts`` for width ``dim`` and return a copy with derived fields filled. Here: every
        option declared with ``choices`` in its field metadata holds one of them (also for options
        built without ``config.make_options``); families add their own checks and call this."""
        for f in dataclasses.fields(opts):
            choices = f.metadata.get("choices")
            v = getattr(opts, f.name)
            cls.check(not choices or v in choices,
                      f"{cls.name} option {f.name} must be one of {', '.join(choices or ())}, got {v!r}")
        return dataclasses.replace(opts)

    @classmethod
    def param_count(cls, dim: int, opts) -> int:
        raise NotImplementedError

    def recurrence_matrix(self) -> torch.Tensor | None:
        """The square recurrent weight as a parameter (before any spectral normalisation rescales it):
        the training lines' ``w_h_norm_max`` is the largest spectral norm of these over the layers. None
        for families without one."""
        return None

    @classmethod
    def state_size(cls, dim: int, opts) -> int:
        """Recurrent state elements per sequence per layer (not counting short-conv buffers); where
        ``state_grows`` (a KV cache), the elements per byte of context per layer."""
        raise NotImplementedError

    @classmethod
    def attention_flops_per_token(cls, dim: int, opts, seq_len: int) -> float:
        """Training FLOPs per token per layer beyond 6 x the parameters (attention's score and value
        products at ``seq_len``); 0 for families without attention."""
        return 0

    @classmethod
    def conv_state_size(cls, dim: int, opts) -> int:
        return 0

    @classmethod
    def d_inner(cls, dim: int, opts) -> int | None:
        """Width of the recurrence (reported by ``elmanlab size``); default ``dim * expansion``."""
        return d_inner_of(dim, opts.expansion) if hasattr(opts, "expansion") else None

    @classmethod
    def n_heads(cls, dim: int, opts) -> int | None:
        """Heads of a multi-head recurrence (resolved options), else None."""
        return getattr(opts, "n_heads", None)

    @classmethod
    def inactive_options(cls, values: dict) -> set[str]:
        """Options that change nothing given the others (e.g. a gate's activation when there is no
        gate): reports leave them out, so runs are not grouped by a setting that had no effect."""
        return set()

    @staticmethod
    def check(cond: bool, msg: str) -> None:
        if not cond:
            raise ElmanlabError(msg)

    @classmethod
    def check_number(cls, name: str, value, lo: float = 0.0, hi: float | None = None) -> None:
        """An option that must be a finite number in (lo, hi] (hi None: no upper bound)."""
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
              and value > lo and (hi is None or value <= hi))
        need = f"> {lo:g}" if hi is None else f"in ({lo:g}, {hi:g}]"
        cls.check(ok, f"{cls.name} option {name} must be a number {need}, got {value!r}")

    @classmethod
    def check_int(cls, name: str, value, minimum: int = 1) -> None:
        """An option that must be an integer >= ``minimum``."""
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
        cls.check(ok, f"{cls.name} option {name} must be an integer >= {minimum}, got {value!r}")


def d_inner_of(dim: int, expansion: float) -> int:
    return max(1, int(round(dim * expansion)))
