"""The Elman recurrences (ops/elman): the reference against its definition; on CPU the fused
kernel's autograd Function through the plain-PyTorch backend (the same contract and backward
algebra the CUDA kernel implements) and E42's chunked form against autograd through the float64
reference; on the GPU (marked ``gpu``, skipped without CUDA) the persistent kernel, the chunked
form and cuDNN against float64 references: forward, final state and every gradient, odd shapes,
outputs poisoned with NaN before each call (an unwritten element fails). Relative RMS error
<= 1e-4 with fp32 inputs, <= 1e-2 with bf16 inputs."""
import pytest
import torch

from conftest import rel_err
from elmanlab.ops.elman import elman_scan_ref
from elmanlab.ops.elman.fused import TorchBackend as ElmanTorch, elman_scan_backend
from op_checks import D64, _compare, _grads, _seed

TOL = {torch.float32: 1e-4, torch.bfloat16: 1e-2}


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    import elmanlab.ops.elman.fused as lf

    monkeypatch.setattr(lf, "POISON", True)


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
@pytest.mark.parametrize("B,T,D,with_h0,with_b", [(3, 1, 5, True, True), (2, 17, 12, False, True),
                                                    (1, 9, 7, True, False)])
def test_elman_fn_matches_reference(nl, B, T, D, with_h0, with_b):
    g = torch.Generator().manual_seed(B * 100 + T + D)
    scale = 0.5 if nl == "tanh" else 0.3
    wx = torch.randn(B, T, D, generator=g, dtype=torch.float64).requires_grad_()
    W = (torch.randn(D, D, generator=g, dtype=torch.float64) * scale / D ** 0.5).requires_grad_()
    b = (torch.randn(D, generator=g, dtype=torch.float64) * 0.1).requires_grad_() if with_b else None
    h0 = torch.randn(B, D, generator=g, dtype=torch.float64).requires_grad_() if with_h0 else None
    ins = [wx, W, b, h0]
    ref = elman_scan_ref(wx, W, b, h0, nl)
    # float32 inputs through the fused contract (fp32 state) vs the float64 reference
    ins32 = [None if x is None else x.detach().float().requires_grad_() for x in ins]
    out = elman_scan_backend(*ins32, nonlinearity=nl, backend=ElmanTorch)
    assert out[1].dtype == torch.float32
    for o, r in zip(out, ref):
        assert rel_err(o, r) < 1e-5
    gr = _grads(ref, ins, seed=1)
    go = _grads(out, ins32, seed=1)
    assert len(gr) == len(go) == sum(x is not None for x in ins)
    for a, r in zip(go, gr):
        assert rel_err(a, r) < 1e-5


def test_elman_fn_tied_weight_gets_both_gradients():
    # E42: wx = x W^T and W_h = W: the gradient to W flows through both uses
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 6, 8, generator=g, dtype=torch.float64)
    W = (torch.randn(8, 8, generator=g, dtype=torch.float64) * 0.2).requires_grad_()
    h_ref, _ = elman_scan_ref(x @ W.t(), W, None, None, "linear")
    (gr,) = torch.autograd.grad(h_ref.sum(), W)
    h, _ = elman_scan_backend(x @ W.t(), W, None, None, "linear", ElmanTorch)
    (go,) = torch.autograd.grad(h.sum(), W)
    assert rel_err(go, gr) < 1e-6     # fp32 state inside


