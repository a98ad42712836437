"""The training loop's own step, for the benchmarks: a trainer in a throw-away folder, timed steps;
and ``save_json``, how the benchmarks write their results.

Shared by throughput.py and profile_step.py so that both measure exactly what `elmanlab train`
runs (bf16 autocast on CUDA, Schedule-Free AdamW, grad norm, non-finite guard); and the CUDA-event
timer of the kernel benchmarks (kernels.py, scripts/e88-ab.py).
"""
from __future__ import annotations

import contextlib
import gc
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch


def save_json(path, obj, indent: int = 1) -> None:
    """Write a benchmark's result ``obj`` to ``path`` (its folder made) and say so."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(obj, indent=indent) + "\n")
    print(f"wrote {p}")


def cuda_time_ms(fn, reps: int, warmup: int = 2) -> float:
    """Median milliseconds of ``fn()`` over ``reps`` runs after ``warmup`` untimed ones, CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e))
    return statistics.median(times)


def _release(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


@contextlib.contextmanager
def bench_trainer(mcfg, batch: int, seq_len: int, steps: int, device: str = "cuda", compile: bool = False,
                  cuda_graph: bool = False):
    """A set-up trainer for ``mcfg`` (a ModelConfig) on the embedded corpus, good for ``steps`` steps;
    the previous benchmark's memory is released first (peak memory is counted from set-up)."""
    from elmanlab.config import TrainConfig
    from elmanlab.train import Trainer
    _release(device)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(model=mcfg, out=os.path.join(tmp, "run"), steps=steps, batch_size=batch,
                          seq_len=seq_len, device=device, progress=False, eval_bytes=0, compile=compile,
                          cuda_graph=cuda_graph)
        trainer = Trainer(cfg)
        try:
            yield trainer
        finally:
            del trainer
            _release(device)


def run_steps(trainer, n: int) -> tuple[list[float], list[float]]:
    """``n`` training steps: (their losses, the wall seconds of each). A step ends synchronised
    (it reads its loss and gradient norm back), so each time is the step's whole time."""
    losses, times = [], []
    for _ in range(n):
        t = time.perf_counter()
        losses.append(trainer.train_step()[0])
        times.append(time.perf_counter() - t)
    return losses, times
