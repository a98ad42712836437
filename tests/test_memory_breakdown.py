"""CPU checks of benchmarks/memory_breakdown.py's counts, and of E88's q/k normalisation (which keeps
no bf16 input for the backward) against F.normalize, bit for bit."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import _cuda_emulation as emu  # noqa: E402
import memory_breakdown as mb  # noqa: E402
from elmanlab.sizing import model_config  # noqa: E402

TINY = {
    "e88": dict(dim=48, depth=2, options={"n_state": 8, "n_heads": 3}),
    "mamba2": dict(dim=32, depth=2, options={"headdim": 16, "d_state": 16}),
    "e1": dict(dim=32, depth=3, options={}),
}


def _cfg(model):
    t = TINY[model]
    return model_config(model, dim=t["dim"], depth=t["depth"], options=t["options"])


def _independent_saved_bytes(cfg, batch, seq):
    """The same forward, counted by a hook written apart from the script's: the bytes of each distinct
    storage (by data pointer) autograd saves, leaving out the parameters' own storages."""
    from elmanlab.lm import LM
    torch.manual_seed(0)
    model = LM(cfg)
    idx = torch.randint(0, 256, (batch, seq + 1))
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with emu.cuda_paths(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False), emu.CudaAutocastRules():
        model(idx[:, :-1], idx[:, 1:])
    return sum(seen.values()), model


@pytest.mark.parametrize("model", sorted(TINY))
def test_saved_bytes_equal_an_independent_count(model):
    cfg = _cfg(model)
    counted = mb.count(cfg, batch=2, seq=8, mode="real")
    b = mb.breakdown(cfg, counted, 2, 8)
    direct, lm = _independent_saved_bytes(cfg, 2, 8)
    assert direct > 0
    assert b["saved_bytes"] == sum(r["bytes"] for r in counted["rows"]) == direct
    assert b["param_bytes"] == sum(p.numel() * p.element_size() for p in lm.parameters())
    comp = {c["component"]: c["bytes"] for c in b["components"]}
    assert comp["parameters (fp32)"] == b["param_bytes"]
    assert comp["optimizer z + exp_avg_sq (fp32)"] == 2 * b["param_bytes"]
    assert b["total_bytes"] == 3 * b["param_bytes"] + direct
    assert abs(sum(c["share"] for c in b["components"]) - 1) < 1e-12


@pytest.mark.parametrize("model", sorted(TINY))
def test_fake_tensors_count_what_real_tensors_count(model):
    cfg = _cfg(model)
    real = mb.count(cfg, batch=3, seq=16, mode="real")
    fake = mb.count(cfg, batch=3, seq=16, mode="fake")
    strip = [(r["module"], r["site"], r["kind"], r["dtype"], r["shape"], r["bytes"]) for r in real["rows"]]
    assert strip == [(r["module"], r["site"], r["kind"], r["dtype"], r["shape"], r["bytes"]) for r in fake["rows"]]


