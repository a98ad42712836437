"""Facts about the machine a run uses: device, precision, versions, peak FLOP/s, memory, processes."""
from __future__ import annotations

import os
import sys
from importlib import metadata

import torch

from elmanlab.errors import ElmanlabError

# bf16 dense matmul rates measured on these GPUs (used for MFU); others are measured once.
PEAK_BF16_FLOPS = (("H200", 789e12), ("H100", 750e12))
_MEASURED_PEAK: dict = {}


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` (CUDA when there is a GPU), ``cpu``, ``cuda`` (this process's GPU) or ``cuda:N``."""
    name = (name or "auto").lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ElmanlabError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
        if name == "cuda":
            return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
        try:
            dev = torch.device(name)
        except RuntimeError:
            raise ElmanlabError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ElmanlabError(f"{name} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
        return dev
    if name == "cpu":
        return torch.device("cpu")
    raise ElmanlabError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")


def autocast(device: torch.device, cache: bool = True, model: torch.nn.Module | None = None):
    """The precision of training, evaluation and generation: bf16 autocast on CUDA, off elsewhere
    (fp32 on CPU), and off for a ``model`` whose weights are bf16 themselves (train setting
    ``precision: bf16``: it runs as it is, like ekg/elman's runs). ``cache=False`` for a region
    captured in a CUDA graph (PyTorch's rule for autocast under graphs: no cast cache)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=uses_autocast(device, model),
                          cache_enabled=cache)


def uses_autocast(device: torch.device, model: torch.nn.Module | None = None) -> bool:
    """Whether :func:`autocast` turns bf16 autocast on: on CUDA, unless the model is bf16 itself."""
    return device.type == "cuda" and not (model is not None and is_pure_bf16(model))


def is_pure_bf16(model: torch.nn.Module) -> bool:
    """Whether the model's weights are bf16 (``precision: bf16``), not fp32 master weights."""
    p = next(model.parameters(), None)
    return p is not None and p.dtype == torch.bfloat16


def package_version(*dists: str) -> str | None:
    """The installed version of the first of ``dists`` that is installed (from its metadata)."""
    for d in dists:
        try:
            return metadata.version(d)
        except metadata.PackageNotFoundError:
            continue
    return None


def source_info() -> dict:
    """The code that runs: elmanlab's git commit and whether the work tree differs from it (tracked
    files). ``ELMANLAB_SOURCE_COMMIT`` (with ``ELMANLAB_SOURCE_DIRTY``, 0 or 1) names it when set: for a
    copied tree whose own git history is not the code's (a device machine's copy, a container);
    else git is asked in the package's checkout; else (an installed wheel) None."""
    import subprocess
    from pathlib import Path
    commit = os.environ.get("ELMANLAB_SOURCE_COMMIT") or None
    if commit:
        dirty = os.environ.get("ELMANLAB_SOURCE_DIRTY")
        return {"commit": commit, "dirty": None if dirty not in ("0", "1") else dirty == "1", "from": "environment"}
    root = Path(__file__).resolve().parent.parent

    def git(*args):
        try:
            r = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return r if r.returncode == 0 else None
    top = git("rev-parse", "--show-toplevel")
    if top is not None and Path(top.stdout.strip()).resolve() == root:
        head = git("rev-parse", "HEAD")
        status = git("status", "--porcelain", "--untracked-files=no")
        if head is not None:
            return {"commit": head.stdout.strip(), "dirty": None if status is None else bool(status.stdout.strip()),
                    "from": "git"}
    return {"commit": None, "dirty": None, "from": None}


def versions(device: torch.device) -> dict:
    import numpy as np

    import elmanlab
    out = {"elmanlab": elmanlab.__version__, "python": sys.version.split()[0], "torch": torch.__version__,
           "numpy": np.__version__, "schedulefree": package_version("schedulefree"),
           "triton": package_version("triton"), "fla": package_version("flash-linear-attention", "fla-core"),
           "mamba_ssm": package_version("mamba-ssm", "mamba_ssm"), "cuda": torch.version.cuda, "gpu": None}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def measure_bf16_matmul_flops(device: torch.device, n: int = 8192, reps: int = 10) -> float:
    """bf16 FLOP/s of an n x n x n matmul on this GPU: the median of 5 timed groups of ``reps``
    products (CUDA events), after 3 untimed ones."""
    import statistics
    with torch.cuda.device(device):              # the events record on the current device
        a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
        b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
        for _ in range(3):
            a @ b
        times = []
        for _ in range(5):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            for _ in range(reps):
                a @ b
            e.record()
            torch.cuda.synchronize(device)
            times.append(s.elapsed_time(e) / 1e3 / reps)
        del a, b
        torch.cuda.empty_cache()
    return 2 * n ** 3 / statistics.median(times)


def peak_bf16_flops(device: torch.device) -> float | None:
    """bf16 matmul FLOP/s of this GPU: the measured table, else a one-off measurement."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_BF16_FLOPS:
        if key.lower() in name.lower():
            return flops
    if name not in _MEASURED_PEAK:
        _MEASURED_PEAK[name] = measure_bf16_matmul_flops(device)
    return _MEASURED_PEAK[name]


def peak_memory_gb(device: torch.device) -> float:
    """Peak CUDA memory allocated, or the process's peak resident set size on CPU (GB = 1e9 bytes)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    import resource
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss * (1 if sys.platform == "darwin" else 1024) / 1e9


def dist_info() -> tuple[int, int, int]:
    """(world size, rank, local rank) from torchrun's environment; (1, 0, 0) in a plain process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return world, rank, local
