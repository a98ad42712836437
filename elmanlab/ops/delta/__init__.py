"""Gated delta rule (Gated DeltaNet). Fast path: flash-linear-attention's chunk kernel."""
from __future__ import annotations

from elmanlab.ops._dispatch import REFERENCE, fast_path_enabled, record, reference_info, reference_reason, up, up_opt
from elmanlab.ops.delta.reference import (gated_delta_rule_chunked, gated_delta_rule_recurrent, gdn_chunked,
                                          gdn_inputs)

from elmanlab.ops.delta import fast as _fast

# CUDA fast path; it imports its kernel library on the first CUDA call (see fast.py).
FAST_IMPLS: dict = {"default": _fast.gated_delta_rule_fast, "gdn": _fast.gdn_fast}


def gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None):
    """q, k [B,T,H,K]; v [B,T,H,V]; g, beta [B,T,H] -> (o [B,T,H,V], state [B,H,K,V])."""
    impl = FAST_IMPLS.get("default")
    if impl is not None and fast_path_enabled(q):
        return impl(q, k, v, g, beta, scale, initial_state)
    record("delta", REFERENCE, False)
    o, S = gated_delta_rule_chunked(up(q), up(k), up(v), up(g), up(beta), scale, up_opt(initial_state))
    return o.to(v.dtype), S


def gdn(q, k, v, a, b, A_log, dt_bias, scale=None, initial_state=None):
    """The gated delta rule from Gated DeltaNet's raw layer outputs (see ``gdn_inputs``): q, k
    [B,T,H,K] before L2 normalisation, v [B,T,H,V], a (decay logits) and b (beta logits) [B,T,H],
    A_log, dt_bias [H] -> (o [B,T,H,V], state [B,H,K,V]). On CUDA fla applies the normalisation, the
    decay and the sigmoid inside its kernels."""
    impl = FAST_IMPLS.get("gdn")
    if impl is not None and fast_path_enabled(q):
        return impl(q, k, v, a, b, A_log, dt_bias, scale, initial_state)
    record("delta", REFERENCE, False)
    # in at least float32, like fla's kernels (a bf16 model, precision: bf16, gives bf16 inputs); o in
    # v's dtype, the state in float32
    o, S = gdn_chunked(up(q), up(k), up(v), a, b, A_log, dt_bias, scale, up_opt(initial_state))
    return o.to(v.dtype), S


def backend_info() -> dict:
    """What :func:`gated_delta_rule` and :func:`gdn` run on this machine: ``{"path", "fast",
    "reason"}`` and ``"fix"`` when not fast (on CUDA this imports fla)."""
    reason = reference_reason()
    return _fast.backend_info() if reason is None else reference_info(reason)


def short_conv_info() -> dict:
    """What the layers' short causal conv + SiLU runs here (fla's Triton causal_conv1d on CUDA)."""
    reason = reference_reason()
    return _fast.conv_backend_info() if reason is None else reference_info(reason)


def rms_norm_gated_info() -> dict:
    """What GDN's gated RMSNorm runs here (fla's fused rms_norm_gated on CUDA)."""
    reason = reference_reason()
    return _fast.norm_backend_info() if reason is None else reference_info(reason)


__all__ = ["gated_delta_rule", "gated_delta_rule_chunked", "gated_delta_rule_recurrent", "gdn", "gdn_chunked",
           "gdn_inputs", "backend_info", "short_conv_info", "rms_norm_gated_info", "FAST_IMPLS"]
