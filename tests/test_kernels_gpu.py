"""GPU kernels against float64 references: forward, final state and every gradient, odd shapes,
fresh random inputs, outputs poisoned with NaN before each call (an unwritten element fails).
Relative RMS error <= 1e-4 with fp32 inputs, <= 1e-2 with bf16 inputs. Skipped without CUDA."""
import zlib

import pytest
import torch

from conftest import rel_err

pytestmark = pytest.mark.gpu

TOL = {torch.float32: 1e-4, torch.bfloat16: 1e-2}


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    import elmanlab.ops.e88.fused as ef
    import elmanlab.ops.elman.fused as lf

    monkeypatch.setattr(lf, "POISON", True)
    monkeypatch.setattr(ef, "POISON", True)


def _seed(*xs):
    """A generator seeded from the case (crc32, not hash(): str hashes change between processes)."""
    return torch.Generator(device="cuda").manual_seed(zlib.crc32(repr(xs).encode()))


def _compare(outs, refs, ins, ins64, tol, label):
    g = torch.Generator(device="cuda").manual_seed(1234)
    ws = [torch.randn(r.shape, generator=g, device="cuda", dtype=torch.float64) for r in refs]
    for name, o, r in zip(("out", "state"), outs, refs):
        assert torch.isfinite(o).all(), f"{label}: {name} has non-finite values (unwritten?)"
        e = rel_err(o, r)
        assert e <= tol, f"{label}: {name} rel err {e:.2e} > {tol}"
    go = torch.autograd.grad(sum((o.double() * w).sum() for o, w in zip(outs, ws)), [x for x in ins if x is not None])
    gr = torch.autograd.grad(sum((r * w).sum() for r, w in zip(refs, ws)), [x for x in ins64 if x is not None])
    names = [n for n, x in zip(label.split("|")[1].split(","), ins) if x is not None]
    for n, a, r in zip(names, go, gr):
        assert torch.isfinite(a).all(), f"{label}: grad {n} non-finite"
        e = rel_err(a, r)
        assert e <= tol, f"{label}: grad {n} rel err {e:.2e} > {tol}"


ELMAN_CASES = [  # B, T, D, dtype, nonlinearity, h0, bias
    (1, 1, 96, torch.float32, "tanh", True, True),
    (3, 37, 1000, torch.float32, "tanh", False, True),
    (16, 513, 1760, torch.bfloat16, "tanh", True, True),
    (16, 37, 1760, torch.float32, "tanh", True, False),
    (64, 37, 1000, torch.float32, "tanh", True, True),
    (64, 129, 1760, torch.bfloat16, "tanh", True, True),     # the B64 training shape (tensor-core path)
    (16, 37, 2112, torch.bfloat16, "tanh", False, True),
    (3, 513, 96, torch.float32, "linear", True, True),
    (16, 37, 1760, torch.float32, "linear", False, True),
    (1, 37, 1000, torch.bfloat16, "linear", True, False),
]


@pytest.mark.parametrize("B,T,D,dtype,nl,with_h0,with_b", ELMAN_CASES,
                         ids=[f"B{c[0]}T{c[1]}D{c[2]}-{str(c[3])[6:]}-{c[4]}" for c in ELMAN_CASES])
def test_elman_persistent(B, T, D, dtype, nl, with_h0, with_b):
    _elman_case(B, T, D, dtype, nl, with_h0, with_b)


@pytest.mark.parametrize("B,T,D,nl", [(16, 513, 1760, "tanh"), (3, 37, 1000, "linear")])
def test_elman_fp32_core_kernel_on_bf16(monkeypatch, B, T, D, nl):
    # bf16 inputs through the CUDA-core kernel (the tensor-core one is the default for bf16)
    from elmanlab.ops.elman.fused import CudaBackend

    monkeypatch.setattr(CudaBackend, "use_mma", False)
    _elman_case(B, T, D, torch.bfloat16, nl, True, True)


