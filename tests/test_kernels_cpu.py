"""CPU checks of the fused-kernel wrappers: the autograd Functions with the plain-PyTorch backend
(the same contract and backward algebra the CUDA kernels implement) against autograd through the
float64 references, plus dispatch and the force-reference switch."""
import subprocess
import sys

import pytest
import torch

from conftest import rel_err
from elmanlab.ops import force_reference
from elmanlab.ops.e88 import FAST_IMPLS as E88_FAST, e88_scan, e88_scan_ref
from elmanlab.ops.e88.fused import TorchBackend as E88Torch, e88_scan_backend
from elmanlab.ops.elman import FAST_IMPLS as ELMAN_FAST, elman_scan, elman_scan_ref
from elmanlab.ops.elman.fused import TorchBackend as ElmanTorch, elman_scan_backend


def _grads(outs, inputs, seed):
    g = torch.Generator().manual_seed(seed)
    loss = sum((o.double() * torch.randn(o.shape, generator=g, dtype=torch.float64)).sum() for o in outs)
    return torch.autograd.grad(loss, [x for x in inputs if x is not None])


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


@pytest.mark.parametrize("nl", ["tanh", "linear"])
@pytest.mark.parametrize("gate", [None, "silu", "sigmoid"])
@pytest.mark.parametrize("B,T,H,n,m,C,with_s0", [(2, 11, 3, 8, 8, 4, True), (1, 7, 2, 16, 24, 16, False),
                                                (2, 5, 1, 8, 4, 1, True)])
def test_e88_fn_matches_reference(nl, gate, B, T, H, n, m, C, with_s0):
    g_ = torch.Generator().manual_seed(T * 7 + n + m + C)
    f64 = dict(generator=g_, dtype=torch.float64)
    q = torch.nn.functional.normalize(torch.randn(B, T, H, n, **f64), dim=-1).requires_grad_()
    k = torch.nn.functional.normalize(torch.randn(B, T, H, n, **f64), dim=-1).requires_grad_()
    v = torch.randn(B, T, H, m, **f64).requires_grad_()
    a = (0.5 + 0.5 * torch.rand(B, T, H, **f64)).requires_grad_()
    S0 = (0.3 * torch.randn(B, H, m, n, **f64)).requires_grad_() if with_s0 else None
    gg = torch.randn(B, T, H, m, **f64).requires_grad_() if gate else None
    ins = [q, k, v, a, S0, gg]
    ref = e88_scan_ref(q, k, v, a, S0, nl, gg, gate or "silu")
    ins32 = [None if x is None else x.detach().float().requires_grad_() for x in ins]
    out = e88_scan_backend(ins32[0], ins32[1], ins32[2], ins32[3], ins32[4], nl, ins32[5], gate or "silu",
                           backend=E88Torch, C=C)
    for o, r in zip(out, ref):
        assert rel_err(o, r) < 1e-5
    gr = _grads(ref, ins, seed=2)
    go = _grads(out, ins32, seed=2)
    assert len(go) == len(gr)
    for a_, r in zip(go, gr):
        assert rel_err(a_, r) < 1e-5


def test_e88_checkpoints_are_linear_in_T():
    # memory: the saved checkpoints hold one state every C steps, not one per step
    q = torch.nn.functional.normalize(torch.randn(1, 33, 2, 8), dim=-1)
    v = torch.randn(1, 33, 2, 8)
    a = torch.rand(1, 33, 2)
    _, _, ckpt = E88Torch.fwd(q, q, v, a, None, None, True, 0, 8)
    assert ckpt.shape == (1, 2, 5, 8, 8)


def test_fast_impls_registered_and_cpu_uses_reference(monkeypatch):
    assert set(ELMAN_FAST) == {"tanh", "linear"} and "default" in E88_FAST
    called = []
    monkeypatch.setitem(ELMAN_FAST, "tanh", lambda *a: called.append(1))
    monkeypatch.setitem(E88_FAST, "default", lambda *a: called.append(1))
    wx = torch.randn(2, 3, 4)
    W = torch.randn(4, 4) * 0.1
    h, _ = elman_scan(wx, W, None, None, "tanh")           # CPU tensors: the reference
    assert not called and rel_err(h, elman_scan_ref(wx, W, None, None, "tanh")[0]) == 0
    q = torch.randn(1, 3, 1, 8)
    y, _ = e88_scan(q, q, torch.randn(1, 3, 1, 8), torch.rand(1, 3, 1))
    assert not called and y.shape == (1, 3, 1, 8)


def test_force_reference_disables_fast_path(monkeypatch):
    import elmanlab.ops._dispatch as d

    class FakeCuda(torch.Tensor):
        pass

    monkeypatch.setattr(d, "_FORCE_REFERENCE", False)
    t = torch.randn(2)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    assert d.fast_path_enabled(t)
    with force_reference():
        assert not d.fast_path_enabled(t)
    assert d.fast_path_enabled(t)


def test_import_compiles_nothing():
    # importing the ops (and registering the fast paths) must not build kernels or import triton
    code = ("import sys, elmanlab.ops.elman, elmanlab.ops.e88, elmanlab.layers.elman, elmanlab.layers.e88;"
            "from elmanlab.ops.elman import _build; assert not _build._LIBS;"
            "assert 'triton' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- E42's chunked form (pure PyTorch)

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


def test_a_failed_kernel_build_is_not_retried_on_every_call(monkeypatch, tmp_path):
    """Where nvcc fails, the layers fall back to another path on every call: the build must be tried
    once per process, not once per layer call."""
    import torch
    import elmanlab.ops.elman._build as build

    calls = []

    def no_nvcc():
        calls.append(1)
        raise build.KernelBuildError("nvcc not found")
    monkeypatch.setattr(build, "find_nvcc", no_nvcc)
    monkeypatch.setattr(build, "_FAILED", {})
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=None: (9, 0))
    src = tmp_path / "k.cu"
    src.write_text("// kernel")
    for _ in range(3):
        with pytest.raises(build.KernelBuildError, match="nvcc not found"):
            build.load_library(src, 0)
    assert len(calls) == 1


def test_kernel_cache_key_covers_source_arch_compiler_and_flags():
    """A cached library is reused only for the same source, GPU architecture, nvcc and nvcc flags."""
    from elmanlab.ops.elman._build import library_digest, nvcc_flags
    base = library_digest(b"src", "90", "nvcc 13.0", nvcc_flags("90"))
    assert base == library_digest(b"src", "90", "nvcc 13.0", nvcc_flags("90"))
    assert len({base,
                library_digest(b"src2", "90", "nvcc 13.0", nvcc_flags("90")),
                library_digest(b"src", "80", "nvcc 13.0", nvcc_flags("80")),
                library_digest(b"src", "90", "nvcc 12.8", nvcc_flags("90")),
                library_digest(b"src", "90", "nvcc 13.0", nvcc_flags("90") + ["-lineinfo"])}) == 5
