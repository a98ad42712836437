"""CPU checks of benchmarks/reference_memory.py: the rebuilt Mamba2 is the reference's (its parameter
count to the unit), the stand-ins save what the reference's autograd Functions save, and the count is
the bytes of the distinct storages the forward saves. The reference's own files (ekg/elman) are not
in this repository, so the file-loading path is checked on a file written here."""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import reference_memory as rm  # noqa: E402


def test_rebuilt_mamba2_has_the_reference_parameter_count():
    row = rm.ROWS["mamba2"]
    with torch.device("meta"):
        lm = rm.RefWrapperLM([rm.RefMamba2(row["dim"], d_state=row["d_state"]) for _ in range(row["depth"])],
                             row["dim"])
    assert sum(p.numel() for p in lm.parameters()) == row["params"] == 402_064_492


def _saved(lm, idx):
    """Distinct non-parameter storages autograd saves, counted apart from the script's counter."""
    params = {p.untyped_storage().data_ptr() for p in lm.parameters()}
    seen = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = (t.untyped_storage().nbytes(), tuple(t.shape), t.dtype)
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        lm(idx, return_loss=True)
    return seen


def test_mamba2_stand_in_saves_the_fused_functions_tensors():
    """mamba_split_conv1d_scan_combined keeps zxbcdt [B, T, d_in_proj] and out_x [B, T, H, P] (bf16) and
    rstd [B T] (fp32) per layer, and nothing of the convolution, the scan or out_proj's input."""
    B, T, dim, depth, N, P = 2, 16, 32, 2, 8, 16
    torch.set_default_dtype(torch.bfloat16)
    try:
        lm = rm.RefWrapperLM([rm.RefMamba2(dim, d_state=N, headdim=P) for _ in range(depth)], dim)
    finally:
        torch.set_default_dtype(torch.float32)
    seen = _saved(lm, torch.randint(0, 256, (B, T + 1)))
    shapes = [s for _, s, _ in seen.values()]
    d_inner = 2 * dim
    assert shapes.count((B, T, 2 * d_inner + 2 * N + d_inner // P)) == depth       # zxbcdt
    assert shapes.count((B, T, d_inner // P, P)) == depth                         # out_x
    assert sum(1 for n, s, dt in seen.values() if s == (B * T,) and dt == torch.float32) == depth   # rstd
    assert not any(s == (B, T, d_inner) for s in shapes)                          # no out_proj input


def test_e1_cell_stand_in_saves_h_and_v_new():
    T, B, D = 5, 2, 8
    x, z = torch.randn(T, B, D), torch.randn(T, B, D)
    W = torch.randn(D, D, requires_grad=True)
    seen = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: seen.append((tuple(t.shape), t.data_ptr())) or t,
                                                  lambda t: t):
        h, out = rm._E1CellFnStandIn.apply(x.requires_grad_(), z, torch.zeros(B, D), W, W, torch.zeros(D))
    assert h.shape == (T + 1, B, D) and out.shape == (T, B, D)
    assert [s for s, _ in seen] == [(D, D), (D, D), (T, B, D), (T, B, D), (T + 1, B, D), (T, B, D)]


def test_min_rnn_from_a_reference_file_is_counted(tmp_path):
    """The minGRU path loads elman/models/min_rnn_baseline.py from --reference as it is: a file with a
    MinGRULM of the right size is counted, and its parameter count is checked against the logged one."""
    d = tmp_path / "elman" / "models"
    d.mkdir(parents=True)
    (d / "min_rnn_baseline.py").write_text(textwrap.dedent('''
        import torch, torch.nn as nn, torch.nn.functional as F
        class MinGRULM(nn.Module):
            def __init__(self, vocab_size=256, dim=8, depth=2):
                super().__init__()
                self.emb = nn.Embedding(vocab_size, dim)
                self.layers = nn.ModuleList([nn.Linear(dim, dim, bias=False) for _ in range(depth)])
            def forward(self, x, return_loss=False):
                h = self.emb(x[:, :-1])
                for l in self.layers:
                    h = torch.tanh(l(h))
                logits = h @ self.emb.weight.T
                return F.cross_entropy(logits.reshape(-1, 256), x[:, 1:].reshape(-1))
        MinLSTMLM = MinGRULM
    '''))
    with pytest.raises(SystemExit, match="the rebuilt model is not the reference's"):
        rm.count("mingru", tmp_path, 2, 8)
    old = dict(rm.ROWS["mingru"])
    try:
        rm.ROWS["mingru"].update(dim=8, depth=2, params=256 * 8 + 2 * 64)
        out = rm.count("mingru", tmp_path, 2, 8)
    finally:
        rm.ROWS["mingru"] = old
    # weights, z and exp_avg_sq, each bf16
    assert out["weights_and_optimizer_bytes"] == 3 * 2 * (256 * 8 + 2 * 64)
    assert out["saved_bytes"] > 0 and out["total_bytes"] == out["weights_and_optimizer_bytes"] + out["saved_bytes"]


def test_a_missing_reference_is_one_line():
    r = subprocess.run([sys.executable, str(BENCH / "reference_memory.py"), "--reference", "/nonexistent",
                        "--models", "e1"], capture_output=True, text=True)
    assert r.returncode != 0 and "give --reference an ekg/elman checkout" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
