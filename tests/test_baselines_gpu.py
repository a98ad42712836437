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


# Gradients of the per-head scalars (A_log, dt_bias) of a whole layer are sums over batch, time and
# channels with heavy cancellation, so their relative error is several times that of the other
# gradients. Measured on an H200 (2026-11-25): GDN float32 1.5-1.9e-2 (decay computed inside fla's
# kernel; every other gradient about 1e-3), Mamba2 bf16 2.2-3.6e-2 (others 5e-3 to 1.2e-2). Loosened
# only where measured so; the op-level tests hold dA_log / ddt_bias to 1e-2.
PER_HEAD = {"A_log": 6e-2, "dt_bias": 6e-2}
LOOSE_FP32 = {"gdn": PER_HEAD}
LOOSE_BF16 = {"mamba2": PER_HEAD}


def _check(rel, name, outs, refs, tol=TOL, loose=None):
    errs = {}
    for key, o in outs.items():
        r = refs[key]
        assert o is not None and r is not None, f"{name}: missing {key}"
        assert torch.isfinite(o.float()).all(), f"{name}: {key} has non-finite values"
        errs[key] = rel(o, r)

    def limit(key):
        return next((t for part, t in (loose or {}).items() if key.endswith(part)), tol)
    bad = {k: f"{v:.2e}" for k, v in errs.items() if not v <= limit(k)}
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
    out, state = fast_fn(*leaves)
    ((out.double() * cot[0]).sum() + (state.double() * cot[1]).sum()).backward()
    got = {"out": out.detach(), "state": state.detach()}
    got.update({"d" + n: l.grad for n, l in zip(names, leaves) if l is not None})
    # reference in float64 on the same rounded inputs
    def ref_fn(x, dt, A, Bm, Cm, D, S0, dt_bias):
        return ssd_chunked(x, step_size(dt, dt_bias, raw_dt), A, Bm, Cm, D, S0, chunk_size=64)
    ref = _run(ref_fn, [None if l is None else l.detach().double() for l in leaves], names, torch.float64, cot)
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


@pytest.mark.parametrize("T,H,with_state", [(77, 2, False), (130, 1, True)])
def test_gdn_raw_inputs_fast_matches_reference(rel, T, H, with_state):
    """The layer's call: q, k before L2 normalisation, decay and beta logits, A_log and dt_bias, all
    transformed inside fla's kernels; every gradient including A_log's and dt_bias's."""
    from elmanlab.ops.delta import fast, gated_delta_rule_recurrent, gdn_inputs
    torch.manual_seed(T + 7)
    B, K, V = 2, 256, 512
    q, k = torch.randn(B, T, H, K, device=DEV), torch.randn(B, T, H, K, device=DEV)
    v = torch.randn(B, T, H, V, device=DEV)
    a, b = torch.randn(B, T, H, device=DEV), torch.randn(B, T, H, device=DEV)
    A_log, dt_bias = torch.rand(H, device=DEV) * 2, torch.randn(H, device=DEV) - 3
    S0 = torch.randn(B, H, K, V, device=DEV) * 0.1 if with_state else None
    cot = (torch.randn(B, T, H, V, device=DEV, dtype=torch.float64),
           torch.randn(B, H, K, V, device=DEV, dtype=torch.float64))
    names = ["q", "k", "v", "a", "b", "A_log", "dt_bias", "S0"]
    dtypes = [torch.bfloat16] * 5 + [torch.float32] * 3
    leaves = [None if t is None else _leaf(t.to(d), d) for t, d in zip((q, k, v, a, b, A_log, dt_bias, S0), dtypes)]
    out, state = fast.gdn_fast(*leaves[:7], K ** -0.5, leaves[7])
    assert fast._load()["fused_inputs"], "fla took the older path (gates computed in PyTorch)"
    ((out.double() * cot[0]).sum() + (state.double() * cot[1]).sum()).backward()
    got = {"out": out.detach(), "state": state.detach()}
    got.update({"d" + n: l.grad for n, l in zip(names, leaves) if l is not None})

    def ref_fn(q, k, v, a, b, A_log, dt_bias, S0):
        qn, kn, g, beta = gdn_inputs(q, k, a, b, A_log, dt_bias)
        return gated_delta_rule_recurrent(qn, kn, v, g, beta, K ** -0.5, S0)
    ref = _run(ref_fn, [None if l is None else l.detach().double() for l in leaves], names, torch.float64, cot)
    _check(rel, "gdn (raw inputs)", got, ref)


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


def _assert_fast(model):
    """A layer test compares the fast path with the reference: it proves nothing if the fast path
    itself fell back to the reference (a library missing), so that fails here."""
    import importlib
    from elmanlab.doctor import FAMILY_OPS
    info = importlib.import_module(f"elmanlab.ops.{FAMILY_OPS[model]}.fast").backend_info()
    assert info["path"] != "reference" and "refused" not in info["path"], f"{model}: {info}"


@pytest.mark.parametrize("model,dim,opts", LAYERS)
def test_layer_fast_path_matches_reference(rel, model, dim, opts):
    _assert_fast(model)
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
    _check(rel, model, got, ref, tol=TOL, loose=LOOSE_FP32.get(model))


@pytest.mark.parametrize("model,dim,opts", LAYERS)
def test_layer_fast_path_bf16_matches_float64_reference(rel, model, dim, opts):
    """The training precision: the fast path under bf16 autocast against the same model's reference
    path in float64 on the CPU; loss and every parameter gradient within bf16's error (3e-2)."""
    _assert_fast(model)
    from elmanlab.config import ModelConfig
    from elmanlab.lm import LM
    torch.manual_seed(3)
    fast_model = LM(ModelConfig(model, dim=dim, depth=2, options=opts)).to(DEV)
    ref_model = copy.deepcopy(fast_model).to("cpu", torch.float64)
    x = torch.randint(0, 256, (2, 131), device=DEV)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        _, loss_f = fast_model(x[:, :-1], x[:, 1:])
    loss_f.backward()
    xc = x.cpu()
    _, loss_r = ref_model(xc[:, :-1], xc[:, 1:])
    loss_r.backward()
    got = {"loss": loss_f.detach().reshape(1).cpu().double()}
    ref = {"loss": loss_r.detach().reshape(1)}
    for (n, pf), (_, pr) in zip(fast_model.named_parameters(), ref_model.named_parameters()):
        if pr.grad is not None:
            got["d" + n], ref["d" + n] = pf.grad.cpu().double(), pr.grad
    _check(rel, model + " bf16", got, ref, tol=3e-2, loose=LOOSE_BF16.get(model))


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
