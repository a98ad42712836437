"""``elmanlab doctor``: what this machine has, and which kernel each model family will run.

Versions are read from the installed distributions' metadata (nothing heavy is imported for
them). Each family's op folder is then asked, through its ``backend_info``, what it runs at the
family's default 400M shapes (on CUDA this imports fla / mamba_ssm / triton and may compile the
Elman kernels); ``--probe`` also runs one small bf16 training step (forward + backward) of every
family's layer on the GPU and reports whether it ran. Without CUDA every family runs its
plain-PyTorch reference.
"""
from __future__ import annotations

import importlib
import platform

FAMILY_OPS = {"e1": "elman (tanh)", "e33": "elman (tanh)", "e42": "elman (linear)", "e88": "e88",
              "mamba2": "ssd", "gdn": "delta", "mingru": "scan", "minlstm": "scan"}


def machine_info() -> dict:
    import torch
    from elmanlab.hardware import package_version as ver
    from elmanlab.ops._build import nvcc_path
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "gpu": None, "triton": ver("triton", "pytorch-triton"),
            "fla": ver("flash-linear-attention", "fla-core"), "mamba_ssm": ver("mamba-ssm", "mamba_ssm"),
            "tilelang": ver("tilelang"), "schedulefree": ver("schedulefree"), "nvcc": nvcc_path()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info["gpu"] = {"name": p.name, "capability": f"sm_{p.major}{p.minor}", "sms": p.multi_processor_count,
                       "memory_gib": round(p.total_memory / 2 ** 30, 1), "count": torch.cuda.device_count()}
    return info


def _backend_info(family: str, params: str) -> dict:
    """The family's op folder answering ``backend_info`` at the family's shapes for ``params``."""
    from elmanlab.sizing import model_config, report
    cfg = model_config(family, params=params)
    op = FAMILY_OPS[family].split()[0]
    if op == "elman":
        shapes = {"d_inner": report(cfg).d_inner, "nonlinearity": "linear" if family == "e42" else "tanh"}
    elif op == "e88":
        n = cfg.options.n_state
        shapes = {"n_state": n, "head_v_dim": int(round(n * cfg.options.expansion))}
    else:
        shapes = {}
    return importlib.import_module(f"elmanlab.ops.{op}").backend_info(**shapes)


def family_paths(params: str = "400M") -> dict:
    """family -> {'op', 'path', 'fast', 'reason'} on this machine, at the family's sizes for ``params``."""
    out = {}
    for fam, op in FAMILY_OPS.items():
        try:
            r = _backend_info(fam, params)
        except Exception as e:  # a probe that breaks is itself the answer
            r = {"path": "unknown", "fast": False,
                 "reason": f"probe failed: {type(e).__name__}: {e}".splitlines()[0]}
        out[fam] = {"op": op, **r}
    return out


def probe_families(report=None) -> dict:
    """One small bf16 forward+backward of each family's layer on the GPU: 'ok' or the error.
    ``report(family, result)`` is called as each one finishes."""
    import torch
    from elmanlab.config import ModelConfig
    from elmanlab.hardware import autocast
    from elmanlab.lm import LM
    small = {"e1": 256, "e33": 256, "e42": 256, "e88": 256, "mamba2": 256, "gdn": 512, "mingru": 256,
             "minlstm": 256}
    out = {}
    for fam, dim in small.items():
        try:
            torch.manual_seed(0)
            model = LM(ModelConfig(fam, dim=dim, depth=1)).cuda()
            x = torch.randint(0, 256, (2, 65), device="cuda")
            with autocast(x.device):
                _, loss = model(x[:, :-1], x[:, 1:])
            loss.backward()
            bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
            out[fam] = "ok" if torch.isfinite(loss) and not bad else f"non-finite ({', '.join(bad[:3])})"
        except Exception as e:
            out[fam] = f"{type(e).__name__}: {e}".splitlines()[0][:200]
        if report is not None:
            report(fam, out[fam])
    return out
