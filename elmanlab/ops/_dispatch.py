"""Choosing between a fast kernel and the plain-PyTorch reference, and saying which one runs."""
from __future__ import annotations

import contextlib
import os

import torch

# Keep Triton autotune results on disk (read when a kernel module is imported), so that every
# training process of a study does not tune mamba_ssm's and fla's Triton kernels again (about
# 2 minutes per process at 400M). TRITON_CACHE_AUTOTUNING=0 turns it off.
os.environ.setdefault("TRITON_CACHE_AUTOTUNING", "1")

_FORCE_REFERENCE = os.environ.get("ELMANLAB_REFERENCE", "") not in ("", "0", "false", "False")


def up(x: torch.Tensor) -> torch.Tensor:
    """At least float32 (float64 stays float64): recurrent math never runs in half precision."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def reference_forced() -> bool:
    return _FORCE_REFERENCE


@contextlib.contextmanager
def force_reference(enabled: bool = True):
    """Context manager (or plain call via ``set_force_reference``) that disables fast kernels."""
    global _FORCE_REFERENCE
    old = _FORCE_REFERENCE
    _FORCE_REFERENCE = enabled
    try:
        yield
    finally:
        _FORCE_REFERENCE = old


def set_force_reference(enabled: bool) -> None:
    global _FORCE_REFERENCE
    _FORCE_REFERENCE = enabled


def reference_reason() -> str | None:
    """Why every op runs its reference on this machine (no CUDA device, or the reference forced);
    None when the fast paths are in play. The first question of every folder's ``backend_info``."""
    if not torch.cuda.is_available():
        return "no CUDA device"
    if _FORCE_REFERENCE:
        return "ELMANLAB_REFERENCE is set"
    return None


def reference_info(reason: str) -> dict:
    """``backend_info``'s answer when the plain-PyTorch reference runs."""
    return {"path": "reference", "fast": False, "reason": reason}


def fast_path_enabled(*tensors: torch.Tensor) -> bool:
    """True when every tensor lives on CUDA and the reference is not forced."""
    if _FORCE_REFERENCE:
        return False
    return all(t is None or t.is_cuda for t in tensors)
