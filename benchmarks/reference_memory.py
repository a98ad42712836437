"""What the reference's 400M models keep for their backward, counted on the CPU (issue 19's memory column).

The reference's 400M table (docs/reference/seeds-400m.md) has E1 at 1.20x Mamba2's memory and
minGRU / minLSTM at 2.1-2.3x; this lab measures 0.87x and 0.76-0.77x on an H100
(benchmarks/results/throughput-400m-rows-h100-2026-12-07.json). This script counts, at B16 x T512, what
the reference's own model code saves for the backward, in its setting (the scripts of
``same_steps_sf/`` call ``.bfloat16()``: weights, gradients and optimizer state in bf16, no autocast),
and adds the weights and Schedule-Free AdamW's two state tensors (bf16 like the weights). The sum is the
memory at the start of the backward, the peak that ``benchmarks/memory_breakdown.py`` counts for this
lab's models (within 0.5 GB of the measured peaks there). Set beside the reference's measured peaks
(``torch.cuda.max_memory_allocated()`` after three training steps, the "Memory" of each log's second
line), it tests whether the reference's numbers follow from its code.

What is counted, from an ekg/elman checkout (``--reference``, at commit 4c8967c8, the code of the 400M
runs; docs/reference/ekg-elman-differences.md):

* **minGRU, minLSTM**: ``elman/models/min_rnn_baseline.py``'s MinGRULM / MinLSTMLM as they are (pure
  PyTorch: the log-space Heinsen scan in fp32).
* **E1**: ``elman/models/mamba_gated_elman.py``'s MambaGatedElman layer as it is, except that its CUDA
  autograd Function (``hasty_pytorch_lib``) is a stand-in that saves what the Function saves
  (``ctx.save_for_backward(W_x, W_h, x, z, h, v)``: h [T+1, B, d] and v [T, B, d] new, of the input's
  dtype); in LadderLM's wrapper of that commit (LayerNorm before every layer and at the end, a tied
  head; rebuilt here, ``ladder_lm.py`` imports every level).
* **Mamba2**: mamba_ssm's ``Mamba2`` module on its default memory-efficient path, rebuilt here with its
  parameter shapes (mamba_ssm needs Triton): ``in_proj``, then ``mamba_split_conv1d_scan_combined``,
  whose autograd Function saves ``zxbcdt, conv1d_weight, conv1d_bias, out_x, A, D, dt_bias,
  rmsnorm_weight, rstd, outproj_weight`` (mamba_ssm 2.3.2 ``ops/triton/ssd_combined.py``; out_x [B, T,
  H, P] new, rstd [B T] fp32) and recomputes the convolution, the scan's output and the gated norm in its
  backward; in ``mamba2_baseline.py``'s Mamba2LM (LayerNorm, tied head).

Each model's parameter count is checked against the reference's logged one, to the unit.

    python3 benchmarks/reference_memory.py --reference PATH/TO/ekg-elman \\
        --json benchmarks/results/memory/reference-400m.json

Prints a table (model, parameters, weights + optimizer, saved activations, the count's total, the
reference's measured peak, the difference) and writes the JSON (per model the largest saved tensors).
"""
from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from memory_breakdown import SavedTensorCounter  # noqa: E402

# the reference's 400M rows (docs/reference/seeds-400m.csv): shape, logged parameters, measured GB
ROWS = {
    "e1": {"dim": 1760, "depth": 26, "params": 403_279_360, "measured_gb": 9.7},
    "mamba2": {"dim": 1728, "depth": 22, "d_state": 64, "params": 402_064_492, "measured_gb": 8.1},
    "minlstm": {"dim": 2304, "depth": 24, "params": 382_910_976, "measured_gb": 17.0},
    "mingru": {"dim": 2752, "depth": 24, "params": 364_370_304, "measured_gb": 18.7},
}


def load_module(path: Path, name: str):
    if not path.is_file():
        raise SystemExit(f"error: {path} not found: give --reference an ekg/elman checkout (commit 4c8967c8)")
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class _E1CellFnStandIn(torch.autograd.Function):
    """mamba_gated_elman.py's MambaGatedElmanFunction: saves (W_x, W_h, x, z, h, v), h [T+1, B, d]
    and v [T, B, d] new tensors of x's dtype; the output [T, B, d] is new too."""

    @staticmethod
    def forward(ctx, x, z, h0, W_x, W_h, b):
        T, B, D = x.shape
        h = x.new_empty(T + 1, B, D)
        v = x.new_empty(T, B, D)
        ctx.save_for_backward(W_x, W_h, x, z, h, v)
        return h, x.new_empty(T, B, D)

    @staticmethod
    def backward(ctx, dh, dout):  # pragma: no cover - counting runs no backward
        raise NotImplementedError


