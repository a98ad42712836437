"""GPU checks of `train --cuda-graph`: the replayed graph computes what the eager step computes.

Each family (its CUDA fast path, small widths): two eager-then-captured training steps and more
replays move the parameters; then one replay on a new batch is compared with the eager forward +
backward on the same batch and parameters (loss and every gradient, relative RMS error). A graph
that replayed a stale batch, missed a kernel or read parameters from the wrong place fails here.
Each case also asserts, from the ops' record of what ran, that the family's fast path (the one
named in the case) ran: a fallback to the reference cannot pass. Skipped without CUDA (conftest).
"""
import pytest
import torch

from elmanlab.layers import FAMILIES as _FAMILIES
from elmanlab.ops import implementations_used
from elmanlab.ops.attention.fast import NAME as FLASH
from elmanlab.ops.delta.fast import NAME as FLA
from elmanlab.ops.e88.fused import NAME as E88_KERNEL
from elmanlab.ops.elman.fused import CUDNN, PERSISTENT, WIDE
from elmanlab.ops.scan.fast import NAME as TRITON_SCAN
from elmanlab.ops.ssd.fast import NAME as SSD
from elmanlab.sizing import model_config
from elmanlab.config import TrainConfig
from elmanlab.train import Trainer, resume_training, run_training
from op_checks import assert_fast_path_ran

pytestmark = pytest.mark.gpu
FAMILIES = list(_FAMILIES)
# (family, width, ELMANLAB_ELMAN_IMPL): every family's fast path at width 256, plus the other Elman
# paths: the wide persistent kernel (E42 at 400M has d_inner 2272 > 16 x SMs) and cuDNN's tanh RNN
CASES = [(f, 256, None) for f in FAMILIES] + [("e42", 2176, None), ("e1", 256, "cudnn")]
# the kernel each case is about (the start of its path name in the ops' record)
KERNEL = {"e1": PERSISTENT["tanh"], "e33": PERSISTENT["tanh"], "e42": PERSISTENT["linear"], "e88": E88_KERNEL,
          "mamba2": SSD, "gdn": FLA, "mingru": TRITON_SCAN, "minlstm": TRITON_SCAN, "transformer": FLASH}
KERNEL_AT = {("e42", 2176, None): WIDE["linear"], ("e1", 256, "cudnn"): CUDNN}


def _trainer(tmp_path, model, dim=256, **kw):
    cfg = TrainConfig(model=model_config(model, dim=dim, depth=2), out=str(tmp_path / "run"), steps=10,
                      batch_size=4, seq_len=128, lr=1e-3, device="cuda", progress=False, eval_bytes=0, **kw)
    return Trainer(cfg)


def _restore(tr, bufs) -> None:
    with torch.no_grad():                    # a step advances them (power iteration): start where the graph did
        for n, b in tr.model.named_buffers():
            b.copy_(bufs[n])


