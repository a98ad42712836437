"""The E88 matrix-state scan (ops/e88): the reference against its definition; on CPU the kernel's
autograd Function through the plain-PyTorch backend (checkpointed backward) against autograd
through the float64 reference; on the GPU (marked ``gpu``, skipped without CUDA) the CUDA kernel
against the float64 reference: forward, final state and every gradient, odd shapes, outputs
poisoned with NaN before each call, for each kernel variant (v2, v3; the record of what ran names
it), v3 also at chosen checkpoint intervals, odd bf16 value widths, value widths not a multiple of 4
or 8 and unaligned inputs (its element-copy and 4-byte staging).
Relative RMS error <= 1e-4 with fp32 inputs, <= 1e-2 with bf16."""
import pytest
import torch
import torch.nn.functional as F

from conftest import rel_err
from elmanlab.ops.e88 import e88_scan_ref
from elmanlab.ops import implementations_used, reset_implementations_used
from elmanlab.ops.e88.fused import KERNELS, PATHS, STAGED, TorchBackend as E88Torch, e88_scan_backend
from op_checks import D64, _compare, _grads, _seed

TOL = {torch.float32: 1e-4, torch.bfloat16: 1e-2}


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    import elmanlab.ops.e88.fused as ef

    monkeypatch.setattr(ef, "POISON", True)


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


def test_e88_kernel_variant_choice(monkeypatch):
    """Which variant runs: an explicit one, else CudaBackend.kernel, else $ELMANLAB_E88_KERNEL, else
    the default; an unknown name is a one-line error; a pinned backend keeps its variant."""
    import elmanlab.ops.e88.fused as ef
    from elmanlab.errors import ElmanlabError

    monkeypatch.delenv(ef.KERNEL_ENV, raising=False)
    assert ef.kernel_variant() == ef.DEFAULT_KERNEL in KERNELS
    assert KERNELS == ("v2", "v3") and STAGED == ("v3",)
    monkeypatch.setenv(ef.KERNEL_ENV, "V3")
    assert ef.kernel_variant() == "v3" and ef.CudaBackend.pinned() is ef.CudaBackendV3
    monkeypatch.setenv(ef.KERNEL_ENV, "v2")
    assert ef.kernel_variant() == "v2" and ef.CudaBackend.pinned() is ef.CudaBackendV2
    assert ef.CudaBackendV2.variant() == "v2" and ef.CudaBackend.pinned("v3") is ef.CudaBackendV3
    monkeypatch.setenv(ef.KERNEL_ENV, "V3")
    monkeypatch.setattr(ef.CudaBackend, "kernel", "v2")
    assert ef.kernel_variant() == "v2" and ef.kernel_variant("v3") == "v3"
    assert ef.CudaBackend.pinned() is ef.CudaBackendV2 and ef.CudaBackendV3.variant() == "v3"
    assert ef.CudaBackendV3.pinned() is ef.CudaBackendV3
    monkeypatch.setattr(ef.CudaBackend, "kernel", None)
    for gone in ("v9", "v4", "v5"):    # v4 and v5 were removed (no faster than v3 on an H200)
        monkeypatch.setenv(ef.KERNEL_ENV, gone)
        with pytest.raises(ElmanlabError, match=f"ELMANLAB_E88_KERNEL='{gone}'.*use one of v2, v3$") as e:
            ef.kernel_variant()
        assert "\n" not in str(e.value)
    with pytest.raises(ElmanlabError, match="kernel='v4' is not an E88 kernel"):
        ef.kernel_variant("v4")
    # the path names the records have used since v3 came (old and new records compare)
    assert PATHS == {"v2": "elmanlab E88 CUDA kernel", "v3": "elmanlab E88 CUDA kernel v3"}
    assert PATHS["v2"] == ef.NAME and all(p.startswith(ef.NAME) for p in PATHS.values())
    assert len(set(PATHS.values())) == len(KERNELS)


