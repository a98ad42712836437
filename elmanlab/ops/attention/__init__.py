"""Causal softmax attention (the transformer family). Fast path: torch's flash SDPA on CUDA.

:func:`attention` takes ``[B, T, H, D]`` tensors; with a KV cache the queries sit at positions
``q_offset .. q_offset + Tq - 1`` of keys ``0 .. Tk - 1``. It is stateless: the layer keeps the
cache. On CUDA see ``fast.py`` (training-shaped calls run the flash backend and nothing else);
elsewhere, or with ``ELMANLAB_REFERENCE=1``, the plain-PyTorch reference.
"""
from __future__ import annotations

from elmanlab.ops._dispatch import REFERENCE, fast_path_enabled, record, reference_info, reference_reason
from elmanlab.ops.attention.reference import attention_ref, causal_mask

from elmanlab.ops.attention import fast as _fast

FAST_IMPLS: dict = {"default": _fast.attention_cuda}


def attention(q, k, v, q_offset: int = 0, scale: float | None = None):
    """q [B, Tq, H, D], k, v [B, Tk, H, D] -> o [B, Tq, H, D] (q's dtype; under autocast the
    autocast dtype on CUDA). Causal: query i sees keys 0 .. q_offset + i. ``q_offset`` is a Python
    int (the cache length), ``scale`` default D ** -0.5."""
    impl = FAST_IMPLS.get("default")
    if impl is not None and fast_path_enabled(q):
        return impl(q, k, v, q_offset, scale)
    record("attention", REFERENCE, False)
    return attention_ref(q, k, v, q_offset, scale)


def backend_info(*, head_dim: int = 64) -> dict:
    """What :func:`attention` runs on this machine for bf16 inputs of ``head_dim`` (training's
    precision): ``{"path", "fast", "reason"}`` and ``"fix"`` when not fast. On CUDA it runs one small
    flash forward + backward per head_dim to make sure."""
    reason = reference_reason()
    return _fast.backend_info(head_dim) if reason is None else reference_info(reason)


__all__ = ["attention", "attention_ref", "causal_mask", "backend_info", "FAST_IMPLS"]
