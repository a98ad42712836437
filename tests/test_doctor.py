"""``elmanlab doctor`` and its library part: the machine, and the path each family runs."""
import subprocess
import sys

import torch

from elmanlab.doctor import FAMILY_OPS, family_paths


def test_doctor_cpu_output():
    r = subprocess.run([sys.executable, "-m", "elmanlab", "doctor"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for word in ("torch", "triton", "fla", "mamba_ssm", "TileLang", "GPU"):
        assert word in r.stdout
    fams = ["e1", "e33", "e42", "e88", "mamba2", "gdn", "mingru", "minlstm"]
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
    assert len(d["families"]) == 8 and all("path" in v for v in d["families"].values())


def test_family_paths_ask_each_op_at_the_family_shapes(monkeypatch):
    """family_paths asks each family's op folder at the family's default shapes for the size; a
    probe that raises is reported as the answer ('unknown')."""
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
    for op in ("elman", "e88", "ssd", "delta", "scan"):
        monkeypatch.setattr(importlib.import_module(f"elmanlab.ops.{op}"), "backend_info", stand_in(op))
    paths = family_paths("400M")
    d = {fam: report(model_config(fam, params="400M")).d_inner for fam in ("e1", "e33", "e42")}
    assert calls == [("elman", {"d_inner": d["e1"], "nonlinearity": "tanh"}),
                     ("elman", {"d_inner": d["e33"], "nonlinearity": "tanh"}),
                     ("elman", {"d_inner": d["e42"], "nonlinearity": "linear"}),
                     ("e88", {"n_state": 32, "head_v_dim": 32}), ("ssd", {}), ("delta", {}), ("scan", {}),
                     ("scan", {})]
    assert list(paths) == list(FAMILY_OPS)
    assert paths["gdn"] == {"op": "delta", "path": "delta", "fast": True, "reason": "stand-in"}
    assert paths["mingru"] == {"op": "scan", "path": "unknown", "fast": False,
                               "reason": "probe failed: RuntimeError: boom"}
    if not torch.cuda.is_available():
        monkeypatch.undo()
        assert all(r == {"op": FAMILY_OPS[f], "path": "reference", "fast": False, "reason": "no CUDA device"}
                   for f, r in family_paths().items())