def test_e88_default_runs_whichever_variant_takes_the_shape(monkeypatch):
    """By default v3 runs where it takes the shape, else v2 where it does (n 8 and 24 at large value
    dims), and v3 where only it does; a variant asked for by name runs only itself, and its fix
    names the other variant when that one would take the shape; where neither does, the width fix."""
    import elmanlab.ops.e88.fused as ef

    monkeypatch.delenv(ef.KERNEL_ENV, raising=False)
    monkeypatch.setattr(ef.CudaBackend, "kernel", None)
    takes = {"v2": True, "v3": False}
    monkeypatch.setattr(ef.CudaBackend, "plan_for", lambda idx, dtype, n, m: 4 if takes["v2"] else 0)
    monkeypatch.setattr(ef.CudaBackend, "plan_staged_for",
                        lambda kern, idx, dtype, n, m, bh=1: 9 if takes["v3"] else 0)
    assert ef.choose_variant(0, 1, 24, 200) == ("v2", "", "")              # v3 rejects, v2 takes
    assert ef.plan_status(0, 1, 24, 200) == (True, "", "")
    kern, reason, fix = ef.choose_variant(0, 1, 24, 200, "v3")            # v3 asked for by name
    assert kern is None and "kernel v3 does not take key dim 24 with value dim 200" in reason
    assert fix.startswith("unset ELMANLAB_E88_KERNEL (kernel v2 takes this shape)")
    monkeypatch.setenv(ef.KERNEL_ENV, "v3")
    assert ef.choose_variant(0, 1, 24, 200)[0] is None                     # the env var names it too
    monkeypatch.delenv(ef.KERNEL_ENV)
    takes.update(v2=False, v3=True)                                        # only v3 takes it
    assert ef.choose_variant(0, 1, 48, 128) == ("v3", "", "")
    assert ef.choose_variant(0, 1, 48, 128, "v2")[0] is None
    takes.update(v3=False)                                                 # neither
    kern, reason, fix = ef.choose_variant(0, 1, 24, 300)
    assert kern is None and fix == ef.WIDTH_FIX
    takes.update(v2=True, v3=True)
    assert ef.choose_variant(0, 1, 32, 32) == ("v3", "", "")               # both: the default


def test_e88_records_v2_where_the_default_falls_to_it(monkeypatch):
    """fast_e88 records the variant that ran, v2 where v3 does not take the shape."""
    import elmanlab.ops.e88.fused as ef

    monkeypatch.delenv(ef.KERNEL_ENV, raising=False)
    monkeypatch.setattr(ef.CudaBackend, "kernel", None)
    monkeypatch.setattr(ef, "cuda_variant",         # CPU tensors standing in: the choice itself runs
                        lambda q, v, kernel=None: ef.choose_variant(0, 1, q.shape[-1], v.shape[-1], kernel))
    monkeypatch.setattr(ef, "_takes", lambda kern, idx, dtype, n, m: kern == "v2")
    pinned = []
    monkeypatch.setattr(ef.CudaBackend, "pinned",
                        classmethod(lambda cls, kernel=None: pinned.append(kernel) or E88Torch))
    q = F.normalize(torch.randn(2, 9, 3, 8), dim=-1)
    v, a = torch.randn(2, 9, 3, 8), torch.rand(2, 9, 3)
    reset_implementations_used()
    ef.fast_e88(q, q, v, a)
    assert pinned == ["v2"]
    assert implementations_used()["e88"]["path"] == PATHS["v2"]


@pytest.mark.parametrize("kernel", KERNELS)
def test_e88_records_the_variant_that_ran(monkeypatch, kernel):
    """fast_e88 records the variant it runs (the PyTorch backend standing in for the kernel)."""
    import elmanlab.ops.e88.fused as ef

    monkeypatch.setenv(ef.KERNEL_ENV, kernel)
    monkeypatch.setattr(ef, "cuda_variant",         # CPU tensors standing in: the choice itself runs
                        lambda q, v, kernel=None: ef.choose_variant(0, 1, q.shape[-1], v.shape[-1], kernel))
    monkeypatch.setattr(ef, "_takes", lambda kern, idx, dtype, n, m: True)
    pinned = []
    monkeypatch.setattr(ef.CudaBackend, "pinned",
                        classmethod(lambda cls, kernel=None: pinned.append(ef.kernel_variant(kernel)) or E88Torch))
    q = F.normalize(torch.randn(2, 9, 3, 8), dim=-1)
    v, a = torch.randn(2, 9, 3, 8), torch.rand(2, 9, 3)
    reset_implementations_used()
    y, ST = ef.fast_e88(q, q, v, a)
    assert pinned == [kernel]
    assert implementations_used() == {"e88": {"path": PATHS[kernel], "paths": [PATHS[kernel]], "fast": True}}
    yr, STr = e88_scan_ref(q, q, v, a)
    assert rel_err(y, yr) < 1e-5 and rel_err(ST, STr) < 1e-5


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
    (16, 130, 44, 48, 48, torch.bfloat16, "tanh", None, True),   # issue 17's n48 heads
    (2, 37, 3, 16, 5, torch.bfloat16, "tanh", "sigmoid", True),  # odd bf16 value width: v3 copies elements
]


