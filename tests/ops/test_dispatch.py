"""The dispatch rule every op shares (ops/_dispatch): registered fast paths, nothing heavy
imported or built at import time, the reference on CPU tensors, the force-reference switch, and
every op folder's ``backend_info``."""
import importlib
import inspect
import pkgutil
import subprocess
import sys

import torch

import elmanlab.ops
from conftest import rel_err
from elmanlab.ops import force_reference
from elmanlab.ops.e88 import FAST_IMPLS as E88_FAST, e88_scan
from elmanlab.ops.elman import FAST_IMPLS as ELMAN_FAST, elman_scan, elman_scan_ref

OPS = sorted(m.name for m in pkgutil.iter_modules(elmanlab.ops.__path__) if m.ispkg)


def test_fast_impls_registered_and_cpu_uses_reference(monkeypatch):
    assert set(ELMAN_FAST) == {"tanh", "linear"} and "default" in E88_FAST
    called = []
    monkeypatch.setitem(ELMAN_FAST, "tanh", lambda *a: called.append(1))
    monkeypatch.setitem(E88_FAST, "default", lambda *a: called.append(1))
    wx = torch.randn(2, 3, 4)
    W = torch.randn(4, 4) * 0.1
    h, _ = elman_scan(wx, W, None, None, "tanh")           # CPU tensors: the reference
    assert not called and rel_err(h, elman_scan_ref(wx, W, None, None, "tanh")[0]) == 0
    q = torch.randn(1, 3, 1, 8)
    y, _ = e88_scan(q, q, torch.randn(1, 3, 1, 8), torch.rand(1, 3, 1))
    assert not called and y.shape == (1, 3, 1, 8)


def test_fast_impls_registered_and_lazy():
    """FAST_IMPLS slots are filled, and importing elmanlab imports no GPU library."""
    code = ("import sys, elmanlab.lm, elmanlab.ops.ssd as s, elmanlab.ops.delta as d, elmanlab.ops.scan as c\n"
            "assert 'default' in s.FAST_IMPLS and 'default' in d.FAST_IMPLS and 'minrnn' in c.FAST_IMPLS\n"
            "bad = [m for m in ('fla', 'mamba_ssm', 'triton', 'tilelang') if m in sys.modules]\n"
            "assert not bad, bad\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_cpu_dispatch_uses_reference(monkeypatch):
    """On CPU tensors the fast implementation is never called."""
    from elmanlab.ops import delta, scan, ssd

    def boom(*a, **k):
        raise AssertionError("fast path called on CPU")
    for mod, key in ((ssd, "default"), (delta, "default"), (delta, "gdn"), (scan, "default"), (scan, "minrnn")):
        monkeypatch.setitem(mod.FAST_IMPLS, key, boom)
    torch.manual_seed(0)
    B, T, H, P, N = 1, 5, 2, 4, 3
    y, _ = ssd.ssd(torch.randn(B, T, H, P), torch.rand(B, T, H), -torch.rand(H), torch.randn(B, T, 1, N),
                   torch.randn(B, T, 1, N))
    assert y.shape == (B, T, H, P)
    q = torch.nn.functional.normalize(torch.randn(B, T, H, 4), dim=-1)
    o, _ = delta.gated_delta_rule(q, q, torch.randn(B, T, H, 6), -torch.rand(B, T, H), torch.rand(B, T, H))
    assert o.shape == (B, T, H, 6)
    o, _ = delta.gdn(q, q, torch.randn(B, T, H, 6), torch.randn(B, T, H), torch.randn(B, T, H), torch.rand(H),
                     torch.randn(H))
    assert o.shape == (B, T, H, 6)
    h, _ = scan.minrnn_scan(torch.randn(B, T, 6), "mingru")
    assert h.shape == (B, T, 3)


def test_force_reference_disables_fast_path(monkeypatch):
    import elmanlab.ops._dispatch as d

    class FakeCuda(torch.Tensor):
        pass

    monkeypatch.setattr(d, "_FORCE_REFERENCE", False)
    t = torch.randn(2)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    assert d.fast_path_enabled(t)
    with force_reference():
        assert not d.fast_path_enabled(t)
    assert d.fast_path_enabled(t)


NO_CUDA = {"path": "reference", "fast": False, "reason": "no CUDA device",
           "fix": "run on a CUDA GPU (the fast kernels are CUDA-only)"}
FORCED = {"path": "reference", "fast": False, "reason": "ELMANLAB_REFERENCE is set",
          "fix": "unset ELMANLAB_REFERENCE (or set it to 0)"}


def test_every_op_folder_answers_backend_info(monkeypatch):
    """Each op folder answers what runs here, {'path', 'fast', 'reason'} and a 'fix' when not fast,
    its shape arguments keyword-only with defaults; without CUDA every one says the reference runs."""
    assert OPS == ["attention", "delta", "e88", "elman", "scan", "ssd"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in OPS:
        backend_info = importlib.import_module(f"elmanlab.ops.{name}").backend_info
        params = inspect.signature(backend_info).parameters.values()
        assert all(p.kind is p.KEYWORD_ONLY and p.default is not p.empty for p in params), name
        assert backend_info() == NO_CUDA, name


def test_backend_info_before_any_kernel_is_asked(monkeypatch):
    """With a CUDA device: the forced reference (ELMANLAB_REFERENCE) for every op, an unregistered
    fast path, and ELMANLAB_ELMAN_IMPL=cudnn are answered before any kernel is built or imported."""
    import elmanlab.ops._dispatch as d
    from elmanlab.ops import elman

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(d, "_FORCE_REFERENCE", False)
    with force_reference():
        for name in OPS:
            info = importlib.import_module(f"elmanlab.ops.{name}").backend_info()
            assert info == FORCED, name
    monkeypatch.setenv("ELMANLAB_ELMAN_IMPL", "cudnn")
    assert elman.backend_info(d_inner=1760) == {"path": "cuDNN tanh RNN", "fast": True,
                                                "reason": "ELMANLAB_ELMAN_IMPL=cudnn"}
    info = elman.backend_info(d_inner=1760, nonlinearity="linear")          # E42 cannot honour cudnn
    assert info["fast"] is False and "refused" in info["path"] and "unset ELMANLAB_ELMAN_IMPL" in info["fix"]
    monkeypatch.delitem(ELMAN_FAST, "linear")
    assert elman.backend_info(nonlinearity="linear") == {
        "path": "reference", "fast": False, "reason": "no fast Elman kernel registered for linear",
        "fix": "see `elmanlab doctor`"}
