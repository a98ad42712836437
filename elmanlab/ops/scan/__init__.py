"""Diagonal linear scan h_t = a_t h_{t-1} + b_t for minGRU and minLSTM.

Two entry points:

* :func:`linear_scan` (a, b given) -- the generic contract.
* :func:`minrnn_scan` (the raw projection given) -- the gates of minGRU / minLSTM computed inside
  the scan. On CUDA both run elmanlab's Triton scan (``triton_scan.py``, imported on the first
  CUDA call), which keeps only the projection for the backward; elsewhere the log-space reference.
"""
from __future__ import annotations

from elmanlab.ops._dispatch import REFERENCE, fast_path_enabled, record, reference_info, reference_reason, up
from elmanlab.ops.scan.reference import linear_scan_parallel, linear_scan_sequential, minrnn_coefficients
from elmanlab.ops.scan import fast as _fast

FAST_IMPLS: dict = {"default": _fast.linear_scan_fast, "minrnn": _fast.minrnn_scan_fast}


def linear_scan(a, b, h0=None):
    """a, b [B, T, D]; h0 [B, D] or None -> (h [B, T, D], h_T [B, D])."""
    impl = FAST_IMPLS.get("default")
    if impl is not None and fast_path_enabled(b):
        return impl(a, b, h0)
    record("scan", REFERENCE, False)
    return linear_scan_parallel(a, b, h0)


def minrnn_scan(p, kind: str, h0=None):
    """p [B, T, n D] raw projection (minGRU n = 2: [h~, z]; minLSTM n = 3: [f, i, h~]); h0 [B, D].

    Returns (h [B, T, D], h_T [B, D] float32). The reference computes the coefficients in float32
    and calls :func:`linear_scan`; the fast path returns h in p's dtype (float32 arithmetic inside).
    """
    impl = FAST_IMPLS.get("minrnn")
    if impl is not None and fast_path_enabled(p):
        return impl(p, kind, h0)
    pf = up(p)
    a, b = minrnn_coefficients(pf, kind)
    return linear_scan(a, b, h0)


def backend_info() -> dict:
    """What :func:`linear_scan` and :func:`minrnn_scan` run on this machine: ``{"path", "fast",
    "reason"}`` and ``"fix"`` when not fast (on CUDA this imports triton)."""
    reason = reference_reason()
    return _fast.backend_info() if reason is None else reference_info(reason)


__all__ = ["linear_scan", "minrnn_scan", "linear_scan_parallel", "linear_scan_sequential",
           "minrnn_coefficients", "backend_info", "FAST_IMPLS"]
