"""CUDA fast path of the diagonal scan: elmanlab's own Triton kernel (``triton_scan.py``).

Nothing here imports triton at import time: the kernel module is loaded on the first CUDA call.
Where triton cannot be imported the reference runs instead (with one warning), since the
reference is exact; ``elmanlab doctor`` shows which path a machine takes.
"""
from __future__ import annotations

import warnings

from elmanlab.ops._dispatch import REFERENCE, record

NAME = "elmanlab Triton scan (gates fused, state recomputed in backward)"
FIX = "install triton (it comes with torch's CUDA wheels): scripts/install-gpu.sh"
_MOD = None
_ERR: str | None = None


def _load():
    global _MOD, _ERR
    if _MOD is None and _ERR is None:
        try:
            from elmanlab.ops.scan import triton_scan
            _MOD = triton_scan
        except Exception as e:  # ImportError, or triton failing to initialise
            _ERR = f"{type(e).__name__}: {e}".splitlines()[0]
            warnings.warn(f"elmanlab: Triton scan unavailable ({_ERR}); minGRU/minLSTM use the "
                          "log-space reference (slow, memory-hungry). Install triton.", stacklevel=3)
    return _MOD


def backend_info() -> dict:
    """{'path', 'fast', 'reason'} of the CUDA path; imports triton (call on CUDA machines)."""
    mod = _load()
    if mod is None:
        return {"path": REFERENCE, "fast": False, "reason": f"triton not usable: {_ERR}", "fix": FIX}
    return {"path": NAME, "fast": True, "reason": "triton importable"}


def linear_scan_fast(a, b, h0=None):
    mod = _load()
    if mod is None:
        from elmanlab.ops.scan.reference import linear_scan_parallel
        record("scan", REFERENCE, False)
        return linear_scan_parallel(a, b, h0)
    record("scan", NAME, True)
    return mod.linear_scan_triton(a, b, h0)


def minrnn_scan_fast(p, kind, h0=None):
    mod = _load()
    if mod is None:
        from elmanlab.ops.scan.reference import linear_scan_parallel, minrnn_coefficients
        a, b = minrnn_coefficients(p.float(), kind)
        record("scan", REFERENCE, False)
        return linear_scan_parallel(a, b, h0)
    record("scan", NAME, True)
    return mod.minrnn_scan_triton(p, kind, h0)
