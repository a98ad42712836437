"""Every implementation switch rejects values it does not honour: ELMANLAB_REFERENCE and
ELMANLAB_ELMAN_MMA take only unset, "", 0, 1, true, false (any case); ELMANLAB_ELMAN_IMPL takes
auto, persistent, cudnn, and `persistent` means the persistent kernel or a one-line error naming why
and the fix; a bad value is an ElmanlabError where it is first used, never at import."""
import os
import subprocess
import sys

import pytest
import torch

import elmanlab.ops._dispatch as d
import elmanlab.ops.elman.fused as fused
from elmanlab.errors import ElmanlabError
from elmanlab.ops import implementations_used, reset_implementations_used


def one_line(e) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


@pytest.fixture
def fresh_env(monkeypatch):
    """ELMANLAB_REFERENCE read anew (the process may have read it already)."""
    monkeypatch.setattr(d, "_FORCE_REFERENCE", None)
    return monkeypatch


@pytest.mark.parametrize("value,forced", [(None, False), ("", False), ("0", False), ("false", False),
                                          ("FALSE", False), ("1", True), ("true", True), ("True", True)])
def test_reference_switch_accepted_values(fresh_env, value, forced):
    if value is None:
        fresh_env.delenv("ELMANLAB_REFERENCE", raising=False)
    else:
        fresh_env.setenv("ELMANLAB_REFERENCE", value)
    assert d.reference_forced() is forced
    assert d.fast_path_enabled() is not forced


@pytest.mark.parametrize("value", ["yes", "2", "on", " 1", "ref"])
def test_reference_switch_rejects_other_values_where_first_used(fresh_env, value):
    fresh_env.setenv("ELMANLAB_REFERENCE", value)
    from elmanlab.config import ModelConfig
    from elmanlab.lm import LM
    lm = LM(ModelConfig("e1", 16, 1))                    # building a model does not read it
    with pytest.raises(ElmanlabError) as e:
        lm(torch.randint(0, 256, (1, 4)))                 # the first op call does
    msg = one_line(e)
    assert "ELMANLAB_REFERENCE" in msg and repr(value) in msg
    assert all(w in msg for w in ("1", "true", "0", "false", "unset"))
    fresh_env.setattr(d, "_FORCE_REFERENCE", None)
    with pytest.raises(ElmanlabError, match="ELMANLAB_REFERENCE"):
        d.reference_reason()                              # backend_info's first question, on any machine


def test_a_bad_reference_switch_never_breaks_import():
    env = {**os.environ, "ELMANLAB_REFERENCE": "yes", "ELMANLAB_ELMAN_IMPL": "fastest", "ELMANLAB_ELMAN_MMA": "on"}
    code = "import elmanlab, elmanlab.ops, elmanlab.lm, elmanlab.layers, elmanlab.doctor, elmanlab.sizing"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "elmanlab", "size", "e1", "--dim", "64", "--depth", "2"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("value,on", [(None, True), ("1", True), ("TRUE", True), ("0", False), ("", False),
                                      ("false", False)])
def test_mma_switch(monkeypatch, value, on):
    monkeypatch.setattr(fused.CudaBackend, "use_mma", None)
    if value is None:
        monkeypatch.delenv("ELMANLAB_ELMAN_MMA", raising=False)
    else:
        monkeypatch.setenv("ELMANLAB_ELMAN_MMA", value)
    assert fused.CudaBackend.mma_enabled() is on


def test_mma_switch_rejects_other_values(monkeypatch):
    monkeypatch.setattr(fused.CudaBackend, "use_mma", None)
    monkeypatch.setenv("ELMANLAB_ELMAN_MMA", "tensor-cores")
    with pytest.raises(ElmanlabError) as e:
        fused.CudaBackend.mma_enabled()
    assert "ELMANLAB_ELMAN_MMA='tensor-cores'" in one_line(e)


@pytest.mark.parametrize("value,mode", [(None, fused.SYNC_DEFAULT), ("", fused.SYNC_DEFAULT), ("fence", "fence"),
                                        ("RELEASE", "release")])
