"""CUDA path of causal attention: torch's ``scaled_dot_product_attention``.

Training-shaped calls (no KV-cache offset, as many queries as keys) run FlashAttention through SDPA
restricted to its flash backend (``torch.nn.attention.sdpa_kernel``): a call flash does not take
raises instead of silently running another backend. Calls at a KV-cache offset (generation) run
SDPA with an explicit causal mask (PyTorch picks the memory-efficient or math backend; a single
query over the whole cache needs no mask), recorded as such. Where flash cannot run at all (a GPU
older than sm_80, a head_dim it does not take, float32 inputs outside autocast, flash switched off
in torch, or the probe of ``backend_info`` failing) the reference runs, recorded as the reference,
as ``backend_info`` predicts; training stops on that before step 1 unless --allow-reference.
Nothing here synchronises with the host: the step can be captured as a CUDA graph.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from elmanlab.ops._build import device_index
from elmanlab.ops._dispatch import REFERENCE, record
from elmanlab.ops.attention.reference import attention_ref, causal_mask

NAME = "flash"                                   # torch SDPA, flash backend only, is_causal
CACHED = "sdpa masked (KV cache)"                # generation: queries at a cache offset
HEAD_FIX = "use --head-dim 64 or 128 (flash attention takes a multiple of 8, at most 256)"
GPU_FIX = "run on an sm_80 or newer GPU (A100, H100, H200), or add --allow-reference"
FLAG_FIX = "re-enable it (torch.backends.cuda.enable_flash_sdp(True))"
DTYPE_FIX = "run under bf16 autocast, as training, evaluation and generation do"
FLASH_DTYPES = (torch.bfloat16, torch.float16)   # what flash takes (float32 outside autocast: the reference)
_CAP: dict = {}                                  # device index -> (major, minor)
_PROBE: dict = {}                                # (device index, head_dim) -> None (ran) or the error


def _capability(idx: int) -> tuple[int, int]:
    if idx not in _CAP:
        _CAP[idx] = tuple(torch.cuda.get_device_capability(idx))
    return _CAP[idx]


def flash_status(head_dim: int, device=None) -> tuple[bool, str, str | None]:
    """(flash can run, why (not), the fix) for bf16 inputs of ``head_dim`` on ``device``; static
    checks only (and the result of an earlier probe), cheap enough for every call."""
    if not torch.backends.cuda.flash_sdp_enabled():
        return False, "torch's flash SDPA backend is switched off", FLAG_FIX
    if head_dim % 8 or head_dim > 256:
        return False, f"flash attention does not take head_dim {head_dim}", HEAD_FIX
    idx = device_index(device)
    major, minor = _capability(idx)
    if major < 8:
        return False, f"flash attention needs sm_80 or newer, this GPU is sm_{major}{minor}", GPU_FIX
    err = _PROBE.get((idx, head_dim))
    if err is not None:
        return False, f"flash SDPA failed at head_dim {head_dim}: {err}", HEAD_FIX
    return True, f"torch {torch.__version__.split('+')[0]} flash SDPA, head_dim {head_dim}, bf16", None


def probe(head_dim: int, device=None) -> str | None:
    """One small bf16 flash forward + backward at ``head_dim`` (once per device and head_dim):
    None when it ran, else the error's first line (flash then counts as unavailable)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    idx = device_index(device)
    key = (idx, head_dim)
    if key not in _PROBE:
        try:
            x = torch.randn(1, 2, 64, head_dim, device=f"cuda:{idx}", dtype=torch.bfloat16, requires_grad=True)
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                y = F.scaled_dot_product_attention(x, x, x, is_causal=True)
            y.float().sum().backward()
            torch.cuda.synchronize(idx)
            _PROBE[key] = None
        except RuntimeError as e:
            _PROBE[key] = f"{type(e).__name__}: {e}".splitlines()[0][:200]
    return _PROBE[key]


def backend_info(head_dim: int) -> dict:
    """What :func:`attention` runs for bf16 inputs at ``head_dim`` on this CUDA machine (probes
    flash once per head_dim)."""
    ok, reason, fix = flash_status(head_dim)
    if ok and probe(head_dim) is not None:
        ok, reason, fix = flash_status(head_dim)
    if not ok:
        return {"path": REFERENCE, "fast": False, "reason": reason, "fix": fix}
    return {"path": NAME, "fast": True, "reason": reason}


def _compute_dtype(q: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled("cuda"):
        return torch.get_autocast_dtype("cuda")
    return q.dtype


def attention_cuda(q, k, v, q_offset: int = 0, scale: float | None = None):
    """:func:`elmanlab.ops.attention.attention` on CUDA tensors (see the module docstring)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    dt = _compute_dtype(q)
    if dt not in FLASH_DTYPES or not flash_status(q.shape[-1], q.device)[0]:
        record("attention", REFERENCE, False)
        return attention_ref(q, k, v, q_offset, scale)
    Tq, Tk = q.shape[1], k.shape[1]
    qt, kt, vt = (t.transpose(1, 2).to(dt) for t in (q, k, v))          # [B, H, T, D]
    if q_offset == 0 and Tq == Tk:
        record("attention", NAME, True)
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            o = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, scale=scale)
    else:
        record("attention", CACHED, True)
        mask = None if (Tq == 1 and q_offset + 1 >= Tk) else causal_mask(Tq, Tk, q_offset, q.device)
        o = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, scale=scale)
    return o.transpose(1, 2)