def _case_inputs(B, T, H, n, m, dtype, gate, with_s0, seed, offset=0):
    """q, k, v, decay, S0, g; ``offset`` > 0: q, k, v, g start ``offset`` elements into their storage
    (unaligned pointers: v3 stages them by element copies)."""
    g = _seed(*seed)
    dev = dict(device="cuda", generator=g)

    def place(x):
        if not offset:
            return x
        buf = torch.empty(x.numel() + offset, device="cuda", dtype=x.dtype)
        out = buf[offset:].view(x.shape)
        out.copy_(x)
        return out
    q = place(torch.nn.functional.normalize(torch.randn(B, T, H, n, **dev), dim=-1).to(dtype))
    k = place(torch.nn.functional.normalize(torch.randn(B, T, H, n, **dev), dim=-1).to(dtype))
    v = place(torch.randn(B, T, H, m, **dev).to(dtype))
    a = 0.6 + 0.4 * torch.rand(B, T, H, **dev)
    S0 = 0.3 * torch.randn(B, H, m, n, **dev) if with_s0 else None
    gg = place(torch.randn(B, T, H, m, **dev).to(dtype)) if gate else None
    return q, k, v, a, S0, gg


def _check_kernel(raw, nl, gate, tol, label, kernel, C=None):
    from elmanlab.ops.e88.fused import e88_scan_cuda

    # a copy of each input as a leaf; an input placed at an offset keeps its (unaligned) placement
    ins = [None if x is None else (x.detach() if x.storage_offset() else x.detach().clone()).requires_grad_()
           for x in raw]
    ins64 = [x if x is None else x.detach().double().requires_grad_() for x in raw]
    reset_implementations_used()
    out = e88_scan_cuda(ins[0], ins[1], ins[2], ins[3], ins[4], nl, ins[5], gate or "silu", kernel=kernel, C=C)
    assert implementations_used()["e88"]["paths"] == [PATHS[kernel]], implementations_used()
    ref = e88_scan_ref(ins64[0], ins64[1], ins64[2], ins64[3], ins64[4], nl, ins64[5], gate or "silu")
    _compare(out, ref, ins, ins64, tol, f"{label} {kernel} C={C}|q,k,v,decay,S0,g")


@pytest.mark.gpu
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("B,T,H,n,m,dtype,nl,gate,with_s0", E88_CASES,
                         ids=[f"B{c[0]}T{c[1]}H{c[2]}n{c[3]}m{c[4]}-{str(c[5])[6:]}-{c[6]}-{c[7]}" for c in E88_CASES])
def test_e88_kernel(B, T, H, n, m, dtype, nl, gate, with_s0, kernel):
    raw = _case_inputs(B, T, H, n, m, dtype, gate, with_s0, (B, T, H, n, m, nl, gate))
    _check_kernel(raw, nl, gate, TOL[dtype], f"e88 B{B} T{T} H{H} n{n} m{m} {dtype} {nl} {gate}", kernel)


V3_C_CASES = [  # B, T, H, n, m, dtype, nonlinearity, gate, S0, C, input offset (elements)
    (3, 37, 3, 48, 48, torch.bfloat16, "tanh", "silu", True, 1, 0),
    (3, 37, 3, 48, 48, torch.bfloat16, "tanh", "silu", True, 5, 0),
    (2, 37, 2, 32, 32, torch.float32, "tanh", "sigmoid", True, 7, 0),
    (2, 37, 2, 64, 64, torch.float32, "linear", None, False, 4, 0),
    (2, 9, 2, 32, 32, torch.bfloat16, "tanh", None, True, 16, 0),     # T < C: one partial chunk
    (2, 37, 3, 32, 32, torch.bfloat16, "tanh", "silu", True, 4, 1),   # unaligned q, k, v, g
    (2, 37, 3, 24, 17, torch.float32, "tanh", "silu", True, 3, 1),
    (2, 37, 3, 48, 48, torch.bfloat16, "tanh", "silu", True, 6, 2),   # 4-byte (not 16-byte) aligned inputs
    (2, 64, 3, 48, 48, torch.bfloat16, "tanh", None, True, 6, 0),     # T a multiple of C
    (2, 37, 3, 48, 17, torch.float32, "tanh", "silu", True, 5, 1),    # m % 4 != 0, unaligned, gated
    (2, 37, 2, 32, 20, torch.bfloat16, "tanh", None, True, 3, 0),     # n32, m % 8 != 0 (a partly empty warp)
    (3, 21, 2, 64, 36, torch.bfloat16, "linear", "sigmoid", False, 2, 0),  # n64, m % 8 != 0, gated
]


