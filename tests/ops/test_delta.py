"""The gated delta rule (ops/delta): the chunked reference against the recurrent one (float64);
on CPU fla's glue with a float64 stand-in for fla and the refusal of training where fla's
backward is wrong (fla #640); on the GPU (marked ``gpu``, skipped without CUDA; a missing fla
fails) fla's kernels in bf16 against the float64 reference: relative RMS error <= 1e-2 for the
output, the final state and every input gradient."""
import pytest
import torch
import torch.nn.functional as F

from conftest import rel_err
from elmanlab.errors import ElmanlabError
from elmanlab.ops import implementations_used, reset_implementations_used
from elmanlab.ops.delta import gated_delta_rule_chunked, gated_delta_rule_recurrent
from op_checks import D64, DEV, LENGTHS, _check, _leaf, _run


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


def test_delta_refuses_training_on_broken_backward(monkeypatch):
    """When fla's gated backward is wrong here (and no TileLang), a step needing gradients raises
    one clear ElmanlabError naming the fix; a forward without gradients is not refused."""
    from elmanlab.ops.delta import fast
    calls = []
    monkeypatch.setattr(fast, "_load", lambda: {"chunk_gated_delta_rule": lambda *a, **k: calls.append(1) or (a[2], None)})
    monkeypatch.setattr(fast, "_BWD", (False, "Hopper GPU with Triton 3.6.0: wrong backward. Fix: install TileLang"))
    q = torch.nn.functional.normalize(torch.randn(1, 4, 1, 8), dim=-1).requires_grad_()
    v, g, beta = torch.randn(1, 4, 1, 8), -torch.rand(1, 4, 1), torch.rand(1, 4, 1)
    with pytest.raises(ElmanlabError, match="TileLang"):
        fast.gated_delta_rule_fast(q, q, v, g, beta, 0.3)
    assert not calls
    with torch.no_grad():
        fast.gated_delta_rule_fast(q, q, v, g, beta, 0.3)
    assert calls == [1]
    info = fast.backend_info()
    assert "refused" in info["path"] and info["fast"] is False
    assert info["reason"] == "Hopper GPU with Triton 3.6.0: wrong backward" and info["fix"] == "install TileLang"


@pytest.mark.parametrize("fla_version", ["0.6 (gates in kernel)", "older (l2norm only)"])
def test_gdn_fast_glue_with_a_stand_in_fla(monkeypatch, fla_version):
    """gdn_fast's call into fla, with a float64 stand-in for fla's chunk_gated_delta_rule that does
    what fla's flags say: the result and every gradient equal the reference path, with fla >= 0.6's
    in-kernel gates and with an older signature (no gate keywords: gates computed here)."""
    import torch.nn.functional as F
    import elmanlab.ops.delta.fast as fast
    from elmanlab.ops.delta.reference import gated_delta_rule_chunked, gdn_inputs
    from conftest import rel_err

    seen = {}

    def new_fla(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                use_qk_l2norm_in_kernel=False, use_beta_sigmoid_in_kernel=False, **kw):
        seen.update(kw, l2=use_qk_l2norm_in_kernel, sigmoid=use_beta_sigmoid_in_kernel)
        if use_qk_l2norm_in_kernel:
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        if kw.get("use_gate_in_kernel"):
            g = -torch.exp(kw["A_log"]) * F.softplus(g + kw["dt_bias"])
        if use_beta_sigmoid_in_kernel:
            beta = torch.sigmoid(beta)
        return gated_delta_rule_chunked(q, k, v, g, beta, scale, initial_state)

    def old_fla(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                use_qk_l2norm_in_kernel=False):
        return new_fla(q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel)

    fn = new_fla if fla_version.startswith("0.6") else old_fla
    monkeypatch.setattr(fast, "_FLA", {"chunk_gated_delta_rule": fn})
    monkeypatch.setattr(fast, "_BWD", (True, "stand-in"))
    g = torch.Generator().manual_seed(0)
    B, T, H, K, V = 2, 9, 2, 4, 6
    ins = [torch.randn(*s, generator=g, dtype=torch.float64) for s in
           ((B, T, H, K), (B, T, H, K), (B, T, H, V), (B, T, H), (B, T, H), (H,), (H,), (B, H, K, V))]
    a1 = [x.clone().requires_grad_() for x in ins]
    a2 = [x.clone().requires_grad_() for x in ins]
    o1, s1 = fast.gdn_fast(*a1[:7], 0.5, a1[7])
    qn, kn, gg, beta = gdn_inputs(*a2[:2], *a2[3:7])
    o2, s2 = gated_delta_rule_chunked(qn, kn, a2[2], gg, beta, 0.5, a2[7])
    # 1e-5: the older path hands fla the decay in float32, as fla wants it
    assert rel_err(o1, o2) < 1e-5 and rel_err(s1, s2) < 1e-5
    w = torch.randn(o1.shape, generator=g, dtype=torch.float64)
    for x1, x2 in zip(torch.autograd.grad((o1 * w).sum() + s1.sum(), a1),
                      torch.autograd.grad((o2 * w).sum() + s2.sum(), a2)):
        assert rel_err(x1, x2) < 1e-5
    assert seen["l2"] is True
    assert seen.get("use_gate_in_kernel", False) is fn.__name__.startswith("new")
    assert seen["sigmoid"] is fn.__name__.startswith("new")


def _assert_fla_ran(fast):
    path = fast.backend_info()["path"]
    assert path.startswith(fast.NAME + ", backward via"), path
    assert implementations_used() == {"delta": {"path": path, "paths": [path], "fast": True}}, implementations_used()


# K 256 / V 512 is the layer's default head (head_dim 256, expand_v 2) at every size: all GDN tests use it,
# so fla's autotuning and TileLang's JIT compile run once per process (minutes on a fresh machine)
@pytest.mark.gpu
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
    reset_implementations_used()
    out, state = fast.gated_delta_rule_fast(q_, k_, v_, g_, b_, K ** -0.5, s_)
    _assert_fla_ran(fast)
    ((out.double() * cot[0]).sum() + (state.double() * cot[1]).sum()).backward()
    got = {"out": out.detach(), "state": state.detach()}
    got.update({"d" + n: l.grad for n, l in zip(names, leaves) if l is not None})
    ref = _run(lambda q, k, v, g, b, s: gated_delta_rule_recurrent(q, k, v, g, b, K ** -0.5, s),
               [None if l is None else l.detach().double() for l in leaves], names, torch.float64, cot)
    _check(rel, "gated_delta_rule", got, ref)


@pytest.mark.gpu
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
    reset_implementations_used()
    out, state = fast.gdn_fast(*leaves[:7], K ** -0.5, leaves[7])
    _assert_fla_ran(fast)
    assert fast._load()["fused_inputs"], "fla took the older path (gates computed in PyTorch)"
    ((out.double() * cot[0]).sum() + (state.double() * cot[1]).sum()).backward()
    got = {"out": out.detach(), "state": state.detach()}
    got.update({"d" + n: l.grad for n, l in zip(names, leaves) if l is not None})

    def ref_fn(q, k, v, a, b, A_log, dt_bias, S0):
        qn, kn, g, beta = gdn_inputs(q, k, a, b, A_log, dt_bias)
        return gated_delta_rule_recurrent(qn, kn, v, g, beta, K ** -0.5, S0)
    ref = _run(ref_fn, [None if l is None else l.detach().double() for l in leaves], names, torch.float64, cot)
    _check(rel, "gdn (raw inputs)", got, ref)
