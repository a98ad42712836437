"""``elmanlab doctor``: what this machine has, and which kernel each model family will run.

Versions are read from the installed distributions' metadata (nothing heavy is imported for
them). Each family is then asked, through its ``backend_info`` (its op folder's, at the family's
shapes, and its layer's fused helpers), what it runs at the family's default 400M shapes (on CUDA
this imports fla / mamba_ssm / triton and may compile the Elman and E88 kernels); ``--probe`` also
runs one small bf16 training step (forward + backward) of every family's layer on the GPU and
reports whether it ran. Without CUDA every family runs its plain-PyTorch reference.
"""
from __future__ import annotations

import platform

from elmanlab.layers import FAMILIES

FAMILY_OPS = {name: cls.op for name, cls in FAMILIES.items()}      # family -> its op folder


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


def family_paths(params: str = "400M") -> dict:
    """family -> {'op', 'path', 'fast', 'reason'} (+ 'fix' when not fast, 'helpers' where the layer
    calls fused helpers) on this machine, at the family's default sizes for ``params``: each family's
    ``backend_info``. A probe that raises is reported as path 'unknown' with the error as reason."""
    from elmanlab.sizing import model_config
    out = {}
    for fam, op in FAMILY_OPS.items():
        try:
            cfg = model_config(fam, params=params)
            r = FAMILIES[fam].backend_info(cfg.dim, cfg.options)
        except Exception as e:  # a probe that breaks is itself the answer
            r = {"path": "unknown", "fast": False,
                 "reason": f"probe failed: {type(e).__name__}: {e}".splitlines()[0],
                 "fix": "see the error; `elmanlab doctor --probe` runs each family once"}
        out[fam] = {"op": op, **r}
    return out


def missing_fast_paths(paths: dict) -> list[str]:
    """The families of ``family_paths()`` whose path is not fast (on a CUDA machine: those that would
    stop a run before step 1 unless --allow-reference), in the order given."""
    return [fam for fam, r in paths.items() if not r.get("fast")]


def probe_families(report=None) -> dict:
    """One small bf16 forward+backward of each family's layer on the GPU: 'ok', 'ok, but slow paths
    ran: ...' (from the ops' record of what ran) or the error. ``report(family, result)`` is called
    as each one finishes."""
    import torch
    from elmanlab.config import ModelConfig
    from elmanlab.hardware import autocast
    from elmanlab.lm import LM
    from elmanlab.ops import implementations_used, reset_implementations_used
    small = {"gdn": 512}                        # the others at width 256 (GDN's heads are 256 wide)
    out = {}
    for fam, dim in ((f, small.get(f, 256)) for f in FAMILIES):
        try:
            torch.manual_seed(0)
            reset_implementations_used()
            model = LM(ModelConfig(fam, dim=dim, depth=1)).cuda()
            x = torch.randint(0, 256, (2, 65), device="cuda")
            with autocast(x.device):
                _, loss = model(x[:, :-1], x[:, 1:])
            loss.backward()
            bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
            slow = [f"{op}: {r['path']}" for op, r in implementations_used().items() if not r["fast"]]
            out[fam] = (f"non-finite ({', '.join(bad[:3])})" if bad or not torch.isfinite(loss) else
                        f"ok, but slow paths ran: {'; '.join(slow)}" if slow else "ok")
        except Exception as e:
            out[fam] = f"{type(e).__name__}: {e}".splitlines()[0][:200]
        if report is not None:
            report(fam, out[fam])
    return out