@pytest.mark.parametrize("T", [1, 7, 63, 130])
@pytest.mark.parametrize("chunk", [1, 4, 16])
def test_elman_linear_chunked_equals_reference(T, chunk):
    from elmanlab.ops.elman.chunked import elman_linear_chunked
    from elmanlab.ops.elman.reference import elman_scan_ref
    from conftest import rel_err

    g = torch.Generator().manual_seed(T * 7 + chunk)
    B, D = 3, 24
    W = torch.randn(D, D, generator=g, dtype=torch.float64)
    W = W * (0.95 / torch.linalg.matrix_norm(W, ord=2))
    for with_h0, with_b in ((True, True), (False, False)):
        wx = torch.randn(B, T, D, generator=g, dtype=torch.float64)
        b = torch.randn(D, generator=g, dtype=torch.float64) if with_b else None
        h0 = torch.randn(B, D, generator=g, dtype=torch.float64) if with_h0 else None
        ins = [x.clone().requires_grad_() if x is not None else None for x in (wx, W, b, h0)]
        ref_ins = [x.clone().requires_grad_() if x is not None else None for x in (wx, W, b, h0)]
        h, hT = elman_linear_chunked(*ins, chunk=chunk)
        hr, hTr = elman_scan_ref(*ref_ins, nonlinearity="linear")
        assert rel_err(h, hr) < 1e-10 and rel_err(hT, hTr) < 1e-10
        w1 = torch.randn(h.shape, generator=g, dtype=torch.float64)
        w2 = torch.randn(hT.shape, generator=g, dtype=torch.float64)
        got = torch.autograd.grad((h * w1).sum() + (hT * w2).sum(), [x for x in ins if x is not None])
        want = torch.autograd.grad((hr * w1).sum() + (hTr * w2).sum(), [x for x in ref_ins if x is not None])
        for a, r in zip(got, want):
            assert rel_err(a, r) < 1e-9


def test_elman_linear_chunked_bf16_within_training_tolerance():
    """bf16 inputs (the training precision): the sequential GEMMs take bf16 inputs and accumulate
    into float32 states; output, state and every gradient stay within 1e-2 relative RMS of float64,
    at a spectral radius like E42's. (At E42's 400M width, D 2272, T 512: 2.9e-3 output, 3.0-6.8e-3
    gradients, measured on CPU.)"""
    from elmanlab.ops.elman.chunked import elman_linear_chunked
    from elmanlab.ops.elman.reference import elman_scan_ref
    from conftest import rel_err

    g = torch.Generator().manual_seed(5)
    B, T, D = 2, 77, 192
    W = torch.randn(D, D, generator=g, dtype=torch.float64)
    W = W * (0.99 / torch.linalg.matrix_norm(W, ord=2))
    wx, b, h0 = (torch.randn(B, T, D, generator=g, dtype=torch.float64),
                 0.1 * torch.randn(D, generator=g, dtype=torch.float64),
                 0.5 * torch.randn(B, D, generator=g, dtype=torch.float64))
    ins = [x.to(torch.bfloat16).requires_grad_() for x in (wx, W, b, h0)]
    ref_ins = [x.clone().requires_grad_() for x in (wx, W, b, h0)]
    h, hT = elman_linear_chunked(*ins)
    hr, hTr = elman_scan_ref(*ref_ins, nonlinearity="linear")
    assert h.dtype == torch.bfloat16 and hT.dtype == torch.float32
    assert rel_err(h, hr) < 1e-2 and rel_err(hT, hTr) < 1e-2
    w1 = torch.randn(h.shape, generator=g, dtype=torch.float64)
    got = torch.autograd.grad((h.double() * w1).sum(), ins)
    want = torch.autograd.grad((hr * w1).sum(), ref_ins)
    for name, a, r in zip(("wx", "W_h", "b", "h0"), got, want):
        assert torch.isfinite(a).all() and rel_err(a, r) < 1e-2, name


def test_fast_linear_falls_back_to_chunked_when_kernel_cannot_run(monkeypatch):
    """Where the persistent kernel cannot hold W (or on CPU), fast_linear uses the chunked form."""
    import elmanlab.ops.elman.fused as fused
    from elmanlab.ops.elman.reference import elman_scan_ref
    from conftest import rel_err

    calls = []
    import elmanlab.ops.elman.chunked as chunked
    real = chunked.elman_linear_chunked
    monkeypatch.setattr(chunked, "elman_linear_chunked", lambda *a, **k: calls.append(1) or real(*a, **k))
    g = torch.Generator().manual_seed(0)
    wx = torch.randn(2, 37, 16, generator=g)
    W = torch.randn(16, 16, generator=g) * 0.1
    h, hT = fused.fast_linear(wx, W, None, None)
    hr, _ = elman_scan_ref(wx, W, None, None, "linear")
    assert calls and rel_err(h, hr) < 1e-5


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


