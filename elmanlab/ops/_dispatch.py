"""Choosing between a fast kernel and the plain-PyTorch reference, saying which one will run
(``backend_info``) and recording which one did run (:func:`record`, :func:`implementations_used`)."""
from __future__ import annotations

import contextlib
import os

import torch

# Keep Triton autotune results on disk (read when a kernel module is imported), so that every
# training process of a study does not tune mamba_ssm's and fla's Triton kernels again (about
# 2 minutes per process at 400M). TRITON_CACHE_AUTOTUNING=0 turns it off.
os.environ.setdefault("TRITON_CACHE_AUTOTUNING", "1")

REFERENCE = "reference"          # the path name of every plain-PyTorch reference
_TRUE, _FALSE = ("1", "true"), ("", "0", "false")

# None: ELMANLAB_REFERENCE not read yet. It is read (and checked) on first use, not at import, so that
# a bad value is one ElmanlabError from the code that needs it and `import elmanlab` never fails.
_FORCE_REFERENCE: bool | None = None

# op -> {path: fast}, in the order the paths first ran (see implementations_used)
_USED: dict[str, dict[str, bool]] = {}


def env_flag(name: str, default: bool) -> bool:
    """A boolean switch from the environment: unset -> ``default``; "", "0", "false" -> False;
    "1", "true" -> True (any case); anything else is a one-line ElmanlabError naming the variable,
    the value and the accepted values."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    v = raw.lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    from elmanlab.errors import ElmanlabError
    raise ElmanlabError(f"{name}={raw!r} is not understood: use 1 or true (on), 0, false or empty (off), "
                        f"or unset it")


def up(x: torch.Tensor) -> torch.Tensor:
    """At least float32 (float64 stays float64): recurrent math never runs in half precision."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def up_opt(x: torch.Tensor | None) -> torch.Tensor | None:
    """:func:`up` of an optional tensor (an initial state, a skip term)."""
    return None if x is None else up(x)


def reference_forced() -> bool:
    """True when the plain-PyTorch references are forced (``ELMANLAB_REFERENCE=1`` or
    :func:`force_reference`); reads and checks the variable on first use."""
    global _FORCE_REFERENCE
    if _FORCE_REFERENCE is None:
        _FORCE_REFERENCE = env_flag("ELMANLAB_REFERENCE", False)
    return _FORCE_REFERENCE


@contextlib.contextmanager
def force_reference(enabled: bool = True):
    """Context manager (or plain call via ``set_force_reference``) that disables fast kernels."""
    global _FORCE_REFERENCE
    old = _FORCE_REFERENCE
    _FORCE_REFERENCE = enabled
    try:
        yield
    finally:
        _FORCE_REFERENCE = old


def set_force_reference(enabled: bool) -> None:
    global _FORCE_REFERENCE
    _FORCE_REFERENCE = enabled


def reference_reason() -> str | None:
    """Why every op runs its reference on this machine (no CUDA device, or the reference forced);
    None when the fast paths are in play. The first question of every folder's ``backend_info``."""
    forced = reference_forced()                     # checks ELMANLAB_REFERENCE on every machine
    if not torch.cuda.is_available():
        return "no CUDA device"
    if forced:
        return "ELMANLAB_REFERENCE is set"
    return None


_FIXES = {"no CUDA device": "run on a CUDA GPU (the fast kernels are CUDA-only)",
          "ELMANLAB_REFERENCE is set": "unset ELMANLAB_REFERENCE (or set it to 0)"}


def reference_info(reason: str, fix: str | None = None) -> dict:
    """``backend_info``'s answer when the plain-PyTorch reference runs: ``{"path": "reference",
    "fast": False, "reason", "fix"}`` (``fix``: one short sentence, what to install or set)."""
    return {"path": REFERENCE, "fast": False, "reason": reason,
            "fix": fix or _FIXES.get(reason, "see `elmanlab doctor`")}


def fast_path_enabled(*tensors: torch.Tensor) -> bool:
    """True when every tensor lives on CUDA and the reference is not forced."""
    if _FORCE_REFERENCE is None:
        reference_forced()
    if _FORCE_REFERENCE:
        return False
    return all(t is None or t.is_cuda for t in tensors)


# ---------------------------------------------------------------- what ran

def record(op: str, path: str, fast: bool) -> None:
    """Note that ``op`` just ran ``path`` (a ``backend_info`` path name). Called from the code branch
    that runs, on every call: one dict lookup and one assignment. Python runs during a CUDA graph's
    capture but not during its replays, so a captured step is recorded by its eager warm-up."""
    paths = _USED.get(op)
    if paths is None:
        _USED[op] = {path: fast}
    elif path not in paths:
        paths[path] = fast


def implementations_used() -> dict[str, dict]:
    """What each op ran in this process since the last :func:`reset_implementations_used`:
    ``{op: {"path": str, "paths": [str, ...], "fast": bool}}``. ``paths`` lists every distinct path
    that op ran, in the order they first ran (more than one when, e.g., layers of two widths took
    different kernels); ``path`` is the only one, or all of them joined by " + "; ``fast`` is True
    only when every one of them is a fast path. Ops: "elman", "e88", "ssd", "delta", "scan" (the
    recurrences), "attention" (the transformer's) and "short_conv", "gated_rmsnorm" (the layers' fused helpers). The plain-PyTorch
    reference is the path "reference" (fast False)."""
    return {op: {"path": " + ".join(paths), "paths": list(paths), "fast": all(paths.values())}
            for op, paths in _USED.items()}


def reset_implementations_used() -> None:
    """Forget what ran (e.g. before a run's first step)."""
    _USED.clear()
