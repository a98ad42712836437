"""What ran, recorded at run time (``elmanlab.ops.implementations_used``): the record's shape; on
CPU every family's LM records its ops' references; with fake CUDA paths (the dispatch told that the
tensors are on CUDA, the kernels replaced by stand-ins of the same math: the TorchBackend of the
Elman / E88 kernels' contract, float stand-ins for mamba_ssm, fla and the Triton scan) each op
records the fast path that ran, and each fallback (cuDNN stepping stone, chunked E42 form, E88's
reference when its kernel rejects the width, a missing library) records what it fell back to."""
import types

import pytest
import torch
import torch.nn.functional as F

from conftest import rel_err
from elmanlab.config import ModelConfig
from elmanlab.lm import LM
from elmanlab.ops import implementations_used, reset_implementations_used
from elmanlab.ops._dispatch import record
from op_checks import REF, _fresh_record, one  # noqa: F401 (an autouse fixture)



def run_lm(model, dim=32, opts=None, seed=0):
    """One forward + backward of a tiny LM (float32, training mode); returns its loss."""
    reset_implementations_used()
    torch.manual_seed(seed)
    lm = LM(ModelConfig(model, dim, 2, dict(opts or {})))
    x = torch.randint(0, 256, (2, 17), generator=torch.Generator().manual_seed(1))
    _, loss = lm(x[:, :-1], x[:, 1:])
    loss.backward()
    return loss.detach()


def test_record_shape_and_reset():
    record("x", "kernel A", True)
    record("x", "kernel A", True)
    assert implementations_used() == {"x": one("kernel A")}
    record("x", "reference", False)                      # a second path of the same op: both kept
    record("y", "kernel B", True)
    assert implementations_used() == {"x": {"path": "kernel A + reference", "paths": ["kernel A", "reference"],
                                            "fast": False},
                                      "y": one("kernel B")}
    got = implementations_used()
    got["x"]["paths"].append("edited")                   # a copy: the caller cannot change the record
    assert implementations_used()["x"]["paths"] == ["kernel A", "reference"]
    reset_implementations_used()
    assert implementations_used() == {}


CPU_RECORDS = {
    "e1": {"elman": REF}, "e33": {"elman": REF}, "e42": {"elman": REF}, "e88": {"e88": REF},
    "mamba2": {"short_conv": REF, "ssd": REF, "gated_rmsnorm": REF},
    "gdn": {"short_conv": REF, "delta": REF, "gated_rmsnorm": REF},
    "mingru": {"scan": REF}, "minlstm": {"scan": REF}, "transformer": {"attention": REF},
}
CPU_OPTS = {"e88": {"n_state": 8}, "mamba2": {"d_state": 8, "headdim": 16, "chunk_size": 8},
            "gdn": {"head_dim": 8, "n_heads": 2}, "transformer": {"head_dim": 8}}


@pytest.mark.parametrize("model", list(CPU_RECORDS))
def test_cpu_records_the_reference_of_every_op(model):
    run_lm(model, opts=CPU_OPTS.get(model))
    assert implementations_used() == CPU_RECORDS[model]
    from elmanlab.layers import get_family
    assert get_family(model).op in implementations_used()


# ---------------------------------------------------------------- fake CUDA

def fake_cuda(monkeypatch):
    """Every dispatch point believes the tensors are on CUDA (the layers' and the ops' own)."""
    import importlib
    for mod in ("elmanlab.ops.elman", "elmanlab.ops.e88", "elmanlab.ops.ssd", "elmanlab.ops.delta",
                "elmanlab.ops.scan", "elmanlab.layers.common", "elmanlab.layers.mamba2", "elmanlab.layers.gdn"):
        monkeypatch.setattr(importlib.import_module(mod), "fast_path_enabled", lambda *t: True)


