"""CPU checks of the benchmark scripts' own logic (the measurements themselves need a GPU)."""
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))


def test_throughput_refuses_to_overwrite_results(tmp_path):
    stem = tmp_path / "tp"
    (tmp_path / "tp.json").write_text("{}")
    r = subprocess.run([sys.executable, str(BENCH / "throughput.py"), "--out", str(stem)],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "exists" in r.stderr and "--resume" in r.stderr and "--overwrite" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert (tmp_path / "tp.json").read_text() == "{}"


def test_throughput_checks_its_modes(tmp_path):
    for args, words in ((["--mode", "graph,fast"], ["--mode takes eager, graph"]),
                        (["--mode", "graph", "--warmup", "1"], ["--warmup 2 or more"])):
        r = subprocess.run([sys.executable, str(BENCH / "throughput.py"), "--out", str(tmp_path / "tp"), *args],
                           capture_output=True, text=True)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert all(w in r.stderr for w in words), r.stderr


def test_throughput_config_spec():
    """--config family:DIMxDEPTH[:key=value,...]: parsed into the family's typed options; a bad spec is
    one error line before anything runs."""
    import throughput
    cfg = throughput.parse_config("e88:2944x20:n_state=48,n_heads=44,use_gate=false")
    assert (cfg.model, cfg.dim, cfg.depth) == ("e88", 2944, 20)
    assert (cfg.options.n_state, cfg.options.n_heads, cfg.options.use_gate) == (48, 44, False)
    assert throughput.parse_config("e1:1760x26").options == throughput.parse_config("e1:1760x26:").options
    for spec, words in (("e88:2944:n_state=48", "family:DIMxDEPTH"), ("e88:2944x20:n_state", "key=value"),
                        ("e88:2944x20:n_state=forty", "takes a int"), ("e88:2944x20:bogus=1", "key=value"),
                        ("e88:2944x20:n_state=47", "n_state 47 is not supported")):
        r = subprocess.run([sys.executable, str(BENCH / "throughput.py"), "--models", "none", "--config", spec],
                           capture_output=True, text=True)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert words in r.stderr, r.stderr


def test_profile_step_checks_its_flags():
    for args, words in ((["--cuda-graph", "--warmup", "1"], ["--warmup 2 or more"]),
                        (["--cuda-graph", "--compile"], ["cannot be combined"])):
        r = subprocess.run([sys.executable, str(BENCH / "profile_step.py"), "--model", "gdn", *args],
                           capture_output=True, text=True)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert all(w in r.stderr for w in words), r.stderr


def test_profile_summary_busy_time_and_kinds():
    import profile_step as ps
    assert ps.busy_time([(0, 10), (5, 15), (30, 35), (31, 32)]) == 20
    ev = [{"cat": "kernel", "name": "nvjet_sm90_tst_192x192", "ts": 0, "dur": 10},
          {"cat": "kernel", "name": "_chunk_scan_fwd_kernel", "ts": 5, "dur": 10},
          {"cat": "kernel", "name": "void at::native::vectorized_elementwise_kernel<4>", "ts": 30, "dur": 4},
          {"cat": "kernel", "name": "_chunk_scan_fwd_kernel", "ts": 40, "dur": 10},
          {"cat": "cpu_op", "name": "aten::mm", "ts": 0, "dur": 100}]
    s = ps.summarize(ev, steps=2, wall_s=0.2)
    assert abs(s["gpu_busy_ms_per_step"] - 0.0145) < 1e-12      # union (0,15) + (30,34) + (40,50) = 29 us / 2 steps
    assert s["kernel_launches_per_step"] == 2
    assert s["kernels"][0]["kernel"] == "_chunk_scan_fwd_kernel" and s["kernels"][0]["launches_per_step"] == 1
    kinds = s["by_kind_ms_per_step"]
    assert abs(kinds["matmul"] - 0.005) < 1e-12 and abs(kinds["elementwise/reduce"] - 0.002) < 1e-12
    assert abs(kinds["other (Triton / custom CUDA)"] - 0.01) < 1e-12
    assert "| `_chunk_scan_fwd_kernel` |" in ps.markdown("t", s)


def test_bench_harness_runs_the_training_step_on_cpu():
    """The benchmarks' trainer and timed steps (on CUDA in the benchmarks; the same code on CPU)."""
    from _harness import bench_trainer, run_steps
    from elmanlab.sizing import model_config
    mcfg = model_config("e1", dim=32, depth=2)
    with bench_trainer(mcfg, batch=2, seq_len=16, steps=4, device="cpu") as tr:
        assert tr.n_params > 0
        losses, times = run_steps(tr, 3)
        assert tr.step == 3 and len(losses) == len(times) == 3
        assert all(t > 0 for t in times) and all(5.0 < x < 6.0 for x in losses)   # ~ln 256 = 5.55 at start


def test_sharing_runs_k_copies_at_once_and_compares_with_one_alone(tmp_path, monkeypatch, capsys):
    """benchmarks/sharing.py on the CPU: one run alone, then two at once; each run's own record gives
    tokens/s, the sum over the alone rate is the gain, and the shared runs record gpu_jobs 2."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    sharing = importlib.import_module("sharing")
    out = tmp_path / "s.json"
    assert sharing.main(["--model", "e1", "--params", "200K", "--steps", "8", "--batch-size", "2", "--seq-len", "32",
                         "--jobs", "1,2", "--device", "cpu", "--out", str(out)]) == 0
    d = json.loads(out.read_text())
    one, two = d["rows"]
    assert (one["jobs"], two["jobs"]) == (1, 2) and len(two["tokens_per_s"]) == 2
    assert two["together"] == pytest.approx(sum(two["tokens_per_s"]))
    assert two["gain"] == pytest.approx(two["together"] / one["tokens_per_s"][0]) and one["gain"] == 1.0
    assert one["gpu_jobs"] == [1] and two["gpu_jobs"] == [2, 2] and d["device"] == "cpu"
    with pytest.raises(SystemExit):
        sharing.main(["--jobs", "2,4", "--out", str(out)])          # the run alone comes first
    assert "--jobs takes counts starting with 1" in capsys.readouterr().err
