"""CUDA fast path of the gated delta rule: flash-linear-attention's ``chunk_gated_delta_rule``.

fla is imported on the first CUDA call, never at import time.

fla 0.6.0 computes a wrong gated chunk backward with Triton >= 3.4.0 and < 3.7.1 on Hopper GPUs
(fla issue #640) and refuses it there, unless its TileLang backend can take that kernel (TileLang
installed, an nvcc for its JIT, not disabled by FLA_TILELANG=0). This module checks the same
conditions with fla's own flags before a step that needs gradients, and raises a one-line
ElmanlabError naming the fix instead of letting a training step start; it never falls back to a
backward known to be wrong. The forward alone (evaluation, generation) is unaffected.
"""
from __future__ import annotations

import warnings

import torch

from elmanlab.errors import ElmanlabError
from elmanlab.ops._dispatch import REFERENCE, record

NAME = "fla chunk_gated_delta_rule"
CONV_NAME = "fla causal_conv1d"
NORM_NAME = "fla rms_norm_gated"
FIX = "install fla and its Triton kernels: scripts/install-gpu.sh"
_FLA: dict | None = None
_ERR: str | None = None
_BWD: tuple | None = None          # (ok, backend name or error message)


def _load():
    global _FLA, _ERR
    if _FLA is None and _ERR is None:
        try:
            from fla.ops.gated_delta_rule import chunk_gated_delta_rule
            from fla.modules.causal_conv1d import causal_conv1d
            from fla.modules.fused_norm_gate import rms_norm_gated
            _FLA = {"chunk_gated_delta_rule": chunk_gated_delta_rule, "causal_conv1d": causal_conv1d,
                    "rms_norm_gated": rms_norm_gated}
        except Exception as e:
            _ERR = f"{type(e).__name__}: {e}".splitlines()[0]
            warnings.warn(f"elmanlab: flash-linear-attention unavailable ({_ERR}); Gated DeltaNet uses "
                          "the plain-PyTorch chunked reference (slow). Install the GPU extra: "
                          "scripts/install-gpu.sh", stacklevel=3)
    return _FLA


def backward_backend() -> tuple[bool, str]:
    """(usable, description) of the backend fla will use for the gated chunk backward here."""
    global _BWD
    if _BWD is not None:
        return _BWD
    if _load() is None:
        _BWD = (False, f"fla not usable: {_ERR}")
        return _BWD
    from fla.utils import IS_NVIDIA_HOPPER, TRITON_ABOVE_3_4_0, TRITON_ABOVE_3_7_1
    import triton
    broken_triton = IS_NVIDIA_HOPPER and TRITON_ABOVE_3_4_0 and not TRITON_ABOVE_3_7_1
    if not broken_triton:
        _BWD = (True, f"Triton {triton.__version__}")
        return _BWD
    try:
        from fla.ops.common.backends.tilelang import CommonTileLangBackend
        tl_ok = CommonTileLangBackend.is_available() and CommonTileLangBackend().is_enabled()
    except Exception:  # fla's backend module itself failed to import
        tl_ok = False
    if tl_ok:
        import importlib.metadata as md
        try:
            v = md.version("tilelang")
        except md.PackageNotFoundError:
            v = "?"
        _BWD = (True, f"TileLang {v} (Triton {triton.__version__} is wrong here, fla #640)")
    else:
        _BWD = (False, f"Hopper GPU with Triton {triton.__version__}: fla's gated backward is wrong with "
                       "Triton 3.4.0-3.7.0 (fla #640) and TileLang is not usable. Fix: install TileLang "
                       "(scripts/install-gpu.sh installs it offline from the wheelhouse; needs nvcc and "
                       "FLA_TILELANG not 0) or Triton >= 3.7.1")
    return _BWD


def _path() -> str:
    """The path name of fla's kernel here (which backend its backward takes, or that training is
    refused): the same in backend_info and in the record of what ran."""
    ok, what = backward_backend()
    return f"{NAME}, backward via {what}" if ok else f"{NAME} (forward only; training refused)"


def _unusable() -> dict:
    return {"path": REFERENCE, "fast": False, "reason": f"fla not usable: {_ERR}", "fix": FIX}


def backend_info() -> dict:
    """{'path', 'fast', 'reason'} (+ 'fix' when not fast) of the CUDA path; imports fla (call on
    CUDA machines). Where fla's backward is refused here the forward still runs fla's kernel (and
    is recorded as fast when it runs), but training raises: ``fast`` is False, with the fix."""
    if _load() is None:
        return _unusable()
    ok, what = backward_backend()
    if ok:
        return {"path": _path(), "fast": True, "reason": "fla importable"}
    # the forward runs fla's kernel, but a training step is refused: not a fast path to train on
    reason, _, fix = what.partition(". Fix: ")
    return {"path": _path(), "fast": False, "reason": reason, "fix": fix or FIX}


