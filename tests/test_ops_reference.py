"""The plain-PyTorch references agree with their step-by-step definitions (float64)."""
import pytest
import torch
import torch.nn.functional as F

from elmanlab.ops.delta import gated_delta_rule_chunked, gated_delta_rule_recurrent
from elmanlab.ops.e88 import e88_scan_ref
from elmanlab.ops.elman import elman_scan_ref
from elmanlab.ops.scan import linear_scan_parallel, linear_scan_sequential
from elmanlab.ops.ssd import ssd_chunked, ssd_sequential

from conftest import rel_err

D64 = torch.float64
LENGTHS = [1, 7, 63, 130]


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


@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("chunk", [8, 64])
def test_gated_delta_chunked_equals_recurrent(T, chunk):
    g = torch.Generator().manual_seed(T * 3 + chunk)
    B, H, K, V = 2, 3, 6, 5
    q = torch.randn(B, T, H, K, generator=g, dtype=D64)
    k = F.normalize(torch.randn(B, T, H, K, generator=g, dtype=D64), dim=-1)
    v = torch.randn(B, T, H, V, generator=g, dtype=D64)
    lg = -torch.rand(B, T, H, generator=g, dtype=D64)
    beta = torch.rand(B, T, H, generator=g, dtype=D64)
    S0 = torch.randn(B, H, K, V, generator=g, dtype=D64)
    for init in (None, S0):
        o1, s1 = gated_delta_rule_recurrent(q, k, v, lg, beta, None, init)
        o2, s2 = gated_delta_rule_chunked(q, k, v, lg, beta, None, init, chunk_size=chunk)
        assert rel_err(o2, o1) < 1e-9 and rel_err(s2, s1) < 1e-9


def test_elman_reference_matches_definition():
    g = torch.Generator().manual_seed(1)
    B, T, D = 2, 5, 4
    wx = torch.randn(B, T, D, generator=g, dtype=D64)
    W = torch.randn(D, D, generator=g, dtype=D64) * 0.5
    b = torch.randn(D, generator=g, dtype=D64)
    h0 = torch.randn(B, D, generator=g, dtype=D64)
    for nl, act in (("tanh", torch.tanh), ("linear", lambda z: z)):
        h, hT = elman_scan_ref(wx, W, b, h0, nl)
        for bi in range(B):
            hh = h0[bi]
            for t in range(T):
                hh = act(wx[bi, t] + W @ hh + b)
                assert torch.allclose(h[bi, t], hh)
            assert torch.allclose(hT[bi], hh)


@pytest.mark.parametrize("nl", ["tanh", "linear"])
@pytest.mark.parametrize("gate", [None, "silu", "sigmoid"])
def test_e88_reference_matches_definition(nl, gate):
    g = torch.Generator().manual_seed(2)
    B, T, H, n, m = 2, 4, 2, 3, 5
    q = F.normalize(torch.randn(B, T, H, n, generator=g, dtype=D64), dim=-1)
    k = F.normalize(torch.randn(B, T, H, n, generator=g, dtype=D64), dim=-1)
    v = torch.randn(B, T, H, m, generator=g, dtype=D64)
    a = torch.rand(B, T, H, generator=g, dtype=D64)
    gt = torch.randn(B, T, H, m, generator=g, dtype=D64)
    S0 = torch.randn(B, H, m, n, generator=g, dtype=D64) * 0.3
    y, ST = e88_scan_ref(q, k, v, a, S0, nl, None if gate is None else gt, gate or "silu")
    act = torch.tanh if nl == "tanh" else (lambda z: z)
    for bi in range(B):
        for hi in range(H):
            S = S0[bi, hi]
            for t in range(T):
                kk = k[bi, t, hi]
                S = act(a[bi, t, hi] * S + torch.outer(v[bi, t, hi] - S @ kk, kk))
                o = S @ q[bi, t, hi]
                if gate == "silu":
                    o = o * F.silu(gt[bi, t, hi])
                elif gate == "sigmoid":
                    o = o * torch.sigmoid(gt[bi, t, hi])
                assert torch.allclose(y[bi, t, hi], o)
            assert torch.allclose(ST[bi, hi], S)