def test_sync_switch(monkeypatch, value, mode):
    """ELMANLAB_ELMAN_SYNC: the tensor-core kernels' grid barrier (fence or release)."""
    monkeypatch.setattr(fused.CudaBackend, "sync", None)
    if value is None:
        monkeypatch.delenv("ELMANLAB_ELMAN_SYNC", raising=False)
    else:
        monkeypatch.setenv("ELMANLAB_ELMAN_SYNC", value)
    assert fused.CudaBackend.sync_mode() == mode


def test_sync_switch_rejects_other_values(monkeypatch):
    monkeypatch.setattr(fused.CudaBackend, "sync", None)
    monkeypatch.setenv("ELMANLAB_ELMAN_SYNC", "flags")
    with pytest.raises(ElmanlabError) as e:
        fused.CudaBackend.sync_mode()
    msg = one_line(e)
    assert "ELMANLAB_ELMAN_SYNC='flags'" in msg and "fence, release" in msg


# ---------------------------------------------------------------- ELMANLAB_ELMAN_IMPL

def _inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 5, 8, generator=g), torch.randn(8, 8, generator=g) * 0.2


@pytest.fixture
def fake_gpu(monkeypatch):
    """backend_info's CUDA questions answered without a GPU; the kernel's contract in PyTorch."""
    monkeypatch.setattr(d, "_FORCE_REFERENCE", False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(fused, "CudaBackend", fused.TorchBackend)
    reset_implementations_used()
    yield monkeypatch
    reset_implementations_used()


@pytest.mark.parametrize("value", ["fastest", "cuDNN-v9", "1"])
def test_impl_switch_rejects_other_values(fake_gpu, value):
    from elmanlab.ops import elman
    fake_gpu.setenv("ELMANLAB_ELMAN_IMPL", value)
    wx, W = _inputs()
    for call in (lambda: fused.fast_tanh(wx, W), lambda: fused.fast_linear(wx, W),
                 lambda: elman.backend_info(d_inner=64)):
        with pytest.raises(ElmanlabError) as e:
            call()
        msg = one_line(e)
        assert f"ELMANLAB_ELMAN_IMPL={value!r}" in msg and "auto, persistent or cudnn" in msg


@pytest.mark.parametrize("value", ["", "auto", "AUTO", "Persistent", "cudnn"])
def test_impl_switch_accepted_values(fake_gpu, value):
    fake_gpu.setenv("ELMANLAB_ELMAN_IMPL", value)
    fake_gpu.setattr(fused, "plan_status", lambda idx, D: ("ok", "", ""))
    fake_gpu.setattr(fused, "persistent_status", lambda wx: ("ok", "", ""))
    wx, W = _inputs()
    fused.fast_tanh(wx, W)
    want = fused.CUDNN if value == "cudnn" else fused.PERSISTENT["tanh"]
    assert implementations_used()["elman"]["path"] == want


NOT_THERE = [("size", "d_inner 4096 needs 256 resident blocks, the GPU has 132 SMs", "use a smaller d_inner"),
             ("build", "persistent kernel unavailable: nvcc not found (ELMANLAB_NVCC, CUDA_HOME, PATH, ...)",
              "install the CUDA toolkit (nvcc) or set CUDA_HOME / ELMANLAB_NVCC")]


@pytest.mark.parametrize("status", NOT_THERE, ids=["too-wide", "no-nvcc"])
def test_persistent_means_the_persistent_kernel(fake_gpu, status):
    """ELMANLAB_ELMAN_IMPL=persistent where the kernel cannot run: an error naming why and the fix
    (before: silently the same as auto); where it runs, it runs."""
    from elmanlab.ops import elman
    fake_gpu.setenv("ELMANLAB_ELMAN_IMPL", "persistent")
    fake_gpu.setattr(fused, "plan_status", lambda idx, D: status)
    fake_gpu.setattr(fused, "persistent_status", lambda wx: status)
    wx, W = _inputs()
    for fn in (fused.fast_tanh, fused.fast_linear):
        with pytest.raises(ElmanlabError) as e:
            fn(wx, W)
        msg = one_line(e)
        assert "ELMANLAB_ELMAN_IMPL=persistent" in msg and status[1] in msg and "unset ELMANLAB_ELMAN_IMPL" in msg
    assert implementations_used() == {}
    for nl in ("tanh", "linear"):
        info = elman.backend_info(d_inner=4096, nonlinearity=nl)
        assert info["fast"] is False and "refused" in info["path"] and status[1] in info["reason"]
        assert "unset ELMANLAB_ELMAN_IMPL" in info["fix"] and status[2] in info["fix"]
    # the same status without the switch: the fallback (a size limit is fast, a failed build is not)
    fake_gpu.delenv("ELMANLAB_ELMAN_IMPL")
    info = elman.backend_info(d_inner=4096, nonlinearity="tanh")
    assert info["fast"] is (status[0] == "size")
    assert info["path"] == (fused.CUDNN_STEP if status[0] == "size" else fused.CUDNN + fused.UNBUILT)
    if status[0] == "build":
        assert info["fix"] == status[2] and status[1] == info["reason"]
    fake_gpu.setenv("ELMANLAB_ELMAN_IMPL", "persistent")
    ok = ("ok", "", "")
    fake_gpu.setattr(fused, "persistent_status", lambda wx: ok)
    fake_gpu.setattr(fused, "plan_status", lambda idx, D: ok)
    fused.fast_tanh(wx, W)
    assert implementations_used()["elman"]["path"] == fused.PERSISTENT["tanh"]
    assert elman.backend_info(d_inner=64)["path"] == fused.PERSISTENT["tanh"]


def test_cudnn_is_refused_for_the_linear_recurrence(fake_gpu):
    fake_gpu.setenv("ELMANLAB_ELMAN_IMPL", "cudnn")
    wx, W = _inputs()
    with pytest.raises(ElmanlabError) as e:
        fused.fast_linear(wx, W)
    assert "cuDNN has no linear RNN" in one_line(e) and "unset ELMANLAB_ELMAN_IMPL" in str(e.value)


def test_build_failure_reasons_name_the_cause_and_fix(monkeypatch):
    """The kernels' plan questions turn a failed build into (reason, fix): nvcc missing, a bad
    ELMANLAB_NVCC, a compile error's first error line."""
    import elmanlab.ops._build as build
    import elmanlab.ops.e88.fused as e88f
    err = build.KernelBuildError("nvcc not found (ELMANLAB_NVCC, CUDA_HOME, PATH, /usr/local/cuda)")

    def boom(*a):
        raise err
    monkeypatch.setattr(fused.CudaBackend, "plan", boom)
    monkeypatch.setattr(e88f.CudaBackend, "plan_for", boom)
    monkeypatch.setattr(e88f.CudaBackend, "plan_staged_for", boom)
    monkeypatch.setattr(fused, "_WARNED", {"build"})
    monkeypatch.setattr(e88f, "_WARNED", {"build"})
    kind, reason, fix = fused.plan_status(0, 1024)
    assert kind == "build" and "nvcc not found" in reason and fix == build.NVCC_FIX
    ok, reason, fix = e88f.plan_status(0, 1, 32, 32)
    assert not ok and reason.startswith("E88 kernel unavailable: nvcc not found") and fix == build.NVCC_FIX
    monkeypatch.setattr(e88f.CudaBackend, "plan_for", lambda *a: 0)       # both variants reject the width
    monkeypatch.setattr(e88f.CudaBackend, "plan_staged_for", lambda *a, **k: 0)
    ok, reason, fix = e88f.plan_status(0, 1, 32, 512)
    assert not ok and "value dim 512" in reason and fix == e88f.WIDTH_FIX
    monkeypatch.setenv("ELMANLAB_NVCC", "/nonexistent/nvcc")
    with pytest.raises(build.KernelBuildError) as e:
        build.find_nvcc()
    assert "ELMANLAB_NVCC='/nonexistent/nvcc' is not an executable file" in str(e.value)
    assert "unset" in e.value.fix and build.nvcc_path() is None
    stderr = "k.cu(3): warning: unused\nk.cu(7): error: identifier \"foo\" is undefined\n1 error detected\n"
    assert build.first_error_line(stderr) == 'k.cu(7): error: identifier "foo" is undefined'
    assert build.failure(RuntimeError("e88_plan failed: CUDA error 2\nmore"))[0] == \
        "RuntimeError: e88_plan failed: CUDA error 2"
