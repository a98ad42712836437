"""Compile a CUDA source of the ops (``elman/persistent.cu``, ``e88/e88_kernel.cu``) into a shared
library on first use, and load it.

The kernels need no PyTorch headers: ``nvcc -shared`` builds them in a second or two, the result
is cached under ``$ELMANLAB_CACHE`` (default ``~/.cache/elmanlab/kernels``) keyed by a hash of
the source, the GPU architecture, the compiler and its flags, and Python calls the ``extern "C"`` launchers
through ctypes with raw pointers and PyTorch's current stream. Nothing here runs at import time.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

_LOCK = threading.Lock()
_LIBS: dict = {}
_FAILED: dict = {}      # a build that failed is not tried again on every call (the layers fall back)


NVCC_FIX = "install the CUDA toolkit (nvcc) or set CUDA_HOME / ELMANLAB_NVCC"


class KernelBuildError(RuntimeError):
    """The CUDA toolchain is missing or the kernel failed to compile/load. ``fix``: one short
    sentence saying what to do about it."""

    def __init__(self, msg: str, fix: str = NVCC_FIX):
        super().__init__(msg)
        self.fix = fix


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def nvcc_path() -> str | None:
    """The nvcc the kernels are built with ($ELMANLAB_NVCC, $CUDA_HOME/bin, PATH, /usr/local/cuda), or None.
    An ELMANLAB_NVCC that is set is the only candidate (None when it is not an executable file)."""
    explicit = os.environ.get("ELMANLAB_NVCC")
    if explicit:
        return explicit if _executable(explicit) else None
    for cand in (os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc") if os.environ.get("CUDA_HOME") else None,
                 shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if cand and _executable(cand):
            return cand
    return None


def find_nvcc() -> str:
    nvcc = nvcc_path()
    if nvcc is None:
        explicit = os.environ.get("ELMANLAB_NVCC")
        if explicit:
            raise KernelBuildError(f"ELMANLAB_NVCC={explicit!r} is not an executable file",
                                   "point ELMANLAB_NVCC at nvcc, or unset it")
        raise KernelBuildError("nvcc not found (ELMANLAB_NVCC, CUDA_HOME, PATH, /usr/local/cuda)")
    return nvcc


def first_error_line(stderr: str) -> str:
    """The line of a compiler's output that says what went wrong (its first "error" line, else its
    first non-empty line)."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    return next((ln for ln in lines if "error" in ln.lower()), lines[0] if lines else "no output")


def cache_dir() -> Path:
    return Path(os.environ.get("ELMANLAB_CACHE", Path.home() / ".cache" / "elmanlab" / "kernels"))


def load_library(source: Path, device_index: int) -> ctypes.CDLL:
    """Build (once per source/arch/compiler) and load ``source`` as a ctypes library."""
    import torch

    major, minor = torch.cuda.get_device_capability(device_index)
    arch = f"{major}{minor}"
    key_src = (source, arch)
    with _LOCK:
        if key_src in _LIBS:
            return _LIBS[key_src]
        if key_src in _FAILED:
            raise _FAILED[key_src]
        try:
            lib = _build_and_load(source, arch)
        except KernelBuildError as exc:
            _FAILED[key_src] = exc
            raise
        _LIBS[key_src] = lib
        return lib


def nvcc_flags(arch: str) -> list[str]:
    return ["-O3", "-std=c++17", f"-gencode=arch=compute_{arch},code=sm_{arch}", "-shared", "-Xcompiler", "-fPIC"]


def library_digest(source_text: bytes, arch: str, nvcc_version: str, flags: list[str]) -> str:
    """The cache key of a built library: source, architecture, compiler and its flags (a change of
    any of them builds anew instead of loading a stale library)."""
    h = hashlib.sha256(source_text)
    for part in (arch, nvcc_version, "\0".join(flags)):
        h.update(b"\0" + part.encode())
    return h.hexdigest()[:16]


def _build_and_load(source: Path, arch: str) -> ctypes.CDLL:
    nvcc = find_nvcc()
    text = source.read_bytes()
    ver = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    flags = nvcc_flags(arch)
    digest = library_digest(text, arch, ver, flags)
    out_dir = cache_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    lib_path = out_dir / f"{source.stem}-sm{arch}-{digest}.so"
    if not lib_path.exists():
        fd, tmp = tempfile.mkstemp(dir=out_dir, suffix=".so.tmp")
        os.close(fd)
        cmd = [nvcc, *flags, "-o", tmp, str(source)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            os.unlink(tmp)
            raise KernelBuildError(f"nvcc failed on {source.name}: {first_error_line(proc.stderr)[:300]}\n"
                                   f"{proc.stderr[-4000:]}",
                                   f"check the CUDA toolkit (`nvcc` fails on {source.name}) or set ELMANLAB_NVCC "
                                   "to a working nvcc")
        os.replace(tmp, lib_path)
    try:
        lib = ctypes.CDLL(str(lib_path))
    except OSError as exc:
        raise KernelBuildError(f"cannot load {lib_path}: {exc}",
                               f"delete {lib_path} (it is rebuilt) or check the CUDA driver") from exc
    lib.elk_error_string.restype = ctypes.c_char_p
    lib.elk_error_string.argtypes = [ctypes.c_int]
    return lib


def failure(exc: BaseException) -> tuple[str, str]:
    """(reason, fix) of a kernel that could not be built or planned: the error's first line, and
    what to do about it."""
    text = str(exc) if isinstance(exc, KernelBuildError) else f"{type(exc).__name__}: {exc}"
    reason = (text.splitlines() or [""])[0][:300]
    return reason, getattr(exc, "fix", "check the CUDA toolkit and driver (`elmanlab doctor`)")


def check(lib: ctypes.CDLL, code: int, what: str) -> None:
    if code != 0:
        raise RuntimeError(f"{what} failed: CUDA error {code} ({lib.elk_error_string(code).decode()})")


def ptr(t) -> ctypes.c_void_p:
    return ctypes.c_void_p(0 if t is None else t.data_ptr())


def device_index(device) -> int:
    """The CUDA device index of ``device`` (a torch.device; None or no index: the current device)."""
    import torch

    idx = getattr(device, "index", None) if device is not None else None
    return torch.cuda.current_device() if idx is None else idx


def stream_ptr(device) -> ctypes.c_void_p:
    import torch

    return ctypes.c_void_p(torch.cuda.current_stream(device).cuda_stream)