@pytest.mark.parametrize("model,dim,impl", CASES, ids=[f"{m}-{d}-{i or 'auto'}" for m, d, i in CASES])
def test_graph_replay_equals_the_eager_step(model, dim, impl, tmp_path, rel, monkeypatch):
    if impl is not None:
        monkeypatch.setenv("ELMANLAB_ELMAN_IMPL", impl)
    tr = _trainer(tmp_path, model, dim, cuda_graph=True)
    for _ in range(4):                       # eager, capture (+ replay), two replays; the optimizer steps
        tr.train_step()
    assert tr.graphed is not None and tr.graphed.replays == 3
    # the eager warm-up step recorded what the graph replays (replays run no Python)
    assert_fast_path_ran(tr.cfg.model, expect=KERNEL_AT.get((model, dim, impl), KERNEL[model]))
    x, _ = tr.batch()
    bufs = {n: b.clone() for n, b in tr.model.named_buffers()}   # e.g. the power-iteration vectors
    stats = tr.graphed(x).clone()
    named = [(n, p) for n, p in tr.model.named_parameters() if p.requires_grad]
    missing = [n for n, p in named if p.grad is None]
    assert not missing, f"no gradient from the graph for {missing}"
    graph_grads = {n: p.grad.clone() for n, p in named}
    eager = []
    for _ in range(2):                       # two eager passes: how far eager differs from itself
        for _, p in named:                   # the eager backward accumulates onto these (zeroed)
            p.grad.zero_()
        _restore(tr, bufs)
        loss = tr.loss_and_grads(x)[0].clone()
        torch.cuda.synchronize()
        eager.append((loss, {n: p.grad.clone() for n, p in named}))
    (loss1, g1), (loss2, g2) = eager
    # Replay runs the same kernels on the same inputs as the eager step, so the two agree to the
    # last bits: 1e-5 relative RMS allows a different rounding of a few bf16 elements and nothing
    # more (a stale batch, a missed kernel or stale parameters give 1e-2 and up). Kernels that reduce
    # with float atomics (mamba_ssm's, fla's backward) are not bitwise reproducible even eager to
    # eager; where two eager passes measurably differ, the bound is 4x that spread instead.
    spread = max([rel(g2[n], g1[n]) for n, _ in named] + [rel(loss2, loss1)])
    limit = max(1e-5, 4 * spread)
    assert spread <= 1e-3, f"{model}: eager is not reproducible: two passes differ by {spread:.1e}"
    assert rel(stats[0], loss1) <= limit, (stats, loss1, limit)
    errs = {n: rel(graph_grads[n], g1[n]) for n, _ in named}
    bad = {n: f"{e:.1e}" for n, e in errs.items() if not e <= limit}
    assert not bad, f"{model}: gradients differ between graph and eager beyond {limit:.1e}: {bad}"


def test_cuda_graph_training_run(tmp_path):
    """A whole run with --cuda-graph and gradient clipping: checkpoints, evaluation, the summary
    says so; its losses follow the eager run's; a resume captures again and runs on."""
    out = {}
    for graph in (False, True):
        cfg = TrainConfig(model=model_config("mamba2", dim=256, depth=2), out=str(tmp_path / f"g{graph}"),
                          steps=12, batch_size=4, seq_len=128, device="cuda", progress=False, eval_bytes=4096,
                          checkpoint_every=6, log_every=1, grad_clip=0.5, cuda_graph=graph)
        out[graph] = run_training(cfg)
        assert_fast_path_ran(cfg.model, expect=SSD)          # this process ran the run: its record
    assert implementations_used()["ssd"]["fast"]
    s = out[True]
    assert s["status"] == "completed" and s["cuda_graph"] and s["steps"] == 12
    assert s["tokens_per_s"] and s["val_bpb"] is not None
    assert sorted(p.name for p in (tmp_path / "gTrue" / "checkpoints").iterdir())[-1] == "step_00000012"
    assert abs(s["final_loss"] - out[False]["final_loss"]) <= 2e-2 * out[False]["final_loss"]
    assert abs(s["val_bpb"] - out[False]["val_bpb"]) <= 2e-2 * out[False]["val_bpb"]
    r = resume_training(tmp_path / "gTrue", steps=16)
    assert r["status"] == "completed" and r["steps"] == 16 and r["cuda_graph"]


@pytest.mark.parametrize("model", FAMILIES)
def test_pure_bf16_training_runs_the_fast_path(model, tmp_path):
    """precision: bf16 (the model cast to bf16, no autocast, as ekg/elman's runs): every family's fast
    kernel takes bf16 weights, eagerly and replayed as a CUDA graph; the loss falls, the weights and
    Schedule-Free's state stay bf16, and the kernel that ran is the fast one."""
    tr = _trainer(tmp_path, model, precision="bf16", cuda_graph=True)
    assert all(p.dtype == torch.bfloat16 for p in tr.model.parameters())
    losses = [tr.train_step()[0] for _ in range(10)]
    assert all(torch.isfinite(torch.tensor(losses))) and sum(losses[-3:]) < sum(losses[:3]), losses
    assert tr.graphed is not None and tr.graphed.replays == 9
    assert_fast_path_ran(tr.cfg.model, expect=KERNEL[model])
    assert all(p.dtype == torch.bfloat16 for p in tr.model.parameters())
    for st in tr.optimizer.state.values():
        assert all(v.dtype == torch.bfloat16 for v in st.values() if torch.is_tensor(v) and v.ndim > 0)