def test_e88_checkpoints_counted_equal_the_formula():
    cfg = _cfg("e88")
    for kernel in ("v2", "v3"):
        b = mb.breakdown(cfg, mb.count(cfg, batch=2, seq=20, mode="fake", e88_kernel=kernel), 2, 20)
        ck = {c["component"]: c["bytes"] for c in b["components"]}["saved: E88 kernel checkpoints"]
        C = b["e88_plan"]["C"]
        o = cfg.options
        assert ck == b["e88_ckpt_analytic_bytes"] == cfg.depth * 2 * o.n_heads * -(-20 // C) * 8 * 8 * 4 > 0
    # under CUDA's autocast rules the normalised q and k are fp32, so the kernel reads fp32
    assert b["e88_plan"]["dtype"] == "float32"
    assert mb.count(cfg, 2, 8, "fake", cuda_rules=False)["e88_plans"][0]["dtype"] == "bfloat16"


def test_v3_plan_reproduces_the_intervals_measured_on_the_h200():
    # benchmarks/results/e88-ab-h200-2026-12-03-n48.md: bf16 inputs, T512
    measured = {(16, 32, 48): 9, (64, 32, 48): 9, (16, 44, 48): 9, (64, 44, 48): 9, (16, 64, 32): 9,
                (64, 64, 32): 7}
    for (B, H, n), C in measured.items():
        assert emu.e88_v3_plan(n, n, B * H, 2)["C"] == C
    assert emu.e88_v2_plan(48, 48)["C"] == 4 and emu.e88_v2_plan(32, 32)["C"] == 8 and emu.e88_v2_plan(64, 64)["C"] == 2


def test_weight_copies_are_found():
    cfg = _cfg("e1")
    rows = mb.count(cfg, 2, 8, "fake")["rows"]
    names = {r["what"] for r in rows if r["kind"] == "weight copy (autocast)"}
    assert {"blocks.0.layer.in_proj.weight", "blocks.0.layer.W_x.weight", "blocks.2.layer.out_proj.weight",
            "head.weight"} <= names


def test_script_prints_a_table_and_writes_json(tmp_path):
    out = tmp_path / "b.json"
    r = subprocess.run([sys.executable, str(BENCH / "memory_breakdown.py"), "--model", "e88", "--dim", "48",
                        "--depth", "2", "--opt", "n_state=8", "--opt", "n_heads=3", "--batch", "2", "--seq", "8",
                        "--measured-gb", "1", "--json", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "| component | bytes | share |" in r.stdout and "E88 kernel checkpoints" in r.stdout
    import json
    b = json.loads(out.read_text())
    assert b["unexplained_bytes"] == pytest.approx(1e9 - b["total_bytes"])


# ---------------------------------------------------------------- E88's normalisation
@pytest.fixture
def cuda_norm_rule(monkeypatch):
    """Tensor.norm as CUDA autocast runs it (fp32 result from a bf16 input), in the forward and in the
    backward alike (a TorchFunctionMode does not reach the backward)."""
    orig = torch.Tensor.norm

    def norm(self, p="fro", dim=None, keepdim=False, dtype=None):
        if torch.is_autocast_enabled("cpu") and self.dtype == torch.bfloat16 and dtype is None and dim is not None:
            return torch.linalg.vector_norm(self, p, dim, keepdim, dtype=torch.float32)
        return orig(self, p, dim, keepdim, dtype=dtype)

    monkeypatch.setattr(torch.Tensor, "norm", norm)


@pytest.mark.parametrize("scale", [1e-6, 1e-2, 1.0, 1e4])
def test_l2_normalize_bit_identical_under_cuda_autocast_rules(cuda_norm_rule, scale):
    from elmanlab.layers.e88 import l2_normalize
    g = torch.Generator().manual_seed(0)
    base = torch.randn(3, 40, 5, 3 * 16, generator=g) * scale
    base[0, 0, 0, :16] = 0                                   # a zero vector: the eps clamp
    res = []
    for fn in (lambda t: F.normalize(t, dim=-1), l2_normalize):
        x = base.to(torch.bfloat16).requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            q, k = fn(x[..., :16]), fn(x[..., 16:32])
        assert q.dtype == k.dtype == torch.float32
        dy = torch.randn(q.shape, generator=torch.Generator().manual_seed(1))
        (q * dy + k.square() * dy.flip(0)).sum().backward()
        res.append((q.detach(), k.detach(), x.grad.clone()))
    for a, b in zip(*res):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_l2_normalize_bit_identical_without_autocast(dtype):
    from elmanlab.layers.e88 import l2_normalize
    x0 = torch.randn(2, 7, 3, 8, dtype=dtype)
    a, b = x0.clone().requires_grad_(), x0.clone().requires_grad_()
    ya, yb = F.normalize(a, dim=-1), l2_normalize(b)
    dy = torch.randn_like(ya)
    (ya * dy).sum().backward()
    (yb * dy).sum().backward()
    assert torch.equal(ya, yb) and torch.equal(a.grad, b.grad)
    with torch.no_grad():
        assert torch.equal(l2_normalize(x0), F.normalize(x0, dim=-1))


def test_l2_normalize_frees_the_qkv_projection(monkeypatch):
    """The saving, counted: with F.normalize the bf16 q/k views keep the whole qkv output (H (2n + m)
    bf16 per token per layer) and the norm's [B, T, H, 1] fp32 result beside the clamped denominator
    until the backward; l2_normalize keeps neither (its fp32 output is the one the scan keeps)."""
    import elmanlab.layers.e88 as le
    cfg = _cfg("e88")
    B, T = 2, 16
    new = mb.count(cfg, B, T, "fake")["rows"]
    monkeypatch.setattr(le, "l2_normalize", lambda x: F.normalize(x, dim=-1))
    old = mb.count(cfg, B, T, "fake")["rows"]
    o = cfg.options
    qkv = B * T * o.n_heads * (2 * o.n_state + o.n_state) * 2
    norms = 2 * B * T * o.n_heads * 4
    assert sum(r["bytes"] for r in old) - sum(r["bytes"] for r in new) == cfg.depth * (qkv + norms)
