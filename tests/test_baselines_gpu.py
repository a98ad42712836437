"""GPU checks of the baselines' fast paths against the plain-PyTorch references.

Each op: fresh random inputs at odd shapes, the fast path in bf16 (the precision training uses)
against the reference evaluated in float64 on the same (upcast) inputs; relative RMS error
||out - ref|| / ||ref|| <= 1e-2 for the output, the final state and every input gradient. The
layers: the whole CUDA fast path of a layer (kernels + fused conv / norm) against the same layer
forced onto the reference, float32, output and every parameter gradient.
Skipped without CUDA (conftest). Missing libraries fail the test: the GPU set-up must be complete.
"""
import copy

import pytest
import torch

from elmanlab.ops import force_reference

pytestmark = pytest.mark.gpu
TOL = 1e-2
DEV = "cuda"


def _leaf(t, dtype):
    return t.detach().to(dtype).requires_grad_(True)


def _check(rel, name, outs, refs, tol=TOL):
    errs = {}
    for key, o in outs.items():
        r = refs[key]
        assert o is not None and r is not None, f"{name}: missing {key}"
        assert torch.isfinite(o.float()).all(), f"{name}: {key} has non-finite values"
        errs[key] = rel(o, r)
    bad = {k: f"{v:.2e}" for k, v in errs.items() if not v <= tol}
    assert not bad, f"{name}: relative RMS error above {tol}: {bad} (all: { {k: f'{v:.1e}' for k, v in errs.items()} })"
    return errs


def _run(fn, inputs, names, dtype, grads_out):
    """Call fn on leaves of `inputs` in `dtype`; backprop fixed random cotangents; return outputs+grads."""
    leaves = [_leaf(x, dtype) if x is not None else None for x in inputs]
    out, state = fn(*leaves)
    loss = (out.double() * grads_out[0]).sum() + (state.double() * grads_out[1]).sum()
    loss.backward()
    res = {"out": out.detach(), "state": state.detach()}
    for n, leaf in zip(names, leaves):
        if leaf is not None:
            res["d" + n] = leaf.grad
    return res


# ------------------------------------------------------------------ SSD (mamba_ssm)

@pytest.mark.parametrize("T,H,G,with_state", [(100, 6, 1, False), (77, 4, 2, True)])
def test_ssd_fast_matches_reference(rel, T, H, G, with_state):
    from elmanlab.ops.ssd import fast, ssd_chunked
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
    names = ["x", "dt", "A", "B", "C", "D", "S0"]
    # bf16 activations (x, B, C) as in training; dt, A, D, state float32 as the layer passes them
    def fast_fn(x, dt, A, Bm, Cm, D, S0):
        return fast.ssd_fast(x, dt, A, Bm, Cm, D, S0, 64)
    leaves_dtypes = [torch.bfloat16, torch.float32, torch.float32, torch.bfloat16, torch.bfloat16,
                     torch.float32, torch.float32]
    leaves = [None if t is None else _leaf(t.to(dtp), dtp) for t, dtp in zip((x, dt, A, Bm, Cm, D, S0), leaves_dtypes)]
    out, state = fast_fn(*leaves)
    ((out.double() * cot[0]).sum() + (state.double() * cot[1]).sum()).backward()
    got = {"out": out.detach(), "state": state.detach()}
    got.update({"d" + n: l.grad for n, l in zip(names, leaves) if l is not None})
    # reference in float64 on the same rounded inputs
    ref = _run(lambda *a: ssd_chunked(*a, chunk_size=64),
               [None if l is None else l.detach().double() for l in leaves], names, torch.float64, cot)
    _check(rel, "ssd", got, ref)


# ------------------------------------------------------------------ Gated delta rule (fla)

