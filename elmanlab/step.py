"""The parts of one training step that are not the loop: the optimizer, the gradient norm, and the
CUDA-graph capture of forward + backward (``GraphedStep``)."""
from __future__ import annotations

import torch

from elmanlab.config import TrainConfig
from elmanlab.errors import ElmanlabError


def _param_groups(model: torch.nn.Module, weight_decay: float):
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig):
    """Schedule-Free AdamW with weight decay on matrices (ndim >= 2) only."""
    import schedulefree
    return schedulefree.AdamWScheduleFree(_param_groups(model, cfg.weight_decay), lr=cfg.lr,
                                          betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay,
                                          warmup_steps=cfg.warmup_steps)


def grad_norm(params) -> torch.Tensor:
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    if hasattr(torch.nn.utils, "get_total_norm"):
        return torch.nn.utils.get_total_norm(grads, 2.0)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))


class GraphedStep:
    """``fn(x)`` (forward + backward of a batch ``x``) captured once as a CUDA graph, then replayed.

    Each replay launches the whole step's kernels at once, so a step whose many small kernels keep
    the host busier than the GPU (launch overhead) runs at the GPU's pace. The batch is copied into
    the captured input, the outputs and the parameters' gradients come back in the same tensors each
    time (the gradients are written, not accumulated: callers must not zero or drop them). ``fn``
    must have run eagerly on ``stream`` before (Triton autotuning, TileLang JIT, lazy inits), and
    must not synchronise with the host.
    """

    def __init__(self, fn, x: torch.Tensor, stream: torch.cuda.Stream):
        self.x = x.clone()
        self.graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize(x.device)
        torch.cuda.empty_cache()        # the eager steps' cached blocks: the graph keeps its own pool
        try:
            with torch.cuda.graph(self.graph, stream=stream):
                self.out = fn(self.x)
        except Exception as e:
            # torch.cuda.graph's exit ends the capture even after an error, and that raises its own
            # "previous error during capture": the cause is the exception it was raised during
            cause = e.__context__ if e.__context__ is not None else e
            msg = f"{type(cause).__name__}: {cause}".splitlines()[0][:300]
            raise ElmanlabError(f"CUDA graph: capturing the training step failed ({msg}); run with "
                                "--no-cuda-graph") from e
        self.replays = 0

    def __call__(self, x: torch.Tensor):
        self.x.copy_(x, non_blocking=True)
        self.graph.replay()
        self.replays += 1
        return self.out
