"""The layers' fast paths against the same layers on the reference: on CPU the one-call fast conv
with a float64 stand-in for fla's kernel; on the GPU (marked ``gpu``, skipped without CUDA; a
missing library fails) whole LMs of each family, the fast path (kernels + fused conv / norm)
against the same model forced onto the reference (float32), and in bf16 against float64, loss and
every parameter gradient; Elman / E88 kernel outputs poisoned with NaN before each call. Every GPU
test asserts, from the ops' record of what ran, that the fast path it compares is the one that ran
(a library missing or a fallback fails instead of comparing the reference with itself)."""
import copy

import pytest
import torch

from conftest import rel_err
from elmanlab.ops import force_reference, implementations_used, reset_implementations_used
from op_checks import DEV, TOL, _check, assert_fast_path_ran


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    import elmanlab.ops.e88.fused as ef
    import elmanlab.ops.elman.fused as lf

    monkeypatch.setattr(lf, "POISON", True)
    monkeypatch.setattr(ef, "POISON", True)


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


@pytest.mark.gpu
@pytest.mark.parametrize("model,opts", [("e1", {}), ("e33", {}), ("e42", {}),
                                        ("e88", {"n_state": 16, "use_gate": True})])
def test_layers_fast_path_matches_reference(model, opts):
    from elmanlab.config import ModelConfig
    from elmanlab.lm import LM
    from elmanlab.ops import force_reference

    from elmanlab.ops.e88.fused import NAME as E88_KERNEL
    from elmanlab.ops.elman.fused import PERSISTENT

    torch.manual_seed(0)
    lm = LM(ModelConfig(model, 96, 2, dict(opts))).cuda().eval()   # eval: no power-iteration updates
    idx = torch.randint(0, 256, (3, 37), device="cuda")
    reset_implementations_used()
    logits = lm(idx)[0]
    logits.float().square().mean().backward()
    kernel = E88_KERNEL if model == "e88" else PERSISTENT["linear" if model == "e42" else "tanh"]
    assert_fast_path_ran(lm.cfg, expect=kernel)                  # d_inner 96: the package's own kernels
    grads = [p.grad.clone() for p in lm.parameters()]
    lm.zero_grad()
    with force_reference():
        ref = lm(idx)[0]
        ref.float().square().mean().backward()
    assert rel_err(logits, ref) < 1e-4
    for g_fast, p in zip(grads, lm.parameters()):
        assert rel_err(g_fast, p.grad) < 1e-3


# Gradients of the per-head scalars (A_log, dt_bias) of a whole layer are sums over batch, time and
# channels with heavy cancellation, so their relative error is several times that of the other
# gradients. Measured on an H200 (2026-11-25): GDN float32 1.5-1.9e-2 (decay computed inside fla's
# kernel; every other gradient about 1e-3), Mamba2 bf16 2.2-3.6e-2 (others 5e-3 to 1.2e-2). Loosened
# only where measured so; the op-level tests hold dA_log / ddt_bias to 1e-2.
PER_HEAD = {"A_log": 6e-2, "dt_bias": 6e-2}


LOOSE_FP32 = {"gdn": PER_HEAD}


LOOSE_BF16 = {"mamba2": PER_HEAD}


LAYERS = [("mamba2", 128, {}), ("gdn", 256, {"n_heads": 1}), ("mingru", 96, {}),
          ("minlstm", 96, {"expansion": 1.5})]


def _assert_fast(model, dim, opts):
    """A layer test compares the fast path with the reference: it proves nothing if the fast path
    itself fell back to the reference (a library missing), so that fails here, before it runs."""
    from elmanlab.config import ModelConfig
    cfg = ModelConfig(model, dim=dim, depth=2, options=dict(opts))
    info = cfg.family.backend_info(cfg.dim, cfg.options)
    assert info["fast"] and "refused" not in info["path"], f"{model}: {info}"
    reset_implementations_used()
    return cfg


@pytest.mark.gpu
@pytest.mark.parametrize("model,dim,opts", LAYERS)
def test_layer_fast_path_matches_reference(rel, model, dim, opts):
    cfg = _assert_fast(model, dim, opts)
    from elmanlab.lm import LM
    torch.manual_seed(1)
    fast_model = LM(cfg).to(DEV)
    ref_model = copy.deepcopy(fast_model)
    x = torch.randint(0, 256, (2, 131), device=DEV)
    _, loss_f = fast_model(x[:, :-1], x[:, 1:])
    loss_f.backward()
    assert_fast_path_ran(cfg)
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


@pytest.mark.gpu
@pytest.mark.parametrize("model,dim,opts", LAYERS)
def test_layer_fast_path_bf16_matches_float64_reference(rel, model, dim, opts):
    """The training precision: the fast path under bf16 autocast against the same model's reference
    path in float64 on the CPU; loss and every parameter gradient within bf16's error (3e-2)."""
    cfg = _assert_fast(model, dim, opts)
    _, _, got, ref = _bf16_against_float64(cfg, 3, lambda: assert_fast_path_ran(cfg))
    _check(rel, model + " bf16", got, ref, tol=3e-2, loose=LOOSE_BF16.get(model))


