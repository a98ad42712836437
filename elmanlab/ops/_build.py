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


class KernelBuildError(RuntimeError):
    """The CUDA toolchain is missing or the kernel failed to compile/load."""


def nvcc_path() -> str | None:
    """The nvcc the kernels are built with ($ELMANLAB_NVCC, $CUDA_HOME/bin, PATH, /usr/local/cuda), or None."""
    for cand in (os.environ.get("ELMANLAB_NVCC"),
                 os.path.join(os.environ.get("CUDA_HOME", ""), "bin", "nvcc") if os.environ.get("CUDA_HOME") else None,
                 shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


def find_nvcc() -> str:
    nvcc = nvcc_path()
    if nvcc is None:
        raise KernelBuildError("nvcc not found: set CUDA_HOME or ELMANLAB_NVCC to build the fused kernels")
    return nvcc


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
            raise KernelBuildError(f"nvcc failed on {source.name}:\n{proc.stderr[-4000:]}")
        os.replace(tmp, lib_path)
    try:
        lib = ctypes.CDLL(str(lib_path))
    except OSError as exc:
        raise KernelBuildError(f"cannot load {lib_path}: {exc}") from exc
    lib.elk_error_string.restype = ctypes.c_char_p
    lib.elk_error_string.argtypes = [ctypes.c_int]
    return lib


def check(lib: ctypes.CDLL, code: int, what: str) -> None:
    if code != 0:
        raise RuntimeError(f"{what} failed: CUDA error {code} ({lib.elk_error_string(code).decode()})")


def ptr(t) -> ctypes.c_void_p:
    return ctypes.c_void_p(0 if t is None else t.data_ptr())


def stream_ptr(device) -> ctypes.c_void_p:
    import torch

    return ctypes.c_void_p(torch.cuda.current_stream(device).cuda_stream)
