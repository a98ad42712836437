"""E88 matrix-state scan (delta rule, decay, tanh or linear state, optional output gate)."""
from __future__ import annotations

from elmanlab.ops._dispatch import REFERENCE, fast_path_enabled, record, reference_info, reference_reason
from elmanlab.ops.e88.reference import apply_gate, e88_scan_ref

# The fast implementation, with the reference's signature. Registering compiles nothing: the
# CUDA kernel is built on the first CUDA call.
from elmanlab.ops.e88 import fused as _fused  # noqa: E402

FAST_IMPLS: dict = {"default": _fused.fast_e88}


def e88_scan(q, k, v, decay, S0=None, nonlinearity: str = "tanh", g=None,
             gate_activation: str = "silu"):
    """q, k [B,T,H,n]; v [B,T,H,m]; decay [B,T,H]; S0 [B,H,m,n] -> (y [B,T,H,m], S_T)."""
    impl = FAST_IMPLS.get("default")
    if impl is not None and fast_path_enabled(q):
        return impl(q, k, v, decay, S0, nonlinearity, g, gate_activation)
    record("e88", REFERENCE, False)
    return e88_scan_ref(q, k, v, decay, S0, nonlinearity, g, gate_activation)


def backend_info(*, n_state: int = 32, head_v_dim: int = 32) -> dict:
    """What :func:`e88_scan` runs here for bf16 heads of key dim ``n_state`` and value dim
    ``head_v_dim`` (default: E88's): ``{"path", "fast", "reason"}`` (and ``"fix"`` when not fast). On
    CUDA it builds the kernel once."""
    reason = reference_reason()
    if reason is None and "default" not in FAST_IMPLS:
        reason = "no fast E88 kernel registered"
    if reason is not None:
        return reference_info(reason)
    return _fused.backend_info(n_state, head_v_dim)


__all__ = ["e88_scan", "e88_scan_ref", "apply_gate", "backend_info", "FAST_IMPLS"]
