"""Elman recurrences: h_t = act(wx_t + W_h h_{t-1} + b), act in {tanh, linear}.

:func:`elman_scan` is the entry point the layers call. On CUDA it uses the fastest available
correct path (a fused kernel when one is installed); elsewhere the reference.
"""
from __future__ import annotations

import torch

from elmanlab.ops._dispatch import REFERENCE, fast_path_enabled, record, reference_info, reference_reason
from elmanlab.ops.elman.reference import elman_scan_ref

# Fast implementations, keyed by nonlinearity: callable (wx, W_h, b, h0) -> (h, h_T).
# Registering imports no CUDA toolchain: the kernel is compiled on the first CUDA call.
from elmanlab.ops.elman import fused as _fused  # noqa: E402

FAST_IMPLS: dict = {"tanh": _fused.fast_tanh, "linear": _fused.fast_linear}


def elman_scan(wx: torch.Tensor, W_h: torch.Tensor, b: torch.Tensor | None = None,
               h0: torch.Tensor | None = None, nonlinearity: str = "tanh"):
    """wx [B, T, D], W_h [D, D], b [D] or None, h0 [B, D] or None -> (h [B, T, D], h_T [B, D])."""
    if fast_path_enabled(wx) and nonlinearity in FAST_IMPLS:
        return FAST_IMPLS[nonlinearity](wx, W_h, b, h0)
    record("elman", REFERENCE, False)
    return elman_scan_ref(wx, W_h, b, h0, nonlinearity)


def backend_info(*, d_inner: int = 1760, nonlinearity: str = "tanh") -> dict:
    """What :func:`elman_scan` runs here for bf16 inputs of width ``d_inner`` (default: E1's at
    400M): ``{"path", "fast", "reason"}`` (and ``"fix"`` when not fast). On CUDA it builds the
    persistent kernel once; a bad ELMANLAB_ELMAN_IMPL is an ElmanlabError."""
    reason = reference_reason()
    if reason is None and nonlinearity not in FAST_IMPLS:
        reason = f"no fast Elman kernel registered for {nonlinearity}"
    if reason is not None:
        return reference_info(reason)
    return _fused.backend_info(d_inner, nonlinearity)


__all__ = ["elman_scan", "elman_scan_ref", "backend_info", "FAST_IMPLS"]