def _bf16_against_float64(cfg, seed, check_fast):
    """The model under bf16 autocast on the GPU and its copy in float64 on the CPU (the reference
    path), the same batch through both: (fast model, batch, got, ref) with the loss and every
    parameter gradient. ``check_fast()`` runs right after the fast pass, before the reference's
    own record of what ran."""
    from elmanlab.lm import LM
    torch.manual_seed(seed)
    fast_model = LM(cfg).to(DEV)
    ref_model = copy.deepcopy(fast_model).to("cpu", torch.float64)
    x = torch.randint(0, 256, (2, 131), device=DEV)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        _, loss_f = fast_model(x[:, :-1], x[:, 1:])
    loss_f.backward()
    check_fast()
    xc = x.cpu()
    _, loss_r = ref_model(xc[:, :-1], xc[:, 1:])
    loss_r.backward()
    got = {"loss": loss_f.detach().reshape(1).cpu().double()}
    ref = {"loss": loss_r.detach().reshape(1)}
    for (n, pf), (_, pr) in zip(fast_model.named_parameters(), ref_model.named_parameters()):
        if pr.grad is not None:
            got["d" + n], ref["d" + n] = pf.grad.cpu().double(), pr.grad
    return fast_model, x, got, ref


@pytest.mark.gpu
@pytest.mark.parametrize("dim,opts", [(256, {}), (256, {"head_dim": 128}), (192, {"head_dim": 64, "n_heads": 2})])
def test_transformer_flash_bf16_matches_float64_reference(rel, dim, opts):
    """The transformer as training runs it (bf16 autocast: flash SDPA, the record says "flash")
    against the same model's reference in float64 on the CPU: loss and every parameter gradient;
    float32 outside autocast is not flash's: the reference runs there, recorded as such."""
    cfg = _assert_fast("transformer", dim, opts)
    assert cfg.family.backend_info(cfg.dim, cfg.options)["path"] == "flash"

    def ran_flash():
        assert implementations_used()["attention"] == {"path": "flash", "paths": ["flash"], "fast": True}
        assert_fast_path_ran(cfg, expect="flash")
    fast_model, x, got, ref = _bf16_against_float64(cfg, 5, ran_flash)
    assert len(got) == 1 + len(list(fast_model.parameters()))     # every parameter has a gradient
    _check(rel, "transformer bf16", got, ref, tol=3e-2)
    reset_implementations_used()
    with torch.no_grad():
        fast_model(x[:, :-1])                                    # float32, no autocast
    assert implementations_used()["attention"]["path"] == "reference"


@pytest.mark.gpu
def test_transformer_generation_with_the_kv_cache_on_gpu(rel):
    """bf16: the prompt through flash, then one byte at a time through the cache (the masked path)
    gives the full forward's logits."""
    from elmanlab.config import ModelConfig
    from elmanlab.lm import LM
    torch.manual_seed(6)
    m = LM(ModelConfig("transformer", 256, 2)).to(DEV).eval()
    x = torch.randint(0, 256, (2, 40), device=DEV)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        full = m(x)[0]
        reset_implementations_used()
        logits, _, st = m(x[:, :30], return_states=True)
        outs = [logits]
        for t in range(30, 40):
            lg, st = m.step(x[:, t], st)
            outs.append(lg[:, None])
    from elmanlab.ops.attention.fast import CACHED
    assert implementations_used()["attention"]["paths"] == ["flash", CACHED]
    assert rel(torch.cat(outs, 1).float(), full.float()) < 2e-2


@pytest.mark.gpu
@pytest.mark.parametrize("model", ["mamba2", "gdn", "mingru", "minlstm", "transformer"])
def test_layer_bf16_training_step_is_finite(model):
    """bf16 autocast, the way the training loop runs: loss and every gradient finite."""
    from elmanlab.config import ModelConfig
    from elmanlab.lm import LM
    torch.manual_seed(2)
    opts = {"n_heads": 1} if model == "gdn" else {}
    m = LM(ModelConfig(model, dim=256, depth=2, options=opts)).to(DEV)
    x = torch.randint(0, 256, (3, 200), device=DEV)
    reset_implementations_used()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        _, loss = m(x[:, :-1], x[:, 1:])
    loss.backward()
    assert_fast_path_ran(m.cfg)
    assert torch.isfinite(loss)
    for n, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["mamba2", "gdn"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_short_conv_matches_the_layer_conv(rel, family, dtype):
    """The layers' causal conv + SiLU through fla's Triton kernel (Mamba2's conv on x, B, C; GDN's
    three convs as one) against the layer's own ShortConv modules: output and new conv state; the
    record names fla's kernel."""
    import torch.nn.functional as F
    from elmanlab.layers.common import fast_short_conv
    from elmanlab.lm import LM
    from elmanlab.ops.delta.fast import CONV_NAME
    from elmanlab.sizing import model_config
    torch.manual_seed(4)
    layer = LM(model_config(family, dim=256, depth=1)).to(DEV).blocks[0].layer
    convs = [layer.conv] if family == "mamba2" else [layer.q_conv, layer.k_conv, layer.v_conv]
    C = sum(c.channels for c in convs)
    x = torch.randn(2, 77, C, device=DEV, dtype=dtype)
    reset_implementations_used()
    with torch.no_grad():
        res = fast_short_conv(x, [c.weight for c in convs], convs[0].bias, None, "silu")
        assert res is not None, "fla's causal_conv1d is not usable here"
        y, state = res
        assert implementations_used() == {"short_conv": {"path": CONV_NAME, "paths": [CONV_NAME], "fast": True}}
        refs, states, at = [], [], 0
        for c in convs:
            r, s = c(x[..., at:at + c.channels].float())
            refs.append(F.silu(r))
            states.append(s)
            at += c.channels
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert y.dtype == dtype and rel(y, torch.cat(refs, -1)) <= tol
    assert torch.equal(state.float(), torch.cat(states, -1))