def _elman_case(B, T, D, dtype, nl, with_h0, with_b):
    from elmanlab.ops.elman.fused import elman_scan_persistent
    from elmanlab.ops.elman.reference import elman_scan_ref

    g = _seed(B, T, D, nl)
    dev = dict(device="cuda", generator=g)
    scale = 1.0 if nl == "tanh" else 0.45          # linear: spectral norm ~0.9
    wx = torch.randn(B, T, D, **dev).to(dtype)
    W = torch.randn(D, D, **dev) * scale / D ** 0.5
    b = torch.randn(D, **dev) * 0.1 if with_b else None
    h0 = torch.randn(B, D, **dev) * 0.5 if with_h0 else None
    ins = [x if x is None else x.clone().requires_grad_() for x in (wx, W, b, h0)]
    ins64 = [x if x is None else x.double().requires_grad_() for x in (wx, W, b, h0)]
    out = elman_scan_persistent(*ins, nonlinearity=nl)
    assert out[0].dtype == dtype and out[0].shape == (B, T, D)
    ref = elman_scan_ref(*ins64, nonlinearity=nl)
    _compare(out, ref, ins, ins64, TOL[dtype], f"elman {nl} B{B} T{T} D{D} {dtype}|wx,W_h,b,h0")


@pytest.mark.parametrize("B,T,D,dtype", [(3, 77, 2272, torch.float32), (16, 513, 2304, torch.bfloat16)])
def test_elman_linear_wider_than_persistent_uses_chunked(B, T, D, dtype, monkeypatch):
    """E42 at 400M+ (d_inner > 16 x SMs): elman_scan's linear fast path is the chunked GEMM form."""
    import elmanlab.ops.elman.chunked as chunked
    from elmanlab.ops.elman import elman_scan
    from elmanlab.ops.elman.fused import persistent_supported
    from elmanlab.ops.elman.reference import elman_scan_ref

    calls = []
    real = chunked.elman_linear_chunked
    monkeypatch.setattr(chunked, "elman_linear_chunked", lambda *a, **k: calls.append(1) or real(*a, **k))

    g = _seed("chunked", B, T, D)
    wx = torch.randn(B, T, D, device="cuda", generator=g)
    W = torch.randn(D, D, device="cuda", generator=g)
    W = W / torch.linalg.matrix_norm(W, ord=2) * 0.98                # E42's spectral clamp
    b = torch.randn(D, device="cuda", generator=g) * 0.1
    h0 = torch.randn(B, D, device="cuda", generator=g) * 0.5
    ins = [x.to(dtype).requires_grad_() for x in (wx, W, b, h0)]
    ins64 = [x.double().requires_grad_() for x in (wx, W, b, h0)]
    out = elman_scan(*ins, nonlinearity="linear")
    assert out[0].shape == (B, T, D)
    assert calls or persistent_supported(ins[0]), "the chunked form was not taken"
    _compare(out, elman_scan_ref(*ins64, nonlinearity="linear"), ins, ins64, TOL[dtype],
             f"chunked linear B{B} T{T} D{D} {dtype}|wx,W_h,b,h0")


def test_elman_cudnn_stepping_stone():
    from elmanlab.ops.elman.fused import elman_scan_cudnn
    from elmanlab.ops.elman.reference import elman_scan_ref

    g = _seed("cudnn")
    B, T, D = 3, 37, 96
    wx = torch.randn(B, T, D, device="cuda", generator=g)
    W = torch.randn(D, D, device="cuda", generator=g) / D ** 0.5
    b = torch.randn(D, device="cuda", generator=g) * 0.1
    h0 = torch.randn(B, D, device="cuda", generator=g) * 0.5
    ins = [x.clone().requires_grad_() for x in (wx, W, b, h0)]
    ins64 = [x.double().requires_grad_() for x in (wx, W, b, h0)]
    # cuDNN may use TF32 internally: its fp32 error is ~1e-3
    _compare(elman_scan_cudnn(*ins), elman_scan_ref(*ins64, nonlinearity="tanh"), ins, ins64, 1e-2,
             "cudnn|wx,W_h,b,h0")