# K 256 / V 512 is the layer's default head (head_dim 256, expand_v 2) at every size: all GDN tests use it,
# so fla's autotuning and TileLang's JIT compile run once per process (minutes on a fresh machine)
@pytest.mark.parametrize("T,H,K,V,with_state", [(77, 2, 256, 512, False), (130, 3, 256, 512, True)])
def test_gated_delta_rule_fast_matches_reference(rel, T, H, K, V, with_state):
    from elmanlab.ops.delta import fast, gated_delta_rule_recurrent
    info = fast.backend_info()
    assert info["path"] != "reference" and "refused" not in info["path"], info["reason"]
    torch.manual_seed(T)
    B = 2
    q = torch.nn.functional.normalize(torch.randn(B, T, H, K, device=DEV), dim=-1)
    k = torch.nn.functional.normalize(torch.randn(B, T, H, K, device=DEV), dim=-1)
    v = torch.randn(B, T, H, V, device=DEV)
    g = -torch.rand(B, T, H, device=DEV) * 0.5
    beta = torch.rand(B, T, H, device=DEV)
    S0 = torch.randn(B, H, K, V, device=DEV) * 0.1 if with_state else None
    cot = (torch.randn(B, T, H, V, device=DEV, dtype=torch.float64),
           torch.randn(B, H, K, V, device=DEV, dtype=torch.float64))
    names = ["q", "k", "v", "g", "beta", "S0"]
    dtypes = [torch.bfloat16, torch.bfloat16, torch.bfloat16, torch.float32, torch.bfloat16, torch.float32]
    leaves = [None if t is None else _leaf(t.to(d), d) for t, d in zip((q, k, v, g, beta, S0), dtypes)]
    q_, k_, v_, g_, b_, s_ = leaves
    out, state = fast.gated_delta_rule_fast(q_, k_, v_, g_, b_, K ** -0.5, s_)
    ((out.double() * cot[0]).sum() + (state.double() * cot[1]).sum()).backward()
    got = {"out": out.detach(), "state": state.detach()}
    got.update({"d" + n: l.grad for n, l in zip(names, leaves) if l is not None})
    ref = _run(lambda q, k, v, g, b, s: gated_delta_rule_recurrent(q, k, v, g, b, K ** -0.5, s),
               [None if l is None else l.detach().double() for l in leaves], names, torch.float64, cot)
    _check(rel, "gated_delta_rule", got, ref)


# ------------------------------------------------------------------ Scan (elmanlab Triton)

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
    got = _run(fast.linear_scan_fast, [a, b, h0], names, torch.float32, cot)
    ref = _run(linear_scan_sequential, [a, b, h0], names, torch.float64, cot)
    _check(rel, "linear_scan", got, ref, tol=1e-4)


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
    out, st = fast.minrnn_scan_fast(pl, kind, hl)
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


# ------------------------------------------------------------------ whole layers: fast path vs reference

LAYERS = [("mamba2", 128, {}), ("gdn", 256, {"n_heads": 1}), ("mingru", 96, {}),
          ("minlstm", 96, {"expansion": 1.5})]


@pytest.mark.parametrize("model,dim,opts", LAYERS)
def test_layer_fast_path_matches_reference(rel, model, dim, opts):
    from elmanlab.config import ModelConfig
    from elmanlab.lm import LM
    torch.manual_seed(1)
    cfg = ModelConfig(model, dim=dim, depth=2, options=opts)
    fast_model = LM(cfg).to(DEV)
    ref_model = copy.deepcopy(fast_model)
    x = torch.randint(0, 256, (2, 131), device=DEV)
    _, loss_f = fast_model(x[:, :-1], x[:, 1:])
    loss_f.backward()
    with force_reference():
        _, loss_r = ref_model(x[:, :-1], x[:, 1:])
        loss_r.backward()
    got = {"loss": loss_f.detach().reshape(1)}
    ref = {"loss": loss_r.detach().reshape(1)}
    for (n, pf), (_, pr) in zip(fast_model.named_parameters(), ref_model.named_parameters()):
        if pr.grad is not None:
            got["d" + n], ref["d" + n] = pf.grad, pr.grad
    # float32 throughout; the kernels' dots run in tf32 -> errors near 1e-3
    _check(rel, model, got, ref, tol=TOL)


@pytest.mark.parametrize("model", ["mamba2", "gdn", "mingru", "minlstm"])
def test_layer_bf16_training_step_is_finite(model):
    """bf16 autocast, the way the training loop runs: loss and every gradient finite."""
    from elmanlab.config import ModelConfig
    from elmanlab.lm import LM
    torch.manual_seed(2)
    opts = {"n_heads": 1} if model == "gdn" else {}
    m = LM(ModelConfig(model, dim=256, depth=2, options=opts)).to(DEV)
    x = torch.randint(0, 256, (3, 200), device=DEV)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        _, loss = m(x[:, :-1], x[:, 1:])
    loss.backward()
    assert torch.isfinite(loss)
    for n, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