@pytest.mark.parametrize("model,nl", [("e1", "tanh"), ("e42", "linear")])
def test_elman_records_the_path_that_ran(monkeypatch, model, nl):
    import elmanlab.ops.elman.fused as fused
    want = run_lm(model)
    fake_cuda(monkeypatch)
    monkeypatch.setattr(fused, "CudaBackend", fused.TorchBackend)         # the kernel's contract in PyTorch
    status = {"kind": ("ok", "", "")}
    monkeypatch.setattr(fused, "persistent_status", lambda wx: status["kind"])
    fallback = fused.CUDNN if nl == "tanh" else fused.CHUNKED
    cases = [(("ok", "", ""), one(fused.PERSISTENT[nl])),
             (("size", "d_inner 32 needs 300 resident blocks", "use a smaller d_inner"),
              one(fused.CUDNN_STEP if nl == "tanh" else fused.CHUNKED)),
             (("build", "persistent kernel unavailable: nvcc not found", "install nvcc"),
              one(fallback + fused.UNBUILT, fast=False))]
    for kind, rec in cases:
        status["kind"] = kind
        got = run_lm(model)
        assert implementations_used() == {"elman": rec}, kind
        assert rel_err(got, want) < 1e-5
    if nl == "tanh":
        monkeypatch.setenv("ELMANLAB_ELMAN_IMPL", "cudnn")
        run_lm(model)
        assert implementations_used() == {"elman": one(fused.CUDNN)}


def test_e88_records_kernel_or_its_reference_fallback(monkeypatch):
    """The E88 kernel where it takes the shape; its reference, recorded as such, where it rejects
    the value width (before: a silent fallback)."""
    import elmanlab.ops.e88.fused as fused
    want = run_lm("e88", opts={"n_state": 8})
    fake_cuda(monkeypatch)
    monkeypatch.setattr(fused, "CudaBackend", fused.TorchBackend)
    monkeypatch.setattr(fused, "cuda_variant", lambda q, v, kernel=None: (fused.kernel_variant(kernel), "", ""))
    assert rel_err(run_lm("e88", opts={"n_state": 8}), want) < 1e-5
    assert implementations_used() == {"e88": one(fused.PATHS[fused.kernel_variant()])}
    monkeypatch.setattr(fused, "cuda_variant", lambda q, v, kernel=None: (None, "the E88 kernel does not take ...", "fix"))
    run_lm("e88", opts={"n_state": 8, "expansion": 8.0})
    assert implementations_used() == {"e88": REF}


def _mamba_ssm_stand_in():
    from elmanlab.ops.ssd.reference import ssd_chunked, step_size

    def mamba_chunk_scan_combined(x, dt, A, Bm, Cm, chunk_size, D=None, dt_bias=None, dt_softplus=False,
                                  initial_states=None, return_final_states=False):
        return ssd_chunked(x, step_size(dt, dt_bias, dt_softplus), A, Bm, Cm, D, initial_states, chunk_size)

    def rmsnorm_fn(x, weight, bias, z=None, eps=1e-5, group_size=None, norm_before_gate=True):
        x = x if norm_before_gate else x * F.silu(z)
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight
        return y * F.silu(z) if norm_before_gate else y
    return {"ssd_combined": types.SimpleNamespace(mamba_chunk_scan_combined=mamba_chunk_scan_combined),
            "layernorm_gated": types.SimpleNamespace(rmsnorm_fn=rmsnorm_fn)}


def _fla_stand_in():
    from elmanlab.ops.delta.reference import gated_delta_rule_chunked

    def chunk_gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                               use_qk_l2norm_in_kernel=False, use_gate_in_kernel=False, A_log=None, dt_bias=None,
                               use_beta_sigmoid_in_kernel=False):
        if use_qk_l2norm_in_kernel:
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        if use_gate_in_kernel:
            g = -torch.exp(A_log) * F.softplus(g + dt_bias)
        if use_beta_sigmoid_in_kernel:
            beta = torch.sigmoid(beta)
        return gated_delta_rule_chunked(q, k, v, g, beta, scale, initial_state)

    def causal_conv1d(x, weight, bias=None, activation=None):
        K = weight.shape[-1]
        y = F.conv1d(F.pad(x.transpose(1, 2), (K - 1, 0)), weight.unsqueeze(1), bias, groups=x.shape[-1])
        y = y.transpose(1, 2)
        return (F.silu(y) if activation in ("silu", "swish") else y), None

    def rms_norm_gated(x, z, weight, bias, activation="swish", eps=1e-5):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight * F.silu(z)
    return {"chunk_gated_delta_rule": chunk_gated_delta_rule, "causal_conv1d": causal_conv1d,
            "rms_norm_gated": rms_norm_gated}


