"""The diagonal linear scan of minGRU / minLSTM (ops/scan): the parallel reference against the
sequential one (float64) and the gates computed inside the scan; on the GPU (marked ``gpu``,
skipped without CUDA; a missing triton fails) elmanlab's Triton scan against the float64
reference: output, final state and every input gradient."""
import pytest
import torch

from conftest import rel_err
from elmanlab.ops import implementations_used, reset_implementations_used
from elmanlab.ops.scan import linear_scan_parallel, linear_scan_sequential
from op_checks import D64, DEV, LENGTHS, _check, _leaf, _run


def _assert_triton_scan_ran():
    from elmanlab.ops.scan.fast import NAME
    assert implementations_used() == {"scan": {"path": NAME, "paths": [NAME], "fast": True}}, implementations_used()


@pytest.mark.parametrize("T", LENGTHS)
def test_linear_scan_parallel_equals_sequential(T):
    g = torch.Generator().manual_seed(T)
    a = torch.rand(3, T, 5, generator=g, dtype=D64) * 0.98 + 0.01
    b = torch.randn(3, T, 5, generator=g, dtype=D64)
    h0 = torch.randn(3, 5, generator=g, dtype=D64)
    for init in (None, h0):
        h1, s1 = linear_scan_sequential(a, b, init)
        h2, s2 = linear_scan_parallel(a, b, init)
        assert rel_err(h2, h1) < 1e-10 and rel_err(s2, s1) < 1e-10


@pytest.mark.parametrize("kind,n", [("mingru", 2), ("minlstm", 3)])
def test_minrnn_scan_reference_equals_layer_math(kind, n):
    """minrnn_scan (projection in) equals coefficients + sequential scan, with an initial state."""
    from elmanlab.ops.scan import linear_scan_sequential, minrnn_coefficients, minrnn_scan
    torch.manual_seed(n)
    p = torch.randn(2, 9, n * 5, dtype=torch.float64)
    h0 = torch.randn(2, 5, dtype=torch.float64)
    h, hT = minrnn_scan(p, kind, h0)
    a, b = minrnn_coefficients(p, kind)
    hr, hTr = linear_scan_sequential(a, b, h0)
    assert torch.allclose(h, hr, atol=1e-9) and torch.allclose(hT, hTr, atol=1e-9)
    # minGRU: a = 1 - z; minLSTM: a + b/g = 1 (normalised gates)
    assert ((a > 0) & (a < 1)).all()


@pytest.mark.gpu
@pytest.mark.parametrize("B,T,D,with_state", [(2, 129, 70, False), (3, 512, 333, True), (1, 1, 5, True)])
def test_linear_scan_fast_matches_reference(rel, B, T, D, with_state):
    from elmanlab.ops.scan import fast, linear_scan_sequential
    assert fast.backend_info()["path"] != "reference"
    torch.manual_seed(T + D)
    a = torch.rand(B, T, D, device=DEV) * 0.9 + 0.1
    b = torch.randn(B, T, D, device=DEV)
    h0 = torch.randn(B, D, device=DEV) if with_state else None
    cot = (torch.randn(B, T, D, device=DEV, dtype=torch.float64), torch.randn(B, D, device=DEV, dtype=torch.float64))
    names = ["a", "b", "h0"]
    reset_implementations_used()
    got = _run(fast.linear_scan_fast, [a, b, h0], names, torch.float32, cot)
    _assert_triton_scan_ran()
    ref = _run(linear_scan_sequential, [a, b, h0], names, torch.float64, cot)
    _check(rel, "linear_scan", got, ref, tol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("kind,n", [("mingru", 2), ("minlstm", 3)])
@pytest.mark.parametrize("B,T,D,with_state", [(2, 131, 97, False), (3, 512, 300, True)])
def test_minrnn_scan_fast_matches_reference(rel, kind, n, B, T, D, with_state):
    from elmanlab.ops.scan import fast, linear_scan_sequential, minrnn_coefficients
    torch.manual_seed(T * n + D)
    p = torch.randn(B, T, n * D, device=DEV) * 2
    h0 = torch.randn(B, D, device=DEV) if with_state else None
    cot = (torch.randn(B, T, D, device=DEV, dtype=torch.float64), torch.randn(B, D, device=DEV, dtype=torch.float64))
    names = ["p", "h0"]
    # bf16 projection (training precision), float32 state
    pl = _leaf(p.bfloat16(), torch.bfloat16)
    hl = None if h0 is None else _leaf(h0, torch.float32)
    reset_implementations_used()
    out, st = fast.minrnn_scan_fast(pl, kind, hl)
    _assert_triton_scan_ran()
    assert out.dtype == torch.bfloat16
    ((out.double() * cot[0]).sum() + (st.double() * cot[1]).sum()).backward()
    got = {"out": out.detach(), "state": st.detach(), "dp": pl.grad}
    if hl is not None:
        got["dh0"] = hl.grad

    def ref_fn(p, h0):
        a, b = minrnn_coefficients(p, kind)
        return linear_scan_sequential(a, b, h0)
    ref = _run(ref_fn, [pl.detach().double(), None if hl is None else hl.detach().double()], names,
               torch.float64, cot)
    _check(rel, kind, got, ref)
