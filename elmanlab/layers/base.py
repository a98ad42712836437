"""The contract every layer family follows.

A family is an ``nn.Module`` subclass of :class:`RecurrentLayer` with a typed ``Options``
dataclass. The class knows its exact parameter count in closed form (checked against the module
in the tests), its recurrent state size, and how to fill options derived from the width.

``forward(x [B, T, dim], state=None) -> (y [B, T, dim], new_state)``: state is a tuple of
tensors (zeros when None); feeding ``new_state`` into the next segment equals one long pass,
which is also how the LM's ``step()`` runs one byte at a time.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch.nn as nn

from elmanlab.errors import ElmanlabError


@dataclass
class NoOptions:
    pass


class RecurrentLayer(nn.Module):
    name: str = ""
    description: str = ""
    Options: type = NoOptions
    dim_multiple: int = 8          # the solver keeps dim a multiple of this (at least)

    @classmethod
    def resolve(cls, dim: int, opts):
        """Validate ``opts`` for width ``dim`` and return a copy with derived fields filled."""
        return dataclasses.replace(opts)

    @classmethod
    def param_count(cls, dim: int, opts) -> int:
        raise NotImplementedError

    @classmethod
    def state_size(cls, dim: int, opts) -> int:
        """Recurrent state elements per sequence per layer (not counting short-conv buffers)."""
        raise NotImplementedError

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


def d_inner_of(dim: int, expansion: float) -> int:
    return max(1, int(round(dim * expansion)))
