"""CUDA fast path of the SSD scan: mamba_ssm's Triton ``mamba_chunk_scan_combined``.

mamba_ssm is imported on the first CUDA call, never at import time. ``import mamba_ssm`` itself
needs its compiled ``selective_scan_cuda`` extension (and pulls in every module of the package);
the SSD kernels are pure Triton, so when that import fails the package is loaded without running
its ``__init__`` (a bare package object over the installed folder) and only the Triton modules
are imported from it. No stand-in for the CUDA extension is created.
Where mamba_ssm is not installed the reference runs (with one warning); ``elmanlab doctor`` says so.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types
import warnings

from elmanlab.ops._dispatch import REFERENCE, record

NAME = "mamba_ssm Triton mamba_chunk_scan_combined"
NORM_NAME = "mamba_ssm Triton rmsnorm_fn (gated)"
FIX = "install mamba_ssm and its Triton kernels: scripts/install-gpu.sh"
_MODS: dict | None = None
_ERR: str | None = None


def _import_triton_modules():
    names = ("mamba_ssm.ops.triton.ssd_combined", "mamba_ssm.ops.triton.layernorm_gated")
    try:
        return {n.rsplit(".", 1)[1]: importlib.import_module(n) for n in names}
    except ImportError:
        spec = importlib.util.find_spec("mamba_ssm") if "mamba_ssm" not in sys.modules else None
        if spec is None or not spec.submodule_search_locations:
            raise
        pkg = types.ModuleType("mamba_ssm")
        pkg.__path__ = list(spec.submodule_search_locations)
        pkg.__spec__ = spec
        pkg.__file__ = spec.origin
        sys.modules["mamba_ssm"] = pkg
        try:
            return {n.rsplit(".", 1)[1]: importlib.import_module(n) for n in names}
        except Exception:
            sys.modules.pop("mamba_ssm", None)
            raise


def _load():
    global _MODS, _ERR
    if _MODS is None and _ERR is None:
        try:
            _MODS = _import_triton_modules()
        except Exception as e:
            _ERR = f"{type(e).__name__}: {e}".splitlines()[0]
            warnings.warn(f"elmanlab: mamba_ssm's SSD kernels unavailable ({_ERR}); Mamba2 uses the "
                          "plain-PyTorch SSD (slow). Install the GPU extra: scripts/install-gpu.sh",
                          stacklevel=3)
    return _MODS


def backend_info() -> dict:
    """{'path', 'fast', 'reason'} (+ 'fix' when not fast) of the CUDA path; imports mamba_ssm (call
    on CUDA machines)."""
    mods = _load()
    if mods is None:
        return {"path": REFERENCE, "fast": False, "reason": f"mamba_ssm not usable: {_ERR}", "fix": FIX}
    return {"path": NAME, "fast": True, "reason": "mamba_ssm Triton SSD importable"}


def norm_backend_info() -> dict:
    """The same for the gated RMSNorm (mamba_ssm's fused kernel, else the layer's own module)."""
    mods = _load()
    if mods is None:
        return {"path": REFERENCE, "fast": False, "reason": f"mamba_ssm not usable: {_ERR}", "fix": FIX}
    return {"path": NORM_NAME, "fast": True, "reason": "mamba_ssm Triton layernorm_gated importable"}


def ssd_fast(x, dt, A, Bm, Cm, D=None, initial_state=None, chunk_size: int = 64, dt_bias=None,
             dt_softplus: bool = False):
    mods = _load()
    if mods is None or x.shape[1] == 0:
        from elmanlab.ops.ssd.reference import ssd_chunked, step_size
        if x.shape[1]:                  # an empty sequence computes nothing: not recorded
            record("ssd", REFERENCE, False)
        return ssd_chunked(x, step_size(dt, dt_bias, dt_softplus), A, Bm, Cm, D, initial_state, chunk_size)
    record("ssd", NAME, True)
    y, final = mods["ssd_combined"].mamba_chunk_scan_combined(
        x, dt, A, Bm, Cm, chunk_size, D=D, dt_bias=dt_bias, dt_softplus=dt_softplus,
        initial_states=initial_state, return_final_states=True)
    return y, final


def gated_rmsnorm_fast(x, z, weight, eps: float, gate_after: bool):
    """RMSNorm of x * silu(z) (gate_after False) or RMSNorm(x) * silu(z) (True) over the last dim,
    mamba_ssm's fused Triton kernel; None when mamba_ssm is not usable (the caller then runs its own)."""
    mods = _load()
    if mods is None:
        return None
    record("gated_rmsnorm", NORM_NAME, True)
    return mods["layernorm_gated"].rmsnorm_fn(x, weight, None, z=z, eps=eps, group_size=None,
                                              norm_before_gate=gate_after)