@pytest.mark.gpu
@pytest.mark.parametrize("B,T,D,dtype,nl,with_h0,with_b", ELMAN_CASES,
                         ids=[f"B{c[0]}T{c[1]}D{c[2]}-{str(c[3])[6:]}-{c[4]}" for c in ELMAN_CASES])
def test_elman_persistent(B, T, D, dtype, nl, with_h0, with_b):
    _elman_case(B, T, D, dtype, nl, with_h0, with_b)


@pytest.mark.gpu
@pytest.mark.parametrize("B,T,D,nl", [(16, 513, 1760, "tanh"), (3, 37, 1000, "linear")])
def test_elman_fp32_core_kernel_on_bf16(monkeypatch, B, T, D, nl):
    # bf16 inputs through the CUDA-core kernel (the tensor-core one is the default for bf16)
    from elmanlab.ops.elman.fused import CudaBackend

    monkeypatch.setattr(CudaBackend, "use_mma", False)
    _elman_case(B, T, D, torch.bfloat16, nl, True, True)


WIDE_CASES = [  # B, T, D, nonlinearity, h0, bias, forced: the wide kernel below 16 x SMs too
    (1, 1, 100, "tanh", True, True, True),
    (3, 37, 1000, "linear", False, True, True),
    (16, 513, 1760, "tanh", True, True, True),
    (64, 37, 1760, "tanh", True, False, True),
    (16, 37, 2200, "tanh", True, True, False),       # E1 expansion 2.5 (the widths past the mma kernel)
    (16, 513, 2272, "linear", True, True, False),    # E42 at 400M
    (3, 77, 2560, "tanh", False, True, False),
    (16, 129, 3584, "tanh", True, True, False),      # E1 3584 x 6
    (16, 37, 3990, "linear", True, True, False),     # not a multiple of 64
    (16, 129, 4096, "tanh", True, True, False),
]


@pytest.mark.gpu
@pytest.mark.parametrize("sync", ["fence", "release"])
@pytest.mark.parametrize("B,T,D,nl,with_h0,with_b,forced", WIDE_CASES,
                         ids=[f"B{c[0]}T{c[1]}D{c[2]}-{c[3]}{'-forced' if c[6] else ''}" for c in WIDE_CASES])
def test_elman_wide_kernel(monkeypatch, B, T, D, nl, with_h0, with_b, forced, sync):
    """The 32-unit tensor-core kernel (W split between registers and shared memory): every width
    from 2113 to 4096 runs it by default on an H200; forced at narrower widths too; with either grid
    barrier. Which kernel ran is asserted, for the forward and the backward launch."""
    from elmanlab.ops.elman.fused import CudaBackend

    monkeypatch.setattr(CudaBackend, "sync", sync)
    if forced:
        monkeypatch.setattr(CudaBackend, "force_variant", "wide")
    elif D <= 16 * torch.cuda.get_device_properties(0).multi_processor_count:
        pytest.skip(f"D {D} runs the 16-unit kernel on this GPU")
    seen = _variants_seen(monkeypatch)
    _elman_case(B, T, D, torch.bfloat16, nl, with_h0, with_b)
    assert seen == ["wide", "wide"], seen           # the forward and the backward scan


def _variants_seen(monkeypatch) -> list:
    """The kernel variant of every launch from now on (the forward, then the backward scan)."""
    from elmanlab.ops.elman.fused import CudaBackend

    seen, real = [], CudaBackend._launch.__func__

    def launch(cls, *a, **k):
        cls.last_variant = None
        real(cls, *a, **k)
        seen.append(cls.last_variant)
    monkeypatch.setattr(CudaBackend, "_launch", classmethod(launch))
    return seen


