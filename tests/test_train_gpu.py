"""GPU checks of `train --cuda-graph`: the replayed graph computes what the eager step computes.

Each family (its CUDA fast path, small widths): two eager-then-captured training steps and more
replays move the parameters; then one replay on a new batch is compared with the eager forward +
backward on the same batch and parameters (loss and every gradient, relative RMS error). A graph
that replayed a stale batch, missed a kernel or read parameters from the wrong place fails here.
Skipped without CUDA (conftest).
"""
import pytest
import torch

from elmanlab.layers import FAMILIES as _FAMILIES
from elmanlab.sizing import model_config
from elmanlab.config import TrainConfig
from elmanlab.train import Trainer, resume_training, run_training

pytestmark = pytest.mark.gpu
FAMILIES = list(_FAMILIES)
# (family, width, ELMANLAB_ELMAN_IMPL): every family's fast path at width 256, plus the other Elman
# paths that 400M models take: E42's chunked GEMM form (d_inner > 2112) and cuDNN's tanh RNN
CASES = [(f, 256, None) for f in FAMILIES] + [("e42", 2176, None), ("e1", 256, "cudnn")]


def _trainer(tmp_path, model, dim=256, **kw):
    cfg = TrainConfig(model=model_config(model, dim=dim, depth=2), out=str(tmp_path / "run"), steps=10,
                      batch_size=4, seq_len=128, lr=1e-3, device="cuda", progress=False, eval_bytes=0, **kw)
    return Trainer(cfg)


@pytest.mark.parametrize("model,dim,impl", CASES, ids=[f"{m}-{d}-{i or 'auto'}" for m, d, i in CASES])
def test_graph_replay_equals_the_eager_step(model, dim, impl, tmp_path, rel, monkeypatch):
    if impl is not None:
        monkeypatch.setenv("ELMANLAB_ELMAN_IMPL", impl)
    tr = _trainer(tmp_path, model, dim, cuda_graph=True)
    for _ in range(4):                       # eager, capture (+ replay), two replays; the optimizer steps
        tr.train_step()
    assert tr.graphed is not None and tr.graphed.replays == 3
    x, _ = tr.batch()
    bufs = {n: b.clone() for n, b in tr.model.named_buffers()}   # e.g. the power-iteration vectors
    stats = tr.graphed(x).clone()
    named = [(n, p) for n, p in tr.model.named_parameters() if p.requires_grad]
    missing = [n for n, p in named if p.grad is None]
    assert not missing, f"no gradient from the graph for {missing}"
    graph_grads = {n: p.grad.clone() for n, p in named}
    for _, p in named:                       # the eager backward accumulates onto these (zeroed)
        p.grad.zero_()
    with torch.no_grad():                    # the replay advanced them: the eager pass starts where it did
        for n, b in tr.model.named_buffers():
            b.copy_(bufs[n])
    eager = tr.loss_and_grads(x)
    torch.cuda.synchronize()
    assert abs(stats[0].item() - eager[0].item()) <= 1e-3 * abs(eager[0].item()), (stats, eager)
    errs = {n: rel(graph_grads[n], p.grad) for n, p in named}
    bad = {n: e for n, e in errs.items() if not e <= 2e-2}
    assert not bad, f"{model}: gradients differ between graph and eager: {bad}"


def test_cuda_graph_training_run(tmp_path):
    """A whole run with --cuda-graph and gradient clipping: checkpoints, evaluation, the summary
    says so; its losses follow the eager run's; a resume captures again and runs on."""
    out = {}
    for graph in (False, True):
        cfg = TrainConfig(model=model_config("mamba2", dim=256, depth=2), out=str(tmp_path / f"g{graph}"),
                          steps=12, batch_size=4, seq_len=128, device="cuda", progress=False, eval_bytes=4096,
                          checkpoint_every=6, log_every=1, grad_clip=0.5, cuda_graph=graph)
        out[graph] = run_training(cfg)
    s = out[True]
    assert s["status"] == "completed" and s["cuda_graph"] and s["steps"] == 12
    assert s["tokens_per_s"] and s["val_bpb"] is not None
    assert sorted(p.name for p in (tmp_path / "gTrue" / "checkpoints").iterdir())[-1] == "step_00000012"
    assert abs(s["final_loss"] - out[False]["final_loss"]) <= 2e-2 * out[False]["final_loss"]
    assert abs(s["val_bpb"] - out[False]["val_bpb"]) <= 2e-2 * out[False]["val_bpb"]
    r = resume_training(tmp_path / "gTrue", steps=16)
    assert r["status"] == "completed" and r["steps"] == 16 and r["cuda_graph"]