E88_CASES = [  # B, T, H, n, m, dtype, nonlinearity, gate, S0
    (1, 1, 2, 16, 16, torch.float32, "tanh", None, True),
    (3, 37, 5, 32, 32, torch.float32, "tanh", "silu", True),
    (16, 513, 4, 32, 32, torch.bfloat16, "tanh", None, False),
    (3, 37, 3, 48, 48, torch.float32, "linear", "sigmoid", True),
    (1, 513, 2, 64, 64, torch.float32, "tanh", None, True),
    (16, 37, 3, 64, 64, torch.bfloat16, "tanh", "silu", True),
    (3, 37, 2, 16, 32, torch.float32, "tanh", "silu", False),
    (3, 37, 2, 48, 24, torch.bfloat16, "linear", None, True),
    (64, 65, 56, 32, 32, torch.bfloat16, "tanh", None, True),    # the seeds' heads at B64
]


@pytest.mark.parametrize("B,T,H,n,m,dtype,nl,gate,with_s0", E88_CASES,
                         ids=[f"B{c[0]}T{c[1]}H{c[2]}n{c[3]}m{c[4]}-{str(c[5])[6:]}-{c[6]}-{c[7]}" for c in E88_CASES])
def test_e88_kernel(B, T, H, n, m, dtype, nl, gate, with_s0):
    from elmanlab.ops.e88.fused import e88_scan_cuda
    from elmanlab.ops.e88.reference import e88_scan_ref

    g = _seed(B, T, H, n, m, nl, gate)
    dev = dict(device="cuda", generator=g)
    q = torch.nn.functional.normalize(torch.randn(B, T, H, n, **dev), dim=-1).to(dtype)
    k = torch.nn.functional.normalize(torch.randn(B, T, H, n, **dev), dim=-1).to(dtype)
    v = torch.randn(B, T, H, m, **dev).to(dtype)
    a = 0.6 + 0.4 * torch.rand(B, T, H, **dev)
    S0 = 0.3 * torch.randn(B, H, m, n, **dev) if with_s0 else None
    gg = torch.randn(B, T, H, m, **dev).to(dtype) if gate else None
    raw = (q, k, v, a, S0, gg)
    ins = [x if x is None else x.clone().requires_grad_() for x in raw]
    ins64 = [x if x is None else x.double().requires_grad_() for x in raw]
    out = e88_scan_cuda(ins[0], ins[1], ins[2], ins[3], ins[4], nl, ins[5], gate or "silu")
    ref = e88_scan_ref(ins64[0], ins64[1], ins64[2], ins64[3], ins64[4], nl, ins64[5], gate or "silu")
    _compare(out, ref, ins, ins64, TOL[dtype], f"e88 B{B} T{T} H{H} n{n} m{m} {dtype} {nl} {gate}|q,k,v,decay,S0,g")


def test_e88_checkpoint_memory_is_linear():
    from elmanlab.ops.e88.fused import CudaBackend

    q = torch.randn(2, 512, 4, 32, device="cuda")
    C = CudaBackend.plan(q, 32)
    assert C >= 4          # the saved states are T / C per head: O(B T H n) for n = 32


@pytest.mark.parametrize("model,opts", [("e1", {}), ("e33", {}), ("e42", {}),
                                        ("e88", {"n_state": 16, "use_gate": True})])
def test_layers_fast_path_matches_reference(model, opts):
    from elmanlab.config import ModelConfig
    from elmanlab.lm import LM
    from elmanlab.ops import force_reference

    torch.manual_seed(0)
    lm = LM(ModelConfig(model, 96, 2, dict(opts))).cuda().eval()   # eval: no power-iteration updates
    idx = torch.randint(0, 256, (3, 37), device="cuda")
    logits = lm(idx)[0]
    logits.float().square().mean().backward()
    grads = [p.grad.clone() for p in lm.parameters()]
    lm.zero_grad()
    with force_reference():
        ref = lm(idx)[0]
        ref.float().square().mean().backward()
    assert rel_err(logits, ref) < 1e-4
    for g_fast, p in zip(grads, lm.parameters()):
        assert rel_err(g_fast, p.grad) < 1e-3
