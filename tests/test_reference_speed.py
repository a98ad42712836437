"""benchmarks/reference_speed.py: the split of E1's step recovers known constants from synthetic tables."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import reference_speed as rs  # noqa: E402

TOK = 16 * 512


def _tok_s(ms):
    return TOK / (ms / 1e3)


def _write(tmp_path, gpu2=None, launch_us=2.0, rate=1e12, slow=3.0):
    depth, kernel_ms, rest_ms = 10, 5.0, 40.0
    csv = ["label,model,dim,depth,expansion,d_state,params,loss,tok_s,memory_gb",
           f"Mamba2 1000x10,mamba2,1000,10,,64,1,1.5,{_tok_s(100 * slow)},1"]
    lab = [{"model": "mamba2", "dim": 1000, "depth": 10, "batch": 16, "seq_len": 512, "options": {"d_state": 64},
            "tokens_per_s": _tok_s(100)}]
    kern = []
    for d in (1000, 2000, 3000):
        us = 6 * launch_us + 2 * d * d * 2 / rate * 1e6
        ref_ms = slow * rest_ms + depth * 512 * us / 1e3
        csv.append(f"E1 {d}x{depth},e1,{d},{depth},,,1,1.6,{_tok_s(ref_ms)},1")
        lab.append({"model": "e1", "dim": d, "depth": depth, "batch": 16, "seq_len": 512,
                    "options": {"expansion": 1.0}, "tokens_per_s": _tok_s(depth * kernel_ms + rest_ms)})
        kern.append({"recurrence": "tanh", "impl": "ours", "shape": f"B16 T512 D{d}", "fwdbwd_ms": kernel_ms})
    kern.append({"recurrence": "tanh", "impl": "cudnn-nn", "shape": "B16 T512 D1000", "fwdbwd_ms": 99.0})
    (tmp_path / "ref.csv").write_text("# comment\n" + "\n".join(csv) + "\n")
    (tmp_path / "a.json").write_text(json.dumps({"machine": {"gpu": {"name": "G1"}}, "rows": lab[:2]}))
    (tmp_path / "b.json").write_text(json.dumps({"machine": {"gpu": {"name": gpu2 or "G1"}}, "rows": lab[2:]}))
    (tmp_path / "k.json").write_text(json.dumps({"gpu": "G1", "rows": kern}))
    return [str(tmp_path / n) for n in ("ref.csv", "a.json", "b.json", "k.json")]


def test_split_recovers_launch_cost_and_read_rate(tmp_path):
    ref, a, b, k = _write(tmp_path, launch_us=2.5, rate=1.3e12, slow=3.4)
    out = tmp_path / "out" / "split"
    assert rs.main(["--against", ref, "--speed", a, "--speed", b, "--kernels", k, "--out", str(out)]) == 0
    res = json.loads(out.with_suffix(".json").read_text())
    assert res["baseline_slowdown"] == pytest.approx(3.4, abs=1e-3)
    fit = res["time_step_fit"]
    assert fit["us_per_launch"] == pytest.approx(2.5, abs=0.01)
    assert fit["read_tb_s"] == pytest.approx(1.3, abs=0.01)
    assert fit["max_abs_residual_us"] < 0.05
    e1 = [r for r in res["rows"] if r["label"].startswith("E1")]
    assert [r["lab_recurrence_ms"] for r in e1] == [50.0, 50.0, 50.0]
    assert e1[0]["lab_recurrence_share"] == pytest.approx(50 / 90, abs=1e-3)
    assert "W_h" in out.with_suffix(".md").read_text()


def test_rows_without_a_timed_kernel_are_left_out_of_the_fit(tmp_path):
    ref, a, b, k = _write(tmp_path)
    kd = json.loads(Path(k).read_text())
    kd["rows"] = [r for r in kd["rows"] if r["shape"] != "B16 T512 D3000"]
    Path(k).write_text(json.dumps(kd))
    res = rs.split(rs.read_reference(Path(ref)), rs.read_speed([Path(a), Path(b)])[0],
                   rs.read_kernels(Path(k))[0])
    assert res["time_step_fit"] is None                       # two rows: no fit
    assert "implied_reference_recurrence_ms" not in res["rows"][-1]


def test_refuses_mixed_gpus_and_missing_files(tmp_path, capsys):
    ref, a, b, k = _write(tmp_path, gpu2="G2")
    assert rs.main(["--against", ref, "--speed", a, "--speed", b, "--kernels", k]) == 2
    assert "several GPUs" in capsys.readouterr().err
    assert rs.main(["--against", ref, "--speed", a, "--kernels", str(tmp_path / "nope.json")]) == 2
    assert "not found" in capsys.readouterr().err


def test_refuses_a_kernels_file_that_is_not_one(tmp_path, capsys):
    ref, a, b, _ = _write(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert rs.main(["--against", ref, "--speed", a, "--speed", b, "--kernels", str(bad)]) == 2
    assert "not a benchmarks/kernels.py JSON" in capsys.readouterr().err


def test_only_rows_of_the_reference_batch_are_read(tmp_path):
    p = tmp_path / "t.json"
    p.write_text(json.dumps({"machine": {"gpu": {"name": "G"}}, "rows": [
        {"model": "e1", "dim": 1760, "depth": 26, "batch": 64, "seq_len": 512, "tokens_per_s": 1.0},
        {"model": "e1", "dim": 1760, "depth": 26, "batch": 16, "seq_len": 512, "tokens_per_s": 2.0}]}))
    runs, gpus = rs.read_speed([p])
    assert [r.get("tokens_per_s") for r in runs] == [2.0] and gpus == {"G"}
