"""Layer families, one module per family, all following :class:`~elmanlab.layers.base.RecurrentLayer`."""
from __future__ import annotations

from elmanlab.errors import ElmanlabError
from elmanlab.layers.base import RecurrentLayer
from elmanlab.layers.e88 import E88
from elmanlab.layers.elman import E1, E33, E42
from elmanlab.layers.gdn import GDN
from elmanlab.layers.mamba2 import Mamba2
from elmanlab.layers.minrnn import MinGRU, MinLSTM
from elmanlab.layers.transformer import Transformer

FAMILIES: dict[str, type[RecurrentLayer]] = {
    cls.name: cls for cls in (E1, E33, E42, E88, Mamba2, GDN, MinGRU, MinLSTM, Transformer)
}
ALIASES = {"fla-gdn": "gdn", "gated-deltanet": "gdn", "min-gru": "mingru", "min-lstm": "minlstm"}


def get_family(name: str) -> type[RecurrentLayer]:
    key = ALIASES.get(name.lower(), name.lower())
    if key not in FAMILIES:
        raise ElmanlabError(f"unknown model {name!r}; choose one of: {', '.join(FAMILIES)}")
    return FAMILIES[key]


__all__ = ["FAMILIES", "get_family", "RecurrentLayer", "E1", "E33", "E42", "E88", "Mamba2", "GDN",
           "MinGRU", "MinLSTM", "Transformer"]
