"""``elmanlab doctor``: what this machine has, and which kernel each model family will run.

Versions are read from the installed distributions' metadata (nothing heavy is imported for
them). On a CUDA machine each family's fast path is then asked what it would use at the family's
default 400M shapes (this imports fla / mamba_ssm / triton and may compile the Elman kernels);
``--probe`` also runs one small bf16 training step (forward + backward) of every family's layer on
the GPU and reports whether it ran. Without CUDA every family runs its plain-PyTorch reference.
"""
from __future__ import annotations

import importlib.metadata as md
import json
import os
import platform
import shutil
import sys

FAMILY_OPS = {"e1": "elman (tanh)", "e33": "elman (tanh)", "e42": "elman (linear)", "e88": "e88",
              "mamba2": "ssd", "gdn": "delta", "mingru": "scan", "minlstm": "scan"}


def register(sub) -> None:
    p = sub.add_parser("doctor", help="show GPU, library versions and the kernel path of each model family",
                       description="Print the GPU, torch, triton, fla, mamba_ssm and TileLang versions, and "
                                   "which path (a fast kernel, or the plain-PyTorch reference) each model "
                                   "family will use on this machine.")
    p.add_argument("--probe", action="store_true",
                   help="also run one small bf16 forward+backward of every family's layer on the GPU")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=cmd_doctor)


def _ver(*dists: str) -> str | None:
    for d in dists:
        try:
            return md.version(d)
        except md.PackageNotFoundError:
            continue
    return None