def _e1_cell_forward(self, x, z, h0=None):
    T, B, D = x.shape
    if h0 is None:
        h0 = torch.zeros(B, D, dtype=x.dtype)
    W_h = self.get_W_h() if hasattr(self, "get_W_h") else self.W_h
    h, output = _E1CellFnStandIn.apply(x.contiguous(), z.contiguous(), h0.contiguous(), self.W_x.contiguous(),
                                       W_h.contiguous(), self.b.contiguous())
    return output, h


class _Mamba2FusedStandIn(torch.autograd.Function):
    """mamba_split_conv1d_scan_combined with out_proj fused: saves zxbcdt, the conv weight and bias,
    out_x [B, T, H, P] (new), A, D, dt_bias, the norm weight, rstd [B T] fp32 (new), out_proj's weight."""

    @staticmethod
    def forward(ctx, zxbcdt, conv_w, conv_b, dt_bias, A, D, norm_w, out_w, nheads, headdim):
        B, T, _ = zxbcdt.shape
        out_x = zxbcdt.new_empty(B, T, nheads, headdim)
        rstd = torch.empty(B * T, dtype=torch.float32)
        ctx.save_for_backward(zxbcdt, conv_w, conv_b, out_x, A, D, dt_bias, norm_w, rstd, out_w)
        return zxbcdt.new_empty(B, T, out_w.shape[0])

    @staticmethod
    def backward(ctx, dout):  # pragma: no cover
        raise NotImplementedError


class RefMamba2(nn.Module):
    """mamba_ssm's Mamba2 (d_conv 4, expand 2, ngroups 1, rmsnorm, no biases but the conv's), as its
    parameters and its memory-efficient forward."""

    def __init__(self, dim, d_state=64, headdim=64, expand=2, d_conv=4, ngroups=1):
        super().__init__()
        self.d_inner = expand * dim
        self.nheads, self.headdim = self.d_inner // headdim, headdim
        conv_dim = self.d_inner + 2 * ngroups * d_state
        self.in_proj = nn.Linear(dim, 2 * self.d_inner + 2 * ngroups * d_state + self.nheads, bias=False)
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, d_conv, groups=conv_dim, bias=True)
        self.dt_bias = nn.Parameter(torch.zeros(self.nheads))
        self.A_log = nn.Parameter(torch.zeros(self.nheads))
        self.D = nn.Parameter(torch.ones(self.nheads))
        self.norm_weight = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, dim, bias=False)

    def forward(self, u):
        zxbcdt = self.in_proj(u)
        A = -torch.exp(self.A_log.float())
        return _Mamba2FusedStandIn.apply(zxbcdt, self.conv1d.weight.squeeze(1), self.conv1d.bias, self.dt_bias, A,
                                         self.D, self.norm_weight, self.out_proj.weight, self.nheads, self.headdim)


class RefWrapperLM(nn.Module):
    """LadderLM (4c8967c8) and Mamba2LM: LayerNorm before every layer and at the end, residual, a head
    tied to the embedding, cross-entropy."""

    def __init__(self, layers, dim):
        super().__init__()
        self.embedding = nn.Embedding(256, dim)
        self.layer_norms = nn.ModuleList([nn.LayerNorm(dim) for _ in layers])
        self.layers = nn.ModuleList(layers)
        self.norm = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, 256, bias=False)
        self.lm_head.weight = self.embedding.weight

    def forward(self, x, return_loss=True):
        inp, target = x[:, :-1], x[:, 1:]
        h = self.embedding(inp)
        for ln, layer in zip(self.layer_norms, self.layers):
            out = layer(ln(h))
            h = h + (out[0] if isinstance(out, tuple) else out)
        logits = self.lm_head(self.norm(h))
        return F.cross_entropy(logits.reshape(-1, 256), target.reshape(-1))


