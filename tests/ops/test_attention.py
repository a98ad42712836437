"""Causal attention (ops/attention): the reference against softmax attention written out query by
query (float64), the KV-cache offset, what each call records; the CUDA path's glue (flash for
training-shaped calls, the masked SDPA at a cache offset) on the CPU with SDPA standing in for the
GPU kernels; backend_info's answers on a pretend GPU; on the GPU (marked ``gpu``, skipped without
CUDA) flash in bf16 against the float64 reference, forward and every gradient."""
import pytest
import torch

from conftest import rel_err
from elmanlab.ops import implementations_used, reset_implementations_used
from elmanlab.ops.attention import attention, attention_ref, backend_info
from elmanlab.ops.attention import fast as attn_fast
from op_checks import D64, DEV, LENGTHS, REF, _check, _fresh_record, one  # noqa: F401 (an autouse fixture)



def qkv(B, T, H, D, seed, dtype=D64, Tk=None):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, D, generator=g, dtype=dtype)
    k = torch.randn(B, Tk or T, H, D, generator=g, dtype=dtype)
    v = torch.randn(B, Tk or T, H, D, generator=g, dtype=dtype)
    return q, k, v


def written_out(q, k, v, q_offset=0):
    """Softmax attention one query at a time: query i (position q_offset + i) over keys 0..q_offset+i."""
    B, Tq, H, D = q.shape
    out = torch.empty_like(q)
    for i in range(Tq):
        n = min(q_offset + i + 1, k.shape[1])
        s = torch.einsum("bhd,bkhd->bhk", q[:, i], k[:, :n]) / D ** 0.5
        out[:, i] = torch.einsum("bhk,bkhd->bhd", torch.softmax(s, dim=-1), v[:, :n])
    return out


@pytest.mark.parametrize("T", LENGTHS)
def test_reference_equals_attention_written_out(T):
    q, k, v = qkv(2, T, 3, 8, T)
    assert rel_err(attention_ref(q, k, v), written_out(q, k, v)) < 1e-12


@pytest.mark.parametrize("T,cut", [(7, 3), (63, 62), (130, 1), (33, 0)])
def test_cache_offset_equals_the_tail_of_full_attention(T, cut):
    """Queries at positions cut..T-1 over all T keys (a KV cache of cut positions) give the tail of
    one causal pass: the reference and the op (the reference on CPU)."""
    q, k, v = qkv(2, T, 2, 16, T + cut)
    full = attention(q, k, v)
    tail = attention(q[:, cut:], k, v, q_offset=cut)
    assert rel_err(tail, full[:, cut:]) < 1e-12
    assert rel_err(attention_ref(q[:, cut:], k, v, cut), written_out(q[:, cut:], k, v, cut)) < 1e-12


def test_gradients_equal_the_written_out_definition():
    q, k, v = (t.requires_grad_() for t in qkv(2, 19, 2, 8, 3))
    g = torch.randn(2, 19, 2, 8, generator=torch.Generator().manual_seed(9), dtype=D64)
    got = torch.autograd.grad((attention(q, k, v) * g).sum(), [q, k, v])
    want = torch.autograd.grad((written_out(q, k, v) * g).sum(), [q, k, v])
    for a, b in zip(got, want):
        assert rel_err(a, b) < 1e-12
    assert torch.autograd.gradcheck(lambda q, k, v: attention_ref(q, k, v, 2),
                                    [t.detach()[:1, 2:6, :1, :4].clone().requires_grad_() if i == 0 else
                                     t.detach()[:1, :6, :1, :4].clone().requires_grad_() for i, t in
                                     enumerate((q, k, v))])


def test_cpu_runs_and_records_the_reference():
    q, k, v = qkv(1, 9, 2, 8, 0, dtype=torch.float32)
    out = attention(q, k, v)
    assert out.dtype == torch.float32 and implementations_used() == {"attention": REF}
    info = backend_info(head_dim=64)
    if not torch.cuda.is_available():
        assert info == {"path": "reference", "fast": False, "reason": "no CUDA device",
                        "fix": "run on a CUDA GPU (the fast kernels are CUDA-only)"}


# ---------------------------------------------------------------- the CUDA path's glue, on the CPU

@pytest.fixture
def sdpa_on_cpu(monkeypatch):
    """The CUDA path run on CPU tensors: the dispatch told the tensors are on CUDA, an sm_90 GPU,
    float64 admitted as a flash dtype. torch's CPU SDPA (flash backend on CPU) stands in for the
    GPU kernel: the transposes, the causal flag, the cache mask and the records are what is tested."""
    import elmanlab.ops.attention as op
    monkeypatch.setattr(op, "fast_path_enabled", lambda *t: True)
    monkeypatch.setattr(attn_fast, "FLASH_DTYPES", (torch.bfloat16, torch.float16, torch.float64))
    monkeypatch.setattr(attn_fast, "device_index", lambda device: 0)
    monkeypatch.setattr(attn_fast, "_capability", lambda idx: (9, 0))
    monkeypatch.setattr(attn_fast, "_PROBE", {})
    return monkeypatch


@pytest.mark.parametrize("T", [1, 7, 130])
def test_training_shaped_call_runs_flash_only(sdpa_on_cpu, T):
    q, k, v = (t.requires_grad_() for t in qkv(2, T, 3, 16, T))
    out = attention(q, k, v)
    assert implementations_used() == {"attention": one(attn_fast.NAME)} and attn_fast.NAME == "flash"
    want = attention_ref(q, k, v)                       # the definition (tested against written_out above)
    assert out.shape == q.shape and rel_err(out, want) < 1e-10
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad((out * g).sum(), [q, k, v]),
                    torch.autograd.grad((want * g).sum(), [q, k, v])):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)          # dq is 0 at T = 1