@pytest.mark.gpu
@pytest.mark.parametrize("kernel", STAGED)
@pytest.mark.parametrize("B,T,H,n,m,dtype,nl,gate,with_s0,C,offset", V3_C_CASES,
                         ids=[f"B{c[0]}T{c[1]}H{c[2]}n{c[3]}m{c[4]}-{str(c[5])[6:]}-{c[6]}-{c[7]}-C{c[9]}-off{c[10]}"
                              for c in V3_C_CASES])
def test_e88_v3_checkpoint_intervals_and_staging(B, T, H, n, m, dtype, nl, gate, with_s0, C, offset, kernel):
    """v3 at forced checkpoint intervals (1..16, T < C), with unaligned inputs (element-wise staging)
    and at value widths m % 4 != 0 and m % 8 != 0."""
    raw = _case_inputs(B, T, H, n, m, dtype, gate, with_s0, (B, T, H, n, m, nl, gate, C), offset)
    if offset:
        assert raw[0].data_ptr() % 16 != 0
        assert raw[0].data_ptr() % 4 != 0 or dtype == torch.float32 or offset % 2 == 0
    _check_kernel(raw, nl, gate, TOL[dtype], f"e88 B{B} T{T} H{H} n{n} m{m} {dtype} {nl} {gate}", kernel, C)


@pytest.mark.gpu
@pytest.mark.parametrize("kernel", STAGED)
def test_e88_v3_refuses_a_checkpoint_interval_that_does_not_fit(kernel):
    """A forced C whose backward does not fit the shared memory is refused before anything runs
    (before: the backward launch failed with 'invalid argument' after the forward had run)."""
    from elmanlab.ops.e88.fused import e88_scan_cuda

    raw = _case_inputs(2, 37, 2, 64, 64, torch.float32, None, False, ("refuse",))
    with pytest.raises(ValueError, match="C=16 does not fit"):
        e88_scan_cuda(*raw[:5], "linear", None, kernel=kernel, C=16)


@pytest.mark.gpu
@pytest.mark.parametrize("kernel", KERNELS)
def test_e88_checkpoint_memory_is_linear(kernel):
    from elmanlab.ops.e88.fused import CudaBackend

    q = torch.randn(2, 512, 4, 32, device="cuda")
    C = CudaBackend.pinned(kernel).plan(q, 32)
    assert C >= 4          # the saved states are T / C per head: O(B T H n) for n = 32
    if kernel in STAGED:   # C >= 4 at every width the layers use, at small and large batches
        for B, H, n in [(2, 4, 48), (16, 44, 48), (64, 32, 48), (16, 56, 32), (64, 64, 32), (8, 8, 64)]:
            qq = torch.empty(B, 1, H, n, device="cuda")
            assert 4 <= CudaBackend.pinned(kernel).plan(qq, n) <= 16


@pytest.mark.gpu
@pytest.mark.parametrize("n,m", [(24, 200), (8, 256), (48, 112), (32, 160)])
def test_e88_default_falls_to_the_variant_that_takes_the_shape(monkeypatch, n, m):
    """Shapes at the edge of one variant's register budget (by ptxas's counts: v3 stops at m 128 for
    n 24 and 160 for n 8, v2 at m 96 for n 48 and 128 for n 32, in bf16) run the other one by default,
    recorded by name, and match the float64 reference."""
    import elmanlab.ops.e88.fused as ef

    monkeypatch.delenv(ef.KERNEL_ENV, raising=False)
    kern, reason, fix = ef.choose_variant(torch.cuda.current_device(), 1, n, m)
    assert kern is not None, (reason, fix)
    raw = _case_inputs(2, 37, 2, n, m, torch.bfloat16, None, True, ("edge", n, m))
    ins = [None if x is None else x.detach().clone().requires_grad_() for x in raw]
    ins64 = [x if x is None else x.detach().double().requires_grad_() for x in raw]
    reset_implementations_used()
    out = ef.fast_e88(*ins[:5], "tanh")
    assert implementations_used()["e88"]["paths"] == [PATHS[kern]], implementations_used()
    ref = e88_scan_ref(*ins64[:5], "tanh")
    _compare(out, ref, ins[:5], ins64[:5], TOL[torch.bfloat16], f"edge n{n} m{m} {kern}|q,k,v,decay,S0")
