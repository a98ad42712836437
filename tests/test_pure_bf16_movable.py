"""benchmarks/pure_bf16_movable.py: which parameter elements a step of a given size cannot change in bf16."""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import pure_bf16_movable as pm  # noqa: E402


def test_half_spacing_predicts_what_a_bf16_add_leaves_unchanged():
    """Against torch's own bf16 arithmetic: x + s rounds back to x exactly where half the spacing exceeds s."""
    torch.manual_seed(0)
    x = torch.exp(torch.empty(200_000).uniform_(-14, 1))          # positive, 1e-6 .. 2.7
    xb = x.to(torch.bfloat16)
    half = pm.half_spacing(x)
    for s in (1e-5, 3e-5, 1e-4, 3e-4):
        unchanged = (xb + s) == xb                                  # bf16 add: fp32 sum rounded to bf16
        clear = (half - s).abs() > 1e-3 * s                         # leave out exact ties
        assert bool(((half > s) == unchanged)[clear].all())
        assert 0.05 < float(unchanged.float().mean()) < 0.95        # both kinds present: the test can fail


def test_stuck_shares_of_known_values():
    m = torch.nn.Module()
    m.gain = torch.nn.Parameter(torch.ones(100))                    # half spacing 2^-8: nothing moves it
    m.w = torch.nn.Parameter(torch.zeros(10, 30))                   # zeros: any step moves them
    r = pm.stuck_shares(m, (1e-5, 1e-2))
    assert r["params"] == 400 and r["vector_params"] == 100 and r["matrix_params"] == 300
    assert r["stuck_all"] == [0.25, 0.0]                            # 2^-8 = 0.0039 < 1e-2
    assert r["stuck_vectors"] == [1.0, 0.0] and r["stuck_matrices"] == [0.0, 0.0]


def test_main_counts_a_study_records_runs_and_refuses_unknown_ones(tmp_path, capsys):
    job = {"id": "tiny", "model": "mingru", "dim": 16, "depth": 2, "mlp_ratio": 0.0, "tie_embeddings": False,
           "options": {}, "norm": "rms"}
    study = tmp_path / "study.json"
    study.write_text(json.dumps({"jobs": [job]}))
    out = tmp_path / "m.json"
    assert pm.main(["--study", str(study), "--runs", "tiny", "--json", str(out), "--md", str(tmp_path / "m.md")]) == 0
    row = json.loads(out.read_text())["rows"][0]
    assert row["run"] == "tiny" and row["params"] > 0 and len(row["stuck_all"]) == 4
    assert row["stuck_all"] == sorted(row["stuck_all"], reverse=True)   # a larger step is stuck less often
    assert "| tiny |" in (tmp_path / "m.md").read_text()
    assert pm.main(["--study", str(study), "--runs", "tiny,nope"]) == 2
    assert "no run nope" in capsys.readouterr().err
    assert pm.main(["--study", str(tmp_path / "none.json")]) == 2
