"""benchmarks/multigpu.py end to end on CPU: two gloo processes against one, same global batch."""
import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "multigpu.py"


def test_multigpu_script_on_cpu(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--models", "e1", "--params", "300K",
                        "--steps", "8", "--batch", "2", "--seq-len", "32", "--skip-study", "--out", str(tmp_path)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads((tmp_path / "multigpu.json").read_text())
    row = res["scaling"][0]
    assert row["world_size"] == 2 and row["same_stream"]
    # two processes with the same global batch follow the one-process curve (gloo, fp32)
    assert row["curve_gap_rel"] < 1e-3
    assert abs(row["loss_last100_multi"] - row["loss_last100_1gpu_same_batch"]) < 1e-3 * row["loss_last100_multi"]
    assert row["speedup"] > 0
    assert "e1" in (tmp_path / "multigpu.md").read_text()
