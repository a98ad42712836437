"""Typed model configuration: family, width, depth and the family's options."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from elmanlab.errors import ElmanlabError
from elmanlab.layers import get_family


@dataclass
class ModelConfig:
    model: str
    dim: int
    depth: int
    options: Any = None                 # the family's Options dataclass (resolved)
    mlp_ratio: float = 0.0              # > 0 adds a SwiGLU MLP sublayer with hidden mlp_ratio * dim
    tie_embeddings: bool = False        # untied head by default (reproduces the seeds' counts)

    def __post_init__(self):
        fam = get_family(self.model)
        self.model = fam.name
        if self.options is None:
            self.options = fam.Options()
        elif isinstance(self.options, dict):
            self.options = make_options(fam.name, self.options)
        if self.dim < 1:
            raise ElmanlabError(f"dim must be >= 1, got {self.dim}")
        if self.depth < 1:
            raise ElmanlabError(f"depth must be >= 1, got {self.depth}")
        if self.mlp_ratio < 0:
            raise ElmanlabError(f"mlp_ratio must be >= 0, got {self.mlp_ratio}")
        self.options = fam.resolve(self.dim, self.options)

    @property
    def family(self):
        return get_family(self.model)

    def to_dict(self) -> dict:
        return {"model": self.model, "dim": self.dim, "depth": self.depth,
                "options": dataclasses.asdict(self.options), "mlp_ratio": self.mlp_ratio,
                "tie_embeddings": self.tie_embeddings}

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ElmanlabError(f"unknown model config keys: {', '.join(sorted(unknown))}")
        return cls(**d)


def option_fields(model: str) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(get_family(model).Options)}


def make_options(model: str, values: dict):
    """Build a family's Options from a dict, rejecting options the family does not have."""
    fam = get_family(model)
    fields_ = option_fields(fam.name)
    unknown = [k for k in values if k not in fields_]
    if unknown:
        have = ", ".join(fields_) or "none"
        raise ElmanlabError(f"{fam.name} has no option {', '.join(unknown)} (its options: {have})")
    clean = {}
    for k, v in values.items():
        choices = fields_[k].metadata.get("choices")
        if choices and v not in choices:
            raise ElmanlabError(f"{fam.name} option {k} must be one of {', '.join(choices)}, got {v!r}")
        clean[k] = v
    return fam.Options(**clean)
