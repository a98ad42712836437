"""CPU checks of the baselines' GPU wiring: dispatch, lazy imports, doctor, the #640 refusal."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from elmanlab.errors import ElmanlabError


def test_fast_impls_registered_and_lazy():
    """FAST_IMPLS slots are filled, and importing elmanlab imports no GPU library."""
    code = ("import sys, elmanlab.lm, elmanlab.ops.ssd as s, elmanlab.ops.delta as d, elmanlab.ops.scan as c\n"
            "assert 'default' in s.FAST_IMPLS and 'default' in d.FAST_IMPLS and 'minrnn' in c.FAST_IMPLS\n"
            "bad = [m for m in ('fla', 'mamba_ssm', 'triton', 'tilelang') if m in sys.modules]\n"
            "assert not bad, bad\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_cpu_dispatch_uses_reference(monkeypatch):
    """On CPU tensors the fast implementation is never called."""
    from elmanlab.ops import delta, scan, ssd

    def boom(*a, **k):
        raise AssertionError("fast path called on CPU")
    for mod, key in ((ssd, "default"), (delta, "default"), (delta, "gdn"), (scan, "default"), (scan, "minrnn")):
        monkeypatch.setitem(mod.FAST_IMPLS, key, boom)
    torch.manual_seed(0)
    B, T, H, P, N = 1, 5, 2, 4, 3
    y, _ = ssd.ssd(torch.randn(B, T, H, P), torch.rand(B, T, H), -torch.rand(H), torch.randn(B, T, 1, N),
                   torch.randn(B, T, 1, N))
    assert y.shape == (B, T, H, P)
    q = torch.nn.functional.normalize(torch.randn(B, T, H, 4), dim=-1)
    o, _ = delta.gated_delta_rule(q, q, torch.randn(B, T, H, 6), -torch.rand(B, T, H), torch.rand(B, T, H))
    assert o.shape == (B, T, H, 6)
    o, _ = delta.gdn(q, q, torch.randn(B, T, H, 6), torch.randn(B, T, H), torch.randn(B, T, H), torch.rand(H),
                     torch.randn(H))
    assert o.shape == (B, T, H, 6)
    h, _ = scan.minrnn_scan(torch.randn(B, T, 6), "mingru")
    assert h.shape == (B, T, 3)


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


def test_delta_refuses_training_on_broken_backward(monkeypatch):
    """When fla's gated backward is wrong here (and no TileLang), a step needing gradients raises
    one clear ElmanlabError naming the fix; a forward without gradients is not refused."""
    from elmanlab.ops.delta import fast
    calls = []
    monkeypatch.setattr(fast, "_load", lambda: {"chunk_gated_delta_rule": lambda *a, **k: calls.append(1) or (a[2], None)})
    monkeypatch.setattr(fast, "_BWD", (False, "Hopper GPU with Triton 3.6.0: ... Fix: install TileLang"))
    q = torch.nn.functional.normalize(torch.randn(1, 4, 1, 8), dim=-1).requires_grad_()
    v, g, beta = torch.randn(1, 4, 1, 8), -torch.rand(1, 4, 1), torch.rand(1, 4, 1)
    with pytest.raises(ElmanlabError, match="TileLang"):
        fast.gated_delta_rule_fast(q, q, v, g, beta, 0.3)
    assert not calls
    with torch.no_grad():
        fast.gated_delta_rule_fast(q, q, v, g, beta, 0.3)
    assert calls == [1]
    assert "refused" in fast.backend_info()["path"]


def test_doctor_cpu_output():
    r = subprocess.run([sys.executable, "-m", "elmanlab", "doctor"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for word in ("torch", "triton", "fla", "mamba_ssm", "TileLang", "GPU"):
        assert word in r.stdout
    fams = ["e1", "e33", "e42", "e88", "mamba2", "gdn", "mingru", "minlstm"]
    lines = {l.split()[0]: l for l in r.stdout.splitlines() if l.strip() and l.split()[0] in fams}
    assert set(lines) == set(fams)
    if not torch.cuda.is_available():
        assert all("reference" in l and "no CUDA" in l for l in lines.values())


def test_doctor_json():
    import json
    r = subprocess.run([sys.executable, "-m", "elmanlab", "doctor", "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["machine"]["torch"] == torch.__version__
    assert len(d["families"]) == 8 and all("path" in v for v in d["families"].values())


def test_install_script_refuses_missing_wheelhouse(tmp_path):
    script = Path(__file__).resolve().parents[1] / "scripts" / "install-gpu.sh"
    r = subprocess.run(["bash", str(script), str(tmp_path / "none")], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error:") and "build-wheelhouse" in r.stderr


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


@pytest.mark.parametrize("family", ["mamba2", "gdn"])
def test_layer_fast_conv_glue_with_a_stand_in(monkeypatch, family):
    """The layers' one-call fast conv (GDN: q, k, v's three convs as one) with a float64 stand-in for
    fla's causal_conv1d: same output and same conv states as the layer's own ShortConvs."""
    import torch.nn.functional as F
    from elmanlab.layers import common
    from elmanlab.lm import LM
    from elmanlab.ops.delta import fast as delta_fast
    from elmanlab.sizing import model_config

    def conv_stand_in(x, weight, bias, activation):           # [B, T, C], weight [C, 1, K]
        K = weight.shape[-1]
        y = F.conv1d(F.pad(x.transpose(1, 2), (K - 1, 0)), weight, bias, groups=x.shape[-1]).transpose(1, 2)
        return F.silu(y) if activation == "silu" else y

    torch.manual_seed(0)
    layer = LM(model_config(family, dim=64, depth=1)).double().blocks[0].layer
    u = torch.randn(2, 9, 64, dtype=torch.float64)
    ref, ref_state = layer(u)
    calls = []
    monkeypatch.setattr(delta_fast, "short_conv_fast", lambda *a: calls.append(1) or conv_stand_in(*a))
    monkeypatch.setattr(common, "fast_path_enabled", lambda *t: True)
    from elmanlab.ops.ssd import fast as ssd_fast      # Mamba2's fused norm: keep its own (no mamba_ssm here)
    monkeypatch.setattr(ssd_fast, "gated_rmsnorm_fast", lambda *a, **k: None)
    out, state = layer(u)
    assert calls == [1]
    assert torch.allclose(out, ref, rtol=1e-10, atol=1e-12)
    n_conv = 3 if family == "gdn" else 1
    for a, b in zip(state[:n_conv], ref_state[:n_conv]):
        assert torch.equal(a, b)
