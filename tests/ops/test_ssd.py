"""The Mamba2 SSD scan (ops/ssd): the chunked reference against the sequential one (float64); on
the GPU (marked ``gpu``, skipped without CUDA; a missing mamba_ssm fails) mamba_ssm's kernel in
bf16 against the reference in float64 on the same inputs: relative RMS error <= 1e-2 for the
output, the final state and every input gradient."""
import pytest
import torch

from conftest import rel_err
from elmanlab.ops import implementations_used, reset_implementations_used
from elmanlab.ops.ssd import ssd_chunked, ssd_sequential
from op_checks import D64, DEV, LENGTHS, _check, _leaf, _run


@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("chunk", [8, 64])
def test_ssd_chunked_equals_sequential(T, chunk):
    g = torch.Generator().manual_seed(T + chunk)
    B, H, P, N, G = 2, 4, 3, 5, 2
    x = torch.randn(B, T, H, P, generator=g, dtype=D64)
    dt = torch.rand(B, T, H, generator=g, dtype=D64) + 0.01
    A = -torch.rand(H, generator=g, dtype=D64) - 0.1
    Bm, Cm = torch.randn(B, T, G, N, generator=g, dtype=D64), torch.randn(B, T, G, N, generator=g, dtype=D64)
    D = torch.randn(H, generator=g, dtype=D64)
    s0 = torch.randn(B, H, P, N, generator=g, dtype=D64)
    for init in (None, s0):
        y1, f1 = ssd_sequential(x, dt, A, Bm, Cm, D, init)
        y2, f2 = ssd_chunked(x, dt, A, Bm, Cm, D, init, chunk_size=chunk)
        assert rel_err(y2, y1) < 1e-10 and rel_err(f2, f1) < 1e-10


@pytest.mark.gpu
@pytest.mark.parametrize("T,H,G,with_state,raw_dt", [(100, 6, 1, False, False), (77, 4, 2, True, False),
                                                      (130, 5, 1, False, True)])
def test_ssd_fast_matches_reference(rel, T, H, G, with_state, raw_dt):
    """raw_dt: the step size softplus(dt + dt_bias) computed inside the kernel (the layer's call)."""
    from elmanlab.ops.ssd import fast, ssd_chunked, step_size
    info = fast.backend_info()
    assert info["path"] != "reference", info["reason"]
    torch.manual_seed(T)
    B, P, N = 2, 64, 128
    x = torch.randn(B, T, H, P, device=DEV)
    dt = torch.nn.functional.softplus(torch.randn(B, T, H, device=DEV) - 2)
    A = -torch.rand(H, device=DEV) * 4 - 0.5
    Bm, Cm = torch.randn(B, T, G, N, device=DEV), torch.randn(B, T, G, N, device=DEV)
    D = torch.randn(H, device=DEV)
    S0 = torch.randn(B, H, P, N, device=DEV) if with_state else None
    cot = (torch.randn(B, T, H, P, device=DEV, dtype=torch.float64),
           torch.randn(B, H, P, N, device=DEV, dtype=torch.float64))
    names = ["x", "dt", "A", "B", "C", "D", "S0", "dt_bias"]
    dt_bias = torch.randn(H, device=DEV) - 2 if raw_dt else None
    if raw_dt:
        dt = torch.randn(B, T, H, device=DEV)          # raw: bf16 like the in_proj output
    # bf16 activations (x, B, C) as in training; dt, A, D, state float32 as the layer passes them
    def fast_fn(x, dt, A, Bm, Cm, D, S0, dt_bias):
        return fast.ssd_fast(x, dt, A, Bm, Cm, D, S0, 64, dt_bias=dt_bias, dt_softplus=raw_dt)
    leaves_dtypes = [torch.bfloat16, torch.bfloat16 if raw_dt else torch.float32, torch.float32, torch.bfloat16,
                     torch.bfloat16, torch.float32, torch.float32, torch.float32]
    leaves = [None if t is None else _leaf(t.to(dtp), dtp)
              for t, dtp in zip((x, dt, A, Bm, Cm, D, S0, dt_bias), leaves_dtypes)]
    reset_implementations_used()
    out, state = fast_fn(*leaves)
    assert implementations_used() == {"ssd": {"path": fast.NAME, "paths": [fast.NAME], "fast": True}}
    ((out.double() * cot[0]).sum() + (state.double() * cot[1]).sum()).backward()
    got = {"out": out.detach(), "state": state.detach()}
    got.update({"d" + n: l.grad for n, l in zip(names, leaves) if l is not None})
    # reference in float64 on the same rounded inputs
    def ref_fn(x, dt, A, Bm, Cm, D, S0, dt_bias):
        return ssd_chunked(x, step_size(dt, dt_bias, raw_dt), A, Bm, Cm, D, S0, chunk_size=64)
    ref = _run(ref_fn, [None if l is None else l.detach().double() for l in leaves], names, torch.float64, cot)
    _check(rel, "ssd", got, ref)