def build(model: str, ref: Path):
    row = ROWS[model]
    if model in ("mingru", "minlstm"):
        mod = load_module(ref / "elman/models/min_rnn_baseline.py", "ref_min_rnn")
        cls = mod.MinGRULM if model == "mingru" else mod.MinLSTMLM
        return cls(vocab_size=256, dim=row["dim"], depth=row["depth"]), \
            "elman/models/min_rnn_baseline.py as it is"
    if model == "e1":
        mod = load_module(ref / "elman/models/mamba_gated_elman.py", "ref_e1")
        mod.MambaGatedElmanCell.forward = _e1_cell_forward
        layers = [mod.MambaGatedElman(row["dim"], expansion=1.0, r_h_mode="spectral_norm") for _ in range(row["depth"])]
        return RefWrapperLM(layers, row["dim"]), \
            "mamba_gated_elman.py's layer, its CUDA Function's saves (stand-in), LadderLM's wrapper"
    layers = [RefMamba2(row["dim"], d_state=row["d_state"]) for _ in range(row["depth"])]
    return RefWrapperLM(layers, row["dim"]), "mamba_ssm Mamba2's memory-efficient path (rebuilt), Mamba2LM's wrapper"


def count(model: str, ref: Path, batch: int, seq: int) -> dict:
    from torch._subclasses.fake_tensor import FakeTensorMode
    torch.manual_seed(0)
    old = torch.get_default_dtype()
    with FakeTensorMode(allow_non_fake_inputs=True):
        torch.set_default_dtype(torch.bfloat16)          # built in bf16: the scripts' .bfloat16()
        try:
            lm, what = build(model, ref)
        finally:
            torch.set_default_dtype(old)
        lm = lm.train()
        assert all(p.dtype == torch.bfloat16 for p in lm.parameters())
        idx = torch.randint(0, 256, (batch, seq + 1))
        counter = SavedTensorCounter(lm)
        with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t):
            lm(idx, return_loss=True)
        counter.close()
        params = sum(p.numel() for p in lm.parameters())
        pbytes = sum(p.numel() * p.element_size() for p in lm.parameters())
    row = ROWS[model]
    if params != row["params"]:
        raise SystemExit(f"error: {model}: {params:,} parameters, the reference logged {row['params']:,}: the "
                         f"rebuilt model is not the reference's")
    saved = sum(r["bytes"] for r in counter.rows)
    items = collections.defaultdict(lambda: {"count": 0, "bytes": 0})
    for r in counter.rows:
        if not r["bytes"]:
            continue
        mod = ".".join(p for p in r["module"].split(".") if not p.isdigit())
        it = items[(mod, r["dtype"], tuple(r["shape"]))]
        it["count"] += 1
        it["bytes"] += r["bytes"]
    top = sorted(({"module": k[0], "dtype": k[1], "shape": list(k[2]), **v} for k, v in items.items()),
                 key=lambda i: -i["bytes"])[:12]
    total = 3 * pbytes + saved            # weights, z and exp_avg_sq (bf16), saved activations
    return {"model": model, "what": what, **{k: v for k, v in row.items() if k != "measured_gb"},
            "weights_and_optimizer_bytes": 3 * pbytes, "saved_bytes": saved, "total_bytes": total,
            "measured_gb": row["measured_gb"], "difference_gb": row["measured_gb"] - total / 1e9,
            "largest_saved": top}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference", required=True, help="an ekg/elman checkout at commit 4c8967c8")
    ap.add_argument("--models", default="e1,mamba2,minlstm,mingru")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--json", help="write the counts here")
    args = ap.parse_args(argv)
    ref = Path(args.reference)
    out = [count(m, ref, args.batch, args.seq) for m in args.models.split(",")]
    base = next((o for o in out if o["model"] == "mamba2"), None)
    print(f"the reference's models, pure bf16, B{args.batch} x T{args.seq}: counted peak at the start of the backward")
    print(f"{'model':8} {'params':>12} {'weights+opt':>12} {'saved':>9} {'counted':>9} {'measured':>9} {'diff':>7}"
          f" {'x Mamba2 counted / measured':>28}")
    for o in out:
        ratio = (f"{o['total_bytes'] / base['total_bytes']:.2f}x / {o['measured_gb'] / base['measured_gb']:.2f}x"
                 if base else "-")
        print(f"{o['model']:8} {o['params']:>12,} {o['weights_and_optimizer_bytes'] / 1e9:>9.2f} GB "
              f"{o['saved_bytes'] / 1e9:>6.2f} GB {o['total_bytes'] / 1e9:>6.2f} GB {o['measured_gb']:>6.1f} GB "
              f"{o['difference_gb']:>+6.2f} {ratio:>28}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"batch": args.batch, "seq_len": args.seq, "torch": torch.__version__,
                                               "models": out}, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
