"""Gated delta rule (Gated DeltaNet). Fast path: flash-linear-attention's chunk kernel."""
from __future__ import annotations

from elmanlab.ops._dispatch import fast_path_enabled
from elmanlab.ops.delta.reference import gated_delta_rule_chunked, gated_delta_rule_recurrent

from elmanlab.ops.delta import fast as _fast

# CUDA fast path; it imports its kernel library on the first CUDA call (see fast.py).
FAST_IMPLS: dict = {"default": _fast.gated_delta_rule_fast}


def gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None):
    """q, k [B,T,H,K]; v [B,T,H,V]; g, beta [B,T,H] -> (o [B,T,H,V], state [B,H,K,V])."""
    impl = FAST_IMPLS.get("default")
    if impl is not None and fast_path_enabled(q):
        return impl(q, k, v, g, beta, scale, initial_state)
    return gated_delta_rule_chunked(q, k, v, g, beta, scale, initial_state)


__all__ = ["gated_delta_rule", "gated_delta_rule_chunked", "gated_delta_rule_recurrent", "FAST_IMPLS"]
