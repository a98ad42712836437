"""Diagonal linear scan h_t = a_t h_{t-1} + b_t for minGRU and minLSTM."""
from __future__ import annotations

from elmanlab.ops._dispatch import fast_path_enabled
from elmanlab.ops.scan.reference import linear_scan_parallel, linear_scan_sequential

FAST_IMPLS: dict = {}


def linear_scan(a, b, h0=None):
    """a, b [B, T, D]; h0 [B, D] or None -> (h [B, T, D], h_T [B, D])."""
    impl = FAST_IMPLS.get("default")
    if impl is not None and fast_path_enabled(b):
        return impl(a, b, h0)
    return linear_scan_parallel(a, b, h0)


__all__ = ["linear_scan", "linear_scan_parallel", "linear_scan_sequential", "FAST_IMPLS"]