MMA_SYNC_CASES = [c for c in ELMAN_CASES if c[3] == torch.bfloat16]


@pytest.mark.gpu
@pytest.mark.parametrize("sync", ["fence", "release"])
@pytest.mark.parametrize("B,T,D,dtype,nl,with_h0,with_b", MMA_SYNC_CASES,
                         ids=[f"B{c[0]}T{c[1]}D{c[2]}-{c[4]}" for c in MMA_SYNC_CASES])
def test_elman_mma_kernel_sync_modes(monkeypatch, B, T, D, dtype, nl, with_h0, with_b, sync):
    """The 16-unit tensor-core kernel under both grid barriers (fences + atomicAdd, release
    reduction); B > 16 runs its multi-tile pass by default."""
    from elmanlab.ops.elman.fused import CudaBackend

    monkeypatch.setattr(CudaBackend, "sync", sync)
    seen = _variants_seen(monkeypatch)
    _elman_case(B, T, D, dtype, nl, with_h0, with_b)
    kind = "mma-multi" if B > 16 else "mma"
    assert seen == [kind, kind], seen


MULTI_CASES = [  # B, T, D, nonlinearity, h0, bias: B > 16, the multi-tile pass (default) and tile by tile
    (17, 37, 96, "tanh", True, True),
    (33, 129, 1000, "linear", False, True),
    (64, 513, 1760, "tanh", True, True),
    (100, 37, 2112, "tanh", True, False),      # two groups of 64 rows, the second partial
]


@pytest.mark.gpu
@pytest.mark.parametrize("multi_tile", [True, False])
@pytest.mark.parametrize("B,T,D,nl,with_h0,with_b", MULTI_CASES,
                         ids=[f"B{c[0]}T{c[1]}D{c[2]}-{c[3]}" for c in MULTI_CASES])
def test_elman_mma_multi_tile(monkeypatch, B, T, D, nl, with_h0, with_b, multi_tile):
    """B > 16 on the 16-unit kernel: all batch tiles of a step in one pass over W (the default),
    or one tile after another (CudaBackend.multi_tile = False)."""
    from elmanlab.ops.elman.fused import CudaBackend

    monkeypatch.setattr(CudaBackend, "multi_tile", multi_tile)
    seen = _variants_seen(monkeypatch)
    _elman_case(B, T, D, torch.bfloat16, nl, with_h0, with_b)
    kind = "mma-multi" if multi_tile else "mma"
    assert seen == [kind, kind], seen


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


@pytest.mark.gpu
@pytest.mark.parametrize("B,T,D,dtype", [(3, 77, 2272, torch.float32), (16, 513, 2304, torch.bfloat16)])
def test_elman_linear_wider_than_persistent_uses_chunked(B, T, D, dtype, monkeypatch):
    """E42 at 400M+ (d_inner > 16 x SMs): with bf16 inputs the wide persistent kernel, with fp32
    inputs (whose kernel stops at 16 x SMs) the chunked GEMM form."""
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
    from elmanlab.ops import implementations_used, reset_implementations_used
    from elmanlab.ops.elman.fused import CHUNKED, WIDE
    reset_implementations_used()
    out = elman_scan(*ins, nonlinearity="linear")
    assert out[0].shape == (B, T, D)
    ran = implementations_used()["elman"]
    # bf16 at these widths runs the wide persistent kernel; fp32 past 16 x SMs the chunked form
    want = WIDE["linear"] if persistent_supported(ins[0]) else CHUNKED
    assert (want == WIDE["linear"]) == (dtype == torch.bfloat16), want
    assert ran == {"path": want, "paths": [want], "fast": True}, ran
    assert bool(calls) == (want == CHUNKED), "the chunked form's record and its call disagree"
    _compare(out, elman_scan_ref(*ins64, nonlinearity="linear"), ins, ins64, TOL[dtype],
             f"chunked linear B{B} T{T} D{D} {dtype}|wx,W_h,b,h0")


@pytest.mark.gpu
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