def _find_nvcc() -> str | None:
    for cand in (os.environ.get("CUDA_HOME") and os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc"),
                 shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if cand and os.path.isfile(cand):
            return cand
    return None


def machine_info() -> dict:
    import torch
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "gpu": None, "triton": _ver("triton", "pytorch-triton"),
            "fla": _ver("flash-linear-attention", "fla-core"), "mamba_ssm": _ver("mamba-ssm", "mamba_ssm"),
            "tilelang": _ver("tilelang"), "schedulefree": _ver("schedulefree"), "nvcc": _find_nvcc()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info["gpu"] = {"name": p.name, "capability": f"sm_{p.major}{p.minor}", "sms": p.multi_processor_count,
                       "memory_gib": round(p.total_memory / 2 ** 30, 1), "count": torch.cuda.device_count()}
    return info


def _default_cfg(family: str, params: str = "400M"):
    from elmanlab.sizing import model_config
    return model_config(family, params=params)


def _elman_path(family: str, linear: bool, params: str = "400M") -> dict:
    import torch
    from elmanlab.ops import elman as ops_elman
    from elmanlab.sizing import report
    key = "linear" if linear else "tanh"
    if key not in ops_elman.FAST_IMPLS:
        return {"path": "reference", "reason": f"no fast Elman kernel registered for {key}"}
    d = report(_default_cfg(family, params)).d_inner
    fused = sys.modules.get("elmanlab.ops.elman.fused")
    probe = getattr(fused, "persistent_supported", None)
    if probe is None:
        return {"path": f"registered {ops_elman.FAST_IMPLS[key].__name__}", "reason": "no capability probe"}
    if not linear and fused._impl_choice() == "cudnn":
        return {"path": "cuDNN tanh RNN", "reason": "ELMANLAB_ELMAN_IMPL=cudnn"}
    wx = torch.empty(1, 1, d, device="cuda", dtype=torch.bfloat16)
    if probe(wx):
        return {"path": f"elmanlab persistent Elman CUDA kernel ({key})", "reason": f"d_inner {d} fits"}
    if not linear:
        return {"path": "cuDNN tanh RNN (stepping stone)", "reason": f"persistent kernel not usable at d_inner {d}"}
    return {"path": "chunked linear scan (PyTorch GEMMs, ops/elman/chunked.py)",
            "reason": f"persistent kernel not usable at d_inner {d}"}


def _e88_path(params: str = "400M") -> dict:
    import torch
    from elmanlab.ops import e88 as ops_e88
    if "default" not in ops_e88.FAST_IMPLS:
        return {"path": "reference", "reason": "no fast E88 kernel registered"}
    cfg = _default_cfg("e88", params)
    n = cfg.options.n_state
    m = int(round(n * getattr(cfg.options, "expansion", 1.0)))
    fused = sys.modules.get("elmanlab.ops.e88.fused")
    probe = getattr(fused, "cuda_supported", None)
    if probe is None:
        return {"path": f"registered {ops_e88.FAST_IMPLS['default'].__name__}", "reason": "no capability probe"}
    q = torch.empty(1, 1, 1, n, device="cuda", dtype=torch.bfloat16)
    v = torch.empty(1, 1, 1, m, device="cuda", dtype=torch.bfloat16)
    if probe(q, v):
        return {"path": "elmanlab E88 CUDA kernel", "reason": f"n_state {n}, value dim {m}"}
    return {"path": "reference", "reason": f"E88 kernel does not support n {n}, m {m} here"}


def family_paths(params: str = "400M") -> dict:
    """family -> {'op', 'path', 'reason'} on this machine, at the family's sizes for ``params``."""
    import torch
    from elmanlab.ops import reference_forced
    out = {}
    for fam, op in FAMILY_OPS.items():
        if not torch.cuda.is_available():
            out[fam] = {"op": op, "path": "reference", "reason": "no CUDA device"}
            continue
        if reference_forced():
            out[fam] = {"op": op, "path": "reference", "reason": "ELMANLAB_REFERENCE is set"}
            continue
        try:
            if fam in ("e1", "e33", "e42"):
                r = _elman_path(fam, fam == "e42", params)
            elif fam == "e88":
                r = _e88_path(params)
            elif fam == "mamba2":
                from elmanlab.ops.ssd import fast
                r = fast.backend_info()
            elif fam == "gdn":
                from elmanlab.ops.delta import fast
                r = fast.backend_info()
            else:
                from elmanlab.ops.scan import fast
                r = fast.backend_info()
        except Exception as e:  # a probe that breaks is itself the answer
            r = {"path": "unknown", "reason": f"probe failed: {type(e).__name__}: {e}".splitlines()[0]}
        out[fam] = {"op": op, **r}
    return out


def probe_families(report=None) -> dict:
    """One small bf16 forward+backward of each family's layer on the GPU: 'ok' or the error.
    ``report(family, result)`` is called as each one finishes."""
    import torch
    from elmanlab.config import ModelConfig
    from elmanlab.lm import LM
    small = {"e1": 256, "e33": 256, "e42": 256, "e88": 256, "mamba2": 256, "gdn": 512, "mingru": 256,
             "minlstm": 256}
    out = {}
    for fam, dim in small.items():
        try:
            torch.manual_seed(0)
            model = LM(ModelConfig(fam, dim=dim, depth=1)).cuda()
            x = torch.randint(0, 256, (2, 65), device="cuda")
            with torch.autocast("cuda", dtype=torch.bfloat16):
                _, loss = model(x[:, :-1], x[:, 1:])
            loss.backward()
            bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
            out[fam] = "ok" if torch.isfinite(loss) and not bad else f"non-finite ({', '.join(bad[:3])})"
        except Exception as e:
            out[fam] = f"{type(e).__name__}: {e}".splitlines()[0][:200]
        if report is not None:
            report(fam, out[fam])
    return out


def cmd_doctor(args) -> int:
    info = machine_info()
    paths = family_paths()
    if args.json:
        probe = probe_families() if args.probe and info["gpu"] else None
        print(json.dumps({"machine": info, "families": paths, "probe": probe}, indent=2))
        return 0
    g = info["gpu"]
    print("machine")
    print(f"  python        {info['python']}")
    print(f"  torch         {info['torch']} (CUDA {info['cuda'] or '-'})")
    print("  GPU           " + (f"{g['name']} x{g['count']} ({g['capability']}, {g['sms']} SMs, "
                                 f"{g['memory_gib']} GiB)" if g else "none"))
    for k, label in (("triton", "triton"), ("fla", "fla"), ("mamba_ssm", "mamba_ssm"), ("tilelang", "TileLang"),
                     ("schedulefree", "schedulefree"), ("nvcc", "nvcc")):
        print(f"  {label:<13} {info[k] or 'not installed'}")
    print("model families (path at the default 400M shapes)")
    for fam, r in paths.items():
        line = f"  {fam:<8} {r['path']}"
        if r["path"] == "reference" or "refused" in r["path"] or r["path"] == "unknown":
            line += f"  [{r['reason']}]"
        print(line)
    if args.probe and info["gpu"]:
        print("probe (bf16 forward+backward, one small layer; a fresh machine tunes the Triton kernels "
              "of mamba2 and gdn first, minutes)", flush=True)
        probe_families(lambda fam, r: print(f"  {fam:<8} {r}", flush=True))
    elif args.probe:
        print("probe: skipped, no GPU")
    return 0