def conv_backend_info() -> dict:
    """The same for the layers' short causal conv + SiLU (fla's Triton causal_conv1d)."""
    if _load() is None:
        return _unusable()
    return {"path": CONV_NAME, "fast": True, "reason": "fla importable"}


def norm_backend_info() -> dict:
    """The same for GDN's gated RMSNorm (fla's fused rms_norm_gated)."""
    if _load() is None:
        return _unusable()
    return {"path": NORM_NAME, "fast": True, "reason": "fla importable"}


def gated_delta_rule_fast(q, k, v, g, beta, scale=None, initial_state=None):
    fla = _load()
    if fla is None or q.shape[1] == 0:
        from elmanlab.ops.delta.reference import gated_delta_rule_chunked
        if q.shape[1]:                  # an empty sequence computes nothing: not recorded
            record("delta", REFERENCE, False)
        return gated_delta_rule_chunked(q, k, v, g, beta, scale, initial_state)
    q, k, v = _guard_and_cast(q, k, v, g, beta, initial_state)
    record("delta", _path(), True)
    o, S = fla["chunk_gated_delta_rule"](
        q, k, v, g.float(), beta.to(q.dtype), scale=scale, initial_state=initial_state,
        output_final_state=True)
    return o, S


def _guard_and_cast(q, k, v, *others):
    """Refuse a step that needs fla's backward where that backward is wrong here (one-line error
    naming the fix); return q, k, v in one 16-bit dtype (q, k may come out of F.normalize in float32)."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, *others)):
        ok, what = backward_backend()
        if not ok:
            raise ElmanlabError(f"Gated DeltaNet cannot train on this machine: {what}")
    dt = next((t.dtype for t in (v, q, k) if t.dtype in (torch.bfloat16, torch.float16)), q.dtype)
    return q.to(dt), k.to(dt), v.to(dt)


def _fused_inputs_supported(fn) -> bool:
    """fla >= 0.6's chunk_gated_delta_rule takes the decay / beta transforms (earlier ones would
    swallow the keywords); the L2 normalisation in the kernel is older."""
    import inspect
    return "use_beta_sigmoid_in_kernel" in inspect.signature(fn).parameters


def gdn_fast(q, k, v, a, b, A_log, dt_bias, scale=None, initial_state=None):
    """Gated DeltaNet's rule from raw inputs (ops.delta.gdn) through fla, transforms in its kernels."""
    from elmanlab.ops.delta.reference import gdn_chunked, gdn_gates
    fla = _load()
    if fla is None or q.shape[1] == 0:
        if q.shape[1]:
            record("delta", REFERENCE, False)
        return gdn_chunked(q, k, v, a, b, A_log, dt_bias, scale, initial_state)
    q, k, v = _guard_and_cast(q, k, v, a, b, A_log, dt_bias, initial_state)
    record("delta", _path(), True)
    fn = fla["chunk_gated_delta_rule"]
    if "fused_inputs" not in fla:                  # inspect once, not on every layer call
        fla["fused_inputs"] = _fused_inputs_supported(fn)
    if fla["fused_inputs"]:
        return fn(q, k, v, a, b, scale=scale, initial_state=initial_state, output_final_state=True,
                  use_qk_l2norm_in_kernel=True, use_gate_in_kernel=True, A_log=A_log, dt_bias=dt_bias,
                  use_beta_sigmoid_in_kernel=True)
    g, beta = gdn_gates(a, b, A_log, dt_bias)
    return fn(q, k, v, g.float(), beta.to(q.dtype), scale=scale, initial_state=initial_state,
              output_final_state=True, use_qk_l2norm_in_kernel=True)


def short_conv_fast(x, weight, bias, activation: str | None):
    """Causal depthwise conv (weight [C, 1, K]) on x [B, T, C] with optional SiLU, fla's Triton
    kernel; no initial state (training / prefill). None when fla is not usable."""
    fla = _load()
    if fla is None:
        return None
    w = weight.squeeze(1).to(x.dtype)
    b = None if bias is None else bias.to(x.dtype)
    record("short_conv", CONV_NAME, True)
    y, _ = fla["causal_conv1d"](x, weight=w, bias=b, activation=activation)
    return y


def rms_norm_gated_fast(x, z, weight, eps: float):
    """RMSNorm(x) * weight * silu(z) over the last dim (fla's fused kernel); None without fla."""
    fla = _load()
    if fla is None:
        return None
    record("gated_rmsnorm", NORM_NAME, True)
    return fla["rms_norm_gated"](x, z, weight, None, activation="swish", eps=eps)