def test_flash_runs_with_every_other_sdpa_backend_switched_off(sdpa_on_cpu):
    """While the training-shaped call runs, SDPA may pick flash and nothing else (so on a GPU a call
    flash rejects raises instead of running another backend unrecorded); the cache-offset call
    leaves the choice to PyTorch."""
    import torch.nn.functional as F
    seen = []
    real = F.scaled_dot_product_attention

    def spy(*a, **kw):
        b = torch.backends.cuda
        seen.append((b.flash_sdp_enabled(), b.mem_efficient_sdp_enabled(), b.math_sdp_enabled(),
                     b.cudnn_sdp_enabled(), kw.get("is_causal", False), kw.get("attn_mask") is not None))
        return real(*a, **kw)
    sdpa_on_cpu.setattr(F, "scaled_dot_product_attention", spy)
    q, k, v = qkv(1, 8, 2, 16, 0)
    attention(q, k, v)
    attention(q[:, 5:], k, v, q_offset=5)
    assert seen == [(True, False, False, False, True, False), (True, True, True, True, False, True)]


@pytest.mark.parametrize("T,cut", [(9, 4), (9, 8), (40, 39), (64, 13)])
def test_cache_offset_call_runs_the_masked_path(sdpa_on_cpu, T, cut):
    q, k, v = qkv(2, T, 2, 8, T * cut)
    out = attention(q[:, cut:], k, v, q_offset=cut)
    assert implementations_used() == {"attention": one(attn_fast.CACHED)}
    assert rel_err(out, written_out(q, k, v)[:, cut:]) < 1e-10


def test_what_flash_cannot_take_runs_the_reference_recorded(sdpa_on_cpu):
    """float32 outside autocast, a head_dim flash does not take, an old GPU: the reference, recorded
    as such (training stops on it before step 1: backend_info says the same)."""
    q, k, v = qkv(1, 5, 2, 8, 1, dtype=torch.float32)
    attention(q, k, v)
    assert implementations_used() == {"attention": REF}
    reset_implementations_used()
    q, k, v = qkv(1, 5, 2, 12, 1)                                   # head_dim 12: not a multiple of 8
    attention(q, k, v)
    assert implementations_used() == {"attention": REF}
    reset_implementations_used()
    sdpa_on_cpu.setattr(attn_fast, "_capability", lambda idx: (7, 5))
    q, k, v = qkv(1, 5, 2, 16, 1)
    assert rel_err(attention(q, k, v), written_out(q, k, v)) < 1e-12
    assert implementations_used() == {"attention": REF}


def test_backend_info_on_a_pretend_gpu(monkeypatch):
    import elmanlab.ops._dispatch as d
    monkeypatch.setattr(d, "_FORCE_REFERENCE", False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(attn_fast, "device_index", lambda device: 0)
    monkeypatch.setattr(attn_fast, "_capability", lambda idx: (9, 0))
    monkeypatch.setattr(attn_fast, "_PROBE", {(0, 64): None, (0, 128): None, (0, 256): "RuntimeError: no kernel"})
    info = backend_info(head_dim=64)
    assert info["path"] == "flash" and info["fast"] is True and "head_dim 64" in info["reason"]
    assert backend_info(head_dim=128)["fast"] is True
    info = backend_info(head_dim=256)                                  # the probe failed there
    assert info["fast"] is False and info["path"] == "reference" and "no kernel" in info["reason"]
    info = backend_info(head_dim=320)
    assert info["fast"] is False and "head_dim 320" in info["reason"] and "--head-dim 64" in info["fix"]
    monkeypatch.setattr(attn_fast, "_capability", lambda idx: (7, 5))
    info = backend_info(head_dim=64)
    assert info["fast"] is False and "sm_75" in info["reason"] and "sm_80" in info["fix"]
    monkeypatch.setattr(d, "_FORCE_REFERENCE", True)
    assert backend_info(head_dim=64)["fix"] == "unset ELMANLAB_REFERENCE (or set it to 0)"


# ---------------------------------------------------------------- GPU

@pytest.mark.gpu
@pytest.mark.parametrize("B,T,H,D", [(2, 131, 3, 64), (1, 512, 4, 128), (3, 5, 2, 64)])
def test_flash_bf16_matches_float64_reference(rel, B, T, H, D):
    torch.manual_seed(T + D)
    ins = [torch.randn(B, T, H, D, device=DEV) for _ in range(3)]
    cot = torch.randn(B, T, H, D, device=DEV, dtype=torch.float64)
    leaves = [x.bfloat16().requires_grad_() for x in ins]
    reset_implementations_used()
    out = attention(*leaves)
    assert implementations_used() == {"attention": one("flash")}
    (out.double() * cot).sum().backward()
    got = {"out": out.detach(), **{f"d{n}": x.grad for n, x in zip("qkv", leaves)}}
    refs = [x.detach().double().requires_grad_() for x in leaves]
    ro = attention_ref(*refs)
    (ro * cot).sum().backward()
    want = {"out": ro.detach(), **{f"d{n}": x.grad for n, x in zip("qkv", refs)}}
    _check(rel, "flash", got, want)


@pytest.mark.gpu
def test_cache_offset_on_gpu_equals_full_pass(rel):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 70, 2, 64, device=DEV, dtype=torch.bfloat16) for _ in range(3))
    full = attention(q, k, v)
    reset_implementations_used()
    tail = attention(q[:, 50:], k, v, q_offset=50)
    step = attention(q[:, 69:], k, v, q_offset=69)
    assert implementations_used() == {"attention": one(attn_fast.CACHED)}
    assert rel(tail, full[:, 50:]) < 1e-2 and rel(step, full[:, 69:]) < 1e-2
