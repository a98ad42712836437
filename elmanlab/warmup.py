"""Paying the kernels' warm-up once per machine: one bf16 forward + backward of every distinct model
of a study at its batch shape, so that Triton autotuning (results kept on disk: TRITON_CACHE_AUTOTUNING,
see ops/_dispatch.py), TileLang's JIT and the Elman/E88 nvcc builds happen before the study instead of
in the first step of each of its runs (``elmanlab doctor --warmup STUDY.yaml``)."""
from __future__ import annotations

import time

from elmanlab.config import TrainConfig


def warmup_plan(jobs) -> list[dict]:
    """The distinct (model, batch, sequence length) of a study's jobs, in order, with the runs that
    share each: [{"model": ModelConfig, "batch_size", "seq_len", "runs": [job ids]}]."""
    from elmanlab.sizing import model_config
    defaults = TrainConfig.__dataclass_fields__
    plan: dict[str, dict] = {}
    for j in jobs:
        cfg = model_config(j.model, params=j.params, dim=j.dim, depth=j.depth, options=j.options,
                           mlp_ratio=j.mlp_ratio, tie_embeddings=j.tie_embeddings, norm=j.norm)
        b = int(j.train.get("batch_size", defaults["batch_size"].default))
        t = int(j.train.get("seq_len", defaults["seq_len"].default))
        key = repr((cfg.to_dict(), b, t))
        plan.setdefault(key, {"model": cfg, "batch_size": b, "seq_len": t, "runs": []})["runs"].append(j.id)
    return list(plan.values())


def warm_up(plan: list[dict], device, report=None) -> list[dict]:
    """Run one forward + backward of each planned model on ``device`` (a CUDA device); returns
    [{"model", "batch_size", "seq_len", "seconds", "result"}] where result is "ok" or the error.
    ``report(row)`` is called as each one finishes."""
    import torch

    from elmanlab.hardware import autocast
    from elmanlab.lm import LM
    rows = []
    for p in plan:
        t0 = time.perf_counter()
        try:
            torch.manual_seed(0)
            model = LM(p["model"]).to(device)
            x = torch.randint(0, 256, (p["batch_size"], p["seq_len"] + 1), device=device)
            with autocast(device):
                _, loss = model(x[:, :-1], x[:, 1:])
            loss.backward()
            torch.cuda.synchronize(device)
            result = "ok"
        except Exception as e:  # noqa: BLE001 - reported per model; the others still warm up
            result = f"{type(e).__name__}: {e}".splitlines()[0][:200]
        finally:
            model = x = loss = None
            torch.cuda.empty_cache()
        row = {"model": p["model"].model, "dim": p["model"].dim, "depth": p["model"].depth,
               "batch_size": p["batch_size"], "seq_len": p["seq_len"], "runs": len(p["runs"]),
               "seconds": round(time.perf_counter() - t0, 1), "result": result}
        rows.append(row)
        if report is not None:
            report(row)
    return rows
