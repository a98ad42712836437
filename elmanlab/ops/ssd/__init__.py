"""Mamba2 SSD scan. Fast path: mamba_ssm's Triton ``mamba_chunk_scan_combined`` when installed."""
from __future__ import annotations

from elmanlab.ops._dispatch import fast_path_enabled
from elmanlab.ops.ssd.reference import ssd_chunked, ssd_sequential

from elmanlab.ops.ssd import fast as _fast

# CUDA fast path; it imports its kernel library on the first CUDA call (see fast.py).
FAST_IMPLS: dict = {"default": _fast.ssd_fast}


def ssd(x, dt, A, Bm, Cm, D=None, initial_state=None, chunk_size: int = 64):
    """x [B,T,H,P], dt [B,T,H] (positive), A [H], Bm/Cm [B,T,G,N], D [H] -> (y, final_state [B,H,P,N])."""
    impl = FAST_IMPLS.get("default")
    if impl is not None and fast_path_enabled(x):
        return impl(x, dt, A, Bm, Cm, D, initial_state, chunk_size)
    return ssd_chunked(x, dt, A, Bm, Cm, D, initial_state, chunk_size)


__all__ = ["ssd", "ssd_chunked", "ssd_sequential", "FAST_IMPLS"]