def test_mamba2_records_ssd_conv_and_norm(monkeypatch):
    from elmanlab.ops.delta import fast as delta_fast
    from elmanlab.ops.ssd import fast as ssd_fast
    opts = CPU_OPTS["mamba2"]
    want = run_lm("mamba2", opts=opts)
    fake_cuda(monkeypatch)
    monkeypatch.setattr(ssd_fast, "_MODS", _mamba_ssm_stand_in())
    monkeypatch.setattr(delta_fast, "_FLA", _fla_stand_in())
    assert rel_err(run_lm("mamba2", opts=opts), want) < 1e-5
    assert implementations_used() == {"short_conv": one(delta_fast.CONV_NAME), "ssd": one(ssd_fast.NAME),
                                      "gated_rmsnorm": one(ssd_fast.NORM_NAME)}
    # mamba_ssm missing (and fla): every piece records its fallback
    monkeypatch.setattr(ssd_fast, "_MODS", None)
    monkeypatch.setattr(ssd_fast, "_ERR", "ModuleNotFoundError: No module named 'mamba_ssm'")
    monkeypatch.setattr(delta_fast, "_FLA", None)
    monkeypatch.setattr(delta_fast, "_ERR", "ModuleNotFoundError: No module named 'fla'")
    assert rel_err(run_lm("mamba2", opts=opts), want) < 1e-5
    assert implementations_used() == CPU_RECORDS["mamba2"]


def test_gdn_records_fla_kernels(monkeypatch):
    from elmanlab.ops.delta import fast as delta_fast
    opts = CPU_OPTS["gdn"]
    want = run_lm("gdn", opts=opts)
    fake_cuda(monkeypatch)
    monkeypatch.setattr(delta_fast, "_FLA", _fla_stand_in())
    monkeypatch.setattr(delta_fast, "_BWD", (True, "Triton 9.9 (stand-in)"))
    assert rel_err(run_lm("gdn", opts=opts), want) < 1e-5
    assert implementations_used() == {
        "short_conv": one(delta_fast.CONV_NAME),
        "delta": one("fla chunk_gated_delta_rule, backward via Triton 9.9 (stand-in)"),
        "gated_rmsnorm": one(delta_fast.NORM_NAME)}
    monkeypatch.setattr(delta_fast, "_FLA", None)
    monkeypatch.setattr(delta_fast, "_ERR", "ModuleNotFoundError: No module named 'fla'")
    run_lm("gdn", opts=opts)
    assert implementations_used() == CPU_RECORDS["gdn"]


@pytest.mark.parametrize("model", ["mingru", "minlstm"])
def test_minrnn_records_the_triton_scan_or_its_fallback(monkeypatch, model):
    from elmanlab.ops.scan import fast as scan_fast
    from elmanlab.ops.scan.reference import linear_scan_parallel, minrnn_coefficients
    want = run_lm(model)
    fake_cuda(monkeypatch)

    def minrnn_scan_triton(p, kind, h0=None):
        a, b = minrnn_coefficients(p.float(), kind)
        return linear_scan_parallel(a, b, h0)
    monkeypatch.setattr(scan_fast, "_MOD", types.SimpleNamespace(minrnn_scan_triton=minrnn_scan_triton))
    assert rel_err(run_lm(model), want) < 1e-6
    assert implementations_used() == {"scan": one(scan_fast.NAME)}
    monkeypatch.setattr(scan_fast, "_MOD", None)
    monkeypatch.setattr(scan_fast, "_ERR", "ModuleNotFoundError: No module named 'triton'")
    run_lm(model)
    assert implementations_used() == {"scan": REF}


def test_transformer_records_flash_or_its_reference(monkeypatch):
    """The attention op's CUDA branch (torch's CPU SDPA standing in for flash): "flash" for the
    training step; the reference, recorded, where flash cannot run (an sm_75 GPU)."""
    import elmanlab.ops.attention as attn
    from elmanlab.ops.attention import fast as attn_fast
    opts = CPU_OPTS["transformer"]
    want = run_lm("transformer", opts=opts)
    monkeypatch.setattr(attn, "fast_path_enabled", lambda *t: True)
    monkeypatch.setattr(attn_fast, "FLASH_DTYPES", (torch.bfloat16, torch.float16, torch.float32))
    monkeypatch.setattr(attn_fast, "device_index", lambda device: 0)
    monkeypatch.setattr(attn_fast, "_capability", lambda idx: (9, 0))
    monkeypatch.setattr(attn_fast, "_PROBE", {})
    assert rel_err(run_lm("transformer", opts=opts), want) < 1e-5
    assert implementations_used() == {"attention": one("flash")}
    monkeypatch.setattr(attn_fast, "_capability", lambda idx: (7, 5))
    assert rel_err(run_lm("transformer", opts=opts), want) < 1e-6
    assert implementations_used() == {"attention": REF}
