"""The nvcc build of the ops' own CUDA kernels (ops/_build.py): nothing built at import, a failed
build tried once, a cache key covering everything that changes the library."""
import subprocess
import sys

import pytest


def test_import_compiles_nothing():
    # importing the ops (and registering the fast paths) must not build kernels or import triton
    code = ("import sys, elmanlab.ops.elman, elmanlab.ops.e88, elmanlab.layers.elman, elmanlab.layers.e88;"
            "from elmanlab.ops import _build; assert not _build._LIBS;"
            "assert 'triton' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_failed_kernel_build_is_not_retried_on_every_call(monkeypatch, tmp_path):
    """Where nvcc fails, the layers fall back to another path on every call: the build must be tried
    once per process, not once per layer call."""
    import torch
    import elmanlab.ops._build as build

    calls = []

    def no_nvcc():
        calls.append(1)
        raise build.KernelBuildError("nvcc not found")
    monkeypatch.setattr(build, "find_nvcc", no_nvcc)
    monkeypatch.setattr(build, "_FAILED", {})
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=None: (9, 0))
    src = tmp_path / "k.cu"
    src.write_text("// kernel")
    for _ in range(3):
        with pytest.raises(build.KernelBuildError, match="nvcc not found"):
            build.load_library(src, 0)
    assert len(calls) == 1


def test_kernel_cache_key_covers_source_arch_compiler_and_flags():
    """A cached library is reused only for the same source, GPU architecture, nvcc and nvcc flags."""
    from elmanlab.ops._build import library_digest, nvcc_flags
    base = library_digest(b"src", "90", "nvcc 13.0", nvcc_flags("90"))
    assert base == library_digest(b"src", "90", "nvcc 13.0", nvcc_flags("90"))
    assert len({base,
                library_digest(b"src2", "90", "nvcc 13.0", nvcc_flags("90")),
                library_digest(b"src", "80", "nvcc 13.0", nvcc_flags("80")),
                library_digest(b"src", "90", "nvcc 12.8", nvcc_flags("90")),
                library_digest(b"src", "90", "nvcc 13.0", nvcc_flags("90") + ["-lineinfo"])}) == 5
