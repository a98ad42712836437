"""The parts of one training step that are not the loop: the optimizer, the gradient norm, whether
the step runs as a CUDA graph and its capture (``GraphedStep``), and the check that the model's
family has its fast path before step 1."""
from __future__ import annotations

import torch

from elmanlab.config import TrainConfig
from elmanlab.errors import ElmanlabError


def _param_groups(model: torch.nn.Module, weight_decay: float, on: str = "matrices"):
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 or on == "all" else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig):
    """Schedule-Free AdamW with weight decay on matrices (ndim >= 2) only, or on every parameter
    (``weight_decay_on: all``)."""
    import schedulefree
    return schedulefree.AdamWScheduleFree(_param_groups(model, cfg.weight_decay, cfg.weight_decay_on), lr=cfg.lr,
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


def graph_choice(cfg: TrainConfig, device: torch.device, world: int) -> tuple[bool, str | None]:
    """(whether the step runs as a CUDA graph, why not): as asked, else on wherever it applies."""
    if cfg.cuda_graph is not None:
        return bool(cfg.cuda_graph), (None if cfg.cuda_graph else "--no-cuda-graph")
    why_not = ("on the CPU" if device.type != "cuda" else "--compile is on" if cfg.compile
               else f"{world} processes (torchrun)" if world > 1 else None)
    return why_not is None, why_not


def check_fast_path(cfg: TrainConfig, device: torch.device) -> str | None:
    """On CUDA, stop before step 1 when the model's family would run its plain-PyTorch reference,
    unless ``allow_reference``; returns the reason the reference runs (allowed), else None."""
    if device.type != "cuda":
        return None
    fam = cfg.model.family
    info = fam.backend_info(cfg.model.dim, cfg.model.options)
    if info["fast"]:
        return None
    if not cfg.allow_reference:
        raise ElmanlabError(f"{fam.name} has no fast path on this GPU ({info['reason']}): "
                            f"{info.get('fix') or 'see `elmanlab doctor`'}; or add --allow-reference to train on "
                            f"the plain-PyTorch reference (slow, recorded)")
    return info["reason"]
