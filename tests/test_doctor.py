"""``elmanlab doctor`` and its library part: the machine, and the path each family runs."""
import subprocess
import sys

import torch

from elmanlab.doctor import FAMILY_OPS, family_paths, missing_fast_paths
from elmanlab.layers import FAMILIES


def test_doctor_cpu_output():
    r = subprocess.run([sys.executable, "-m", "elmanlab", "doctor"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for word in ("torch", "triton", "fla", "mamba_ssm", "TileLang", "GPU"):
        assert word in r.stdout
    fams = ["e1", "e33", "e42", "e88", "mamba2", "gdn", "mingru", "minlstm", "transformer"]
    lines = {l.split()[0]: l for l in r.stdout.splitlines() if l.strip() and l.split()[0] in fams}
    assert set(lines) == set(fams)
    if not torch.cuda.is_available():
        assert all("reference" in l and "no CUDA" in l for l in lines.values())


def test_doctor_json():
    import json
    r = subprocess.run([sys.executable, "-m", "elmanlab", "doctor", "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["machine"]["torch"] == torch.__version__
    assert list(d["families"]) == list(FAMILIES) and all("path" in v for v in d["families"].values())


def test_family_ops_come_from_the_layers():
    assert FAMILY_OPS == {"e1": "elman", "e33": "elman", "e42": "elman", "e88": "e88", "mamba2": "ssd",
                          "gdn": "delta", "mingru": "scan", "minlstm": "scan", "transformer": "attention"}
    assert all(FAMILY_OPS[name] == cls.op for name, cls in FAMILIES.items())


def _stand_in_helpers(monkeypatch, fast=True):
    from elmanlab.ops import delta, ssd
    for mod, fn in ((delta, "short_conv_info"), (delta, "rms_norm_gated_info"), (ssd, "gated_rmsnorm_info")):
        info = ({"path": fn, "fast": True, "reason": "stand-in"} if fast else
                {"path": "reference", "fast": False, "reason": f"{fn}: lib missing", "fix": f"install {fn}"})
        monkeypatch.setattr(mod, fn, lambda info=info: dict(info))


def test_family_paths_ask_each_op_at_the_family_shapes(monkeypatch):
    """family_paths asks each family's op folder at the family's default shapes for the size (and
    the layer's fused helpers); a probe that raises is reported as the answer ('unknown')."""
    import importlib
    from elmanlab.sizing import model_config, report

    calls = []

    def stand_in(op):
        def backend_info(**shapes):
            calls.append((op, shapes))
            if op == "scan":
                raise RuntimeError("boom")
            return {"path": op, "fast": True, "reason": "stand-in"}
        return backend_info
    for op in ("elman", "e88", "ssd", "delta", "scan", "attention"):
        monkeypatch.setattr(importlib.import_module(f"elmanlab.ops.{op}"), "backend_info", stand_in(op))
    _stand_in_helpers(monkeypatch)
    paths = family_paths("400M")
    d = {fam: report(model_config(fam, params="400M")).d_inner for fam in ("e1", "e33", "e42")}
    assert calls == [("elman", {"d_inner": d["e1"], "nonlinearity": "tanh"}),
                     ("elman", {"d_inner": d["e33"], "nonlinearity": "tanh"}),
                     ("elman", {"d_inner": d["e42"], "nonlinearity": "linear"}),
                     ("e88", {"n_state": 32, "head_v_dim": 32}), ("ssd", {}), ("delta", {}), ("scan", {}),
                     ("scan", {}), ("attention", {"head_dim": 64})]
    assert list(paths) == list(FAMILY_OPS)
    helper = {"fast": True, "reason": "stand-in"}
    assert paths["gdn"] == {"op": "delta", "path": "delta", "fast": True, "reason": "stand-in",
                            "helpers": {"short_conv": {"path": "short_conv_info", **helper},
                                        "gated_rmsnorm": {"path": "rms_norm_gated_info", **helper}}}
    assert paths["e1"] == {"op": "elman", "path": "elman", "fast": True, "reason": "stand-in"}
    assert paths["transformer"] == {"op": "attention", "path": "attention", "fast": True, "reason": "stand-in"}
    assert paths["mingru"]["path"] == "unknown" and paths["mingru"]["fast"] is False
    assert paths["mingru"]["reason"] == "probe failed: RuntimeError: boom" and paths["mingru"]["fix"]
    assert missing_fast_paths(paths) == ["mingru", "minlstm"]
    # a helper without its fast path makes the family not fast, with the helper's reason and fix
    _stand_in_helpers(monkeypatch, fast=False)
    paths = family_paths("400M")
    assert paths["mamba2"]["path"] == "ssd" and paths["mamba2"]["fast"] is False
    assert paths["mamba2"]["reason"] == "short_conv: short_conv_info: lib missing"
    assert paths["mamba2"]["fix"] == "install short_conv_info"
    assert missing_fast_paths(paths) == ["mamba2", "gdn", "mingru", "minlstm"]
    if not torch.cuda.is_available():
        monkeypatch.undo()
        paths = family_paths()
        assert all(r["path"] == "reference" and r["fast"] is False and r["reason"] == "no CUDA device"
                   and r["op"] == FAMILY_OPS[f] and "CUDA" in r["fix"] for f, r in paths.items())
        assert missing_fast_paths(paths) == list(FAMILY_OPS)
