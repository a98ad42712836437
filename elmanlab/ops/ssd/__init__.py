"""Mamba2 SSD scan. Fast path: mamba_ssm's Triton ``mamba_chunk_scan_combined`` when installed."""
from __future__ import annotations

from elmanlab.ops._dispatch import REFERENCE, fast_path_enabled, record, reference_info, reference_reason, up, up_opt
from elmanlab.ops.ssd.reference import ssd_chunked, ssd_sequential, step_size

from elmanlab.ops.ssd import fast as _fast

# CUDA fast path; it imports its kernel library on the first CUDA call (see fast.py).
FAST_IMPLS: dict = {"default": _fast.ssd_fast}


def ssd(x, dt, A, Bm, Cm, D=None, initial_state=None, chunk_size: int = 64, dt_bias=None,
        dt_softplus: bool = False):
    """x [B,T,H,P], dt [B,T,H], A [H], Bm/Cm [B,T,G,N], D [H] -> (y, final_state [B,H,P,N]).

    The step size is softplus(dt + dt_bias) with ``dt_softplus`` (dt_bias [H] optional), else dt
    itself (positive); the fast kernel applies the bias and softplus in its own float32 pass.
    """
    impl = FAST_IMPLS.get("default")
    if impl is not None and fast_path_enabled(x):
        return impl(x, dt, A, Bm, Cm, D, initial_state, chunk_size, dt_bias, dt_softplus)
    record("ssd", REFERENCE, False)
    # in at least float32, like the kernel (a bf16 model, precision: bf16, gives bf16 inputs; under
    # autocast the einsums still run in bf16); y in x's dtype, the state in float32
    y, state = ssd_chunked(up(x), step_size(dt, dt_bias, dt_softplus), up(A), up(Bm), up(Cm), up_opt(D),
                           up_opt(initial_state), chunk_size)
    return y.to(x.dtype), state


def backend_info() -> dict:
    """What :func:`ssd` runs on this machine: ``{"path", "fast", "reason"}`` and ``"fix"`` when not
    fast (on CUDA this imports mamba_ssm)."""
    reason = reference_reason()
    return _fast.backend_info() if reason is None else reference_info(reason)


def gated_rmsnorm_info() -> dict:
    """What Mamba2's gated RMSNorm runs here (mamba_ssm's fused kernel on CUDA), as backend_info."""
    reason = reference_reason()
    return _fast.norm_backend_info() if reason is None else reference_info(reason)


__all__ = ["ssd", "ssd_chunked", "ssd_sequential", "step_size", "backend_info", "gated_rmsnorm_info", "FAST_IMPLS"]
