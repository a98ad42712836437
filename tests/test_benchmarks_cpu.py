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


def test_first_update_takes_the_first_step_apart(tmp_path, capsys):
    """benchmarks/first_update.py: the held-out loss at init and after each update; after the first,
    the loss with no group updated is the loss at init and with every group updated the loss after
    it (the restore is exact), every group moved by about one learning rate (Adam's first step is
    sign-like); E42's out_proj input is far more coherent than E1's (h * silu(h) >= -0.28 in every
    channel), which is what makes its first out_proj update grow with the width."""
    fu = importlib.import_module("first_update")
    out = tmp_path / "fu.json"
    assert fu.main(["--model", "e42", "--dim", "64", "--depth", "2", "--steps", "2", "--blame", "--lr", "3e-3",
                    "--out", str(out)]) == 0
    d = json.loads(out.read_text())
    loss, blame = d["held_out_loss"], d["blame"]
    assert len(loss) == 3 and len(d["train_loss"]) == 2
    assert blame["none"] == pytest.approx(loss[0], abs=1e-3) and blame["all"] == loss[1]
    groups = {g["group"]: g for g in blame["groups"]}
    assert {"embed", "head", "in_proj", "out_proj", "norm", "W", "b"} <= set(groups)
    for g in groups.values():
        assert 0.5 * d["lr"] < g["max_change"] < 2 * d["lr"], g
    assert len(d["out_proj_input"]) == 2 and "out_proj" in capsys.readouterr().out
    e1 = tmp_path / "e1.json"
    assert fu.main(["--model", "e1", "--dim", "64", "--depth", "2", "--steps", "1", "--out", str(e1)]) == 0
    coh = [sum(r["coherence"] for r in json.loads(p.read_text())["out_proj_input"]) / 2 for p in (out, e1)]
    assert coh[0] > 0.4 and coh[0] > 2 * coh[1], coh
    # and so E42's first out_proj update adds nearly one vector at every position, E1's far less of one
    up = [json.loads(p.read_text())["out_proj_update"] for p in (out, e1)]
    assert len(up[0]) == 2 and min(r["position_coherence"] for r in up[0]) > 0.9
    assert max(r["position_coherence"] for r in up[1]) < min(r["position_coherence"] for r in up[0])
    # a measurement leaves the buffers as they were (E42's power-iteration vector moves in a training forward)
    import torch
    from elmanlab.config import ModelConfig
    from elmanlab.lm import LM
    lm = LM(ModelConfig(model="e42", dim=32, depth=1)).train()
    u = lm.blocks[0].layer.W.u
    with torch.no_grad():
        u.copy_(torch.randn_like(u))
        kept = u.clone()
        lm(torch.randint(0, 256, (2, 8)))
        assert not torch.equal(u, kept)
        u.copy_(kept)
        with fu.kept_buffers(lm):
            lm(torch.randint(0, 256, (2, 8)))
    assert torch.equal(u, kept)
    with pytest.raises(SystemExit):
        fu.main(["--options", "[1]"])
    assert "--options takes a JSON object" in capsys.readouterr().err


def _metric_run(root, rid, model, params, seed, losses, log_every=10):
    """A run folder whose metrics.jsonl has ``losses[i]`` at step (i + 1) * log_every."""
    d = root / rid
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"format": "elmanlab-run-v1", "model": {"model": model},
                                               "train": {"seed": seed, "log_every": log_every}}))
    with open(d / "metrics.jsonl", "w") as f:
        for i, v in enumerate(losses):
            f.write(json.dumps({"step": (i + 1) * log_every, "loss": v, "tokens": (i + 1) * 100}) + "\n")
        f.write(json.dumps({"step": len(losses) * log_every, "tokens": 1, "val_loss": 9.0}) + "\n")
    (d / "summary.json").write_text(json.dumps({"model": model, "params": params, "steps": len(losses) * log_every,
                                                "loss_last100": float(sum(losses[-10:]) / 10), "status": "completed"}))


def test_reference_metric_computes_the_reference_windows(tmp_path, capsys):
    """benchmarks/reference_metric.py: train.py's window is the mean of the last 100 ten-step lines, and
    benchmark_baselines.py's the mean of the lines at step 10 and every 50th (its last 100); a run of
    2,000 steps has 200 lines, of which the baselines window takes 41. The gap the reference's way sets
    the family's train.py window against the baseline's whole-run window."""
    rm = importlib.import_module("reference_metric")
    e1 = [float(i) for i in range(1, 201)]          # line i (step 10 i) has loss i
    m2 = [1000.0 + i for i in range(1, 201)]
    _metric_run(tmp_path, "e1-20M-s42", "e1", 20_100_000, 42, e1)
    _metric_run(tmp_path, "mamba2-20M-s42", "mamba2", 19_700_000, 42, m2)
    _metric_run(tmp_path, "mamba2-50M-s42", "mamba2", 50_000_000, 42, m2)   # another size: no pair
    out = tmp_path / "rm.json"
    assert rm.main([str(tmp_path), "--out", str(out)]) == 0
    d = json.loads(out.read_text())
    r = {x["run"]: x for x in d["runs"]}["e1-20M-s42"]
    assert r["window_trainpy"] == pytest.approx(sum(range(101, 201)) / 100) and r["trainpy_from_step"] == 1001
    sparse = [1] + list(range(5, 201, 5))          # lines at step 10 and at steps 50, 100, ... 2000
    assert r["baselines_n"] == 41 and r["window_baselines"] == pytest.approx(sum(sparse) / 41)
    assert r["lab"] == pytest.approx(195.5)
    (g,) = d["gaps"]
    assert g["run"] == "e1-20M-s42" and g["baseline_run"] == "mamba2-20M-s42"
    assert g["gap_lab"] == pytest.approx(195.5 - 1195.5)
    assert g["gap_reference_way"] == pytest.approx(150.5 - (1000 + sum(sparse) / 41))
    assert "reference way" in capsys.readouterr().out
    # the windows need train.py's cadence; a folder with no run is an error, not an empty table
    _metric_run(tmp_path / "other", "e1-x", "e1", 1000, 42, e1, log_every=5)
    assert rm.main([str(tmp_path / "other")]) == 2
    assert "log_every 10" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert rm.main([str(tmp_path / "empty")]) == 2
    assert "no completed run" in capsys.readouterr().err


def test_fit_coverage_simulates_both_ways_of_refitting(tmp_path, capsys):
    """benchmarks/fit_coverage.py: every design x noise x method is a row with a coverage per quantity;
    with three sizes, resampling runs alone gives the gap at 400M a far narrower interval than with the
    pooled seed noise added (the reason the report adds it)."""
    fc = importlib.import_module("fit_coverage")
    out = tmp_path / "fc.json"
    assert fc.main(["--trials", "3", "--noise", "0.01", "--refits", "40", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == len(fc.DESIGNS) * len(fc.METHODS)
    for r in rows:
        assert set(r["coverage"]) == {"alpha shallow", "alpha steep", "L(400M) shallow", "L(400M) steep",
                                      "gap at 400M", "crossing"}
        assert all(v is None or 0.0 <= v <= 1.0 for v in r["coverage"].values())
    three = {r["method"]: r for r in rows if r["design"].startswith("3 sizes")}
    assert three["runs+noise"]["gap_interval_width_median"] > 3 * three["runs"]["gap_interval_width_median"]
    assert "| design |" in capsys.readouterr().out
    assert fc.main(["--noise", "x"]) == 2 and "--noise takes numbers" in capsys.readouterr().err


def test_fit_backtest_predicts_each_familys_largest_size_from_the_others(tmp_path, capsys):
    """benchmarks/fit_backtest.py: e1 (four sizes, sized shapes) is fitted at 20M-100M and its 200M runs
    checked: on its own curve they hold; 0.3 worse, they miss. mamba2 at three sizes is not backtested."""
    import numpy as np
    from test_report_fit import SHALLOW, STEEP, law
    from test_report_predicted import big_run
    bt = importlib.import_module("fit_backtest")
    rng = np.random.default_rng(3)
    for worse in (0.0, 0.3):
        root = tmp_path / f"study{worse}"
        for t, n in {"20M": 20e6, "50M": 50e6, "100M": 100e6, "200M": 200e6}.items():
            for s in (42, 43):
                off = worse if t == "200M" else 0.0
                big_run(root, f"e1-{t}-s{s}", "e1", law(SHALLOW, n) + off + 0.004 * rng.standard_normal(), seed=s,
                        size=t)
                if t != "200M":
                    big_run(root, f"mamba2-{t}-s{s}", "mamba2", law(STEEP, n) + 0.004 * rng.standard_normal(),
                            seed=s, size=t)
        out = tmp_path / f"bt{worse}.json"
        assert bt.main([str(root), "--bootstrap", "60", "--out", str(out)]) == 0
        (fam,) = json.loads(out.read_text())["families"]
        assert fam["family"] == "e1" and fam["held_out"] == 200e6 and sorted(fam["runs"]) == ["e1-200M-s42", "e1-200M-s43"]
        assert fam["check"]["verdict"].startswith("held" if worse == 0 else "missed: higher")
        assert not any(p.name.startswith(("fit", "report")) for p in root.iterdir())   # the study is left as it was
    assert "e1: fitted at 20M, 50M, 100M; at 200M observed" in capsys.readouterr().out
    assert bt.main([str(tmp_path / "nope")]) == 2 and "not a folder" in capsys.readouterr().err


def test_heldout_gap_scores_both_weights_on_both_sets(tmp_path, capsys):
    """benchmarks/heldout_gap.py: four scores after training (validation file and unread training bytes,
    each with Schedule-Free's x and y), all near the untrained loss after three steps; x and y differ."""
    hg = importlib.import_module("heldout_gap")
    out = tmp_path / "hg.json"
    assert hg.main(["--model", "e1", "--params", "100k", "--steps", "3", "--eval-bytes", "3000", "--out", str(out)]) == 0
    d = json.loads(out.read_text())
    for k in ("x_val", "y_val", "x_train_unread", "y_train_unread"):
        assert 3.0 < d[k] < 7.0, (k, d[k])
    assert d["x_val"] != d["y_val"] and d["steps"] == 3
    # the training step's loss on the next batch and that batch scored in evaluation mode, same weights:
    # the two paths agree (float32 on the CPU), and the batch is a real one (near the untrained loss)
    assert 3.0 < d["next_batch_eval"] < 7.0 and d["next_batch_train"] == pytest.approx(d["next_batch_eval"], abs=1e-4)
    assert d["device"] == "cpu" and d["kernel"]["family"] == "e1"
    assert "train_unread" in capsys.readouterr().out
    assert hg.main(["--model", "e1", "--steps", "0"]) == 2 and "--steps" in capsys.readouterr().err


def test_same_stream_curves_verifies_the_streams_and_compares_at_equal_steps(tmp_path, capsys):
    """benchmarks/same_stream_curves.py: a run of 20 steps and one of 30 (seed 1) read the same first 20
    batches although their data_fingerprints differ; each stream is recomputed and checked. A run whose
    fingerprint is not its sampler's stream is set aside, never compared; another seed is its own group."""
    from elmanlab.data import BatchSampler, fingerprint_start, fingerprint_update
    ssc = importlib.import_module("same_stream_curves")

    def fp(steps, seed=1):
        s, f = BatchSampler(5000, 16, 2, seed), fingerprint_start(5000, 16)
        for k in range(steps):
            f = fingerprint_update(f, s.offsets(k))
        return f

    def run(study, rid, losses, seed=1, fingerprint=None):
        _metric_run(tmp_path / study, rid, "e1", 1000 * len(losses), seed, losses)
        p = tmp_path / study / rid / "summary.json"
        summ = json.loads(p.read_text())
        summ.update(seed=seed, batch_size=2, seq_len=16, train_bytes=5000,
                    data_fingerprint=fingerprint or fp(10 * len(losses), seed))
        p.write_text(json.dumps(summ))

    short = [5.0] * 20
    long_ = [4.0] * 10 + [3.0] * 10 + [2.0] * 10
    run("a", "e1-short", short)
    run("b", "e1-long", long_)
    run("b", "e1-forged", long_, fingerprint=fp(300, seed=2))
    run("b", "e1-seed2", long_, seed=2)
    assert fp(200) != fp(300)                                   # the two streams' fingerprints differ
    out = tmp_path / "ssc.json"
    assert ssc.main([str(tmp_path / "a"), str(tmp_path / "b"), "--steps", "100,200,300", "--out", str(out),
                     "--plot", str(tmp_path / "c.png")]) == 0
    d = json.loads(out.read_text())
    got = {r["run"]: r["loss_at"] for r in d["runs"]}
    assert got["e1-short"] == {"100": 5.0, "200": 5.0, "300": None}
    assert got["e1-long"] == {"100": 4.0, "200": 3.0, "300": 2.0}
    assert [a["run"] for a in d["set_aside"]] == ["e1-forged"] and "not the sampler's stream" in d["set_aside"][0]["why"]
    text = capsys.readouterr().out
    assert "seed 1, batch 2 x 16" in text and "seed 2, batch 2 x 16" in text and (tmp_path / "c.png").stat().st_size > 0
    assert ssc.main([str(tmp_path / "a"), "--steps", "50"]) == 2 and "at least 100" in capsys.readouterr().err
    assert ssc.main([str(tmp_path / "a"), "--models", "mamba2"]) == 2 and "no completed run" in capsys.readouterr().err


def test_first_update_measures_the_recurrence_norm(tmp_path, capsys):
    """first_update.py --w-h-norm N: each Elman layer's ||W_h||_2 at init (0.9: orthogonal x 0.9) and
    every N updates; free, it moves with the updates; with the reference's fixed spectral norm it is
    0.99 whatever the updates do; a family without W_h is refused in one line."""
    fu = importlib.import_module("first_update")
    free, fixed = tmp_path / "free.json", tmp_path / "fixed.json"
    args = ["--model", "e1", "--dim", "48", "--depth", "2", "--steps", "4", "--lr", "1e-2", "--w-h-norm", "2"]
    assert fu.main(args + ["--out", str(free)]) == 0
    assert fu.main(args + ["--options", '{"spectral_norm": true, "spectral_mode": "fixed"}', "--out", str(fixed)]) == 0
    n = json.loads(free.read_text())["w_h_norm"]
    assert [r["update"] for r in n] == [0, 2, 4] and n[0]["w_h_norm"] == [pytest.approx(0.9, abs=1e-3)] * 2
    assert all(abs(v - 0.9) > 0.01 for v in n[-1]["w_h_norm"])
    for r in json.loads(fixed.read_text())["w_h_norm"]:
        assert r["w_h_norm"] == [pytest.approx(0.99, abs=0.02)] * 2, r
    assert "||W_h||_2 by layer" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--w-h-norm measures the Elman family"):
        fu.main(["--model", "mingru", "--dim", "32", "--depth", "1", "--steps", "1", "--w-h-norm", "1"])


def test_spike_scan_gives_each_runs_largest_rise_and_its_spikes(tmp_path, capsys):
    """benchmarks/spike_scan.py: a run whose line at step 300 is 0.7 above the lines before it has that
    as its largest rise and as a spike; a flat run's largest rise is 0 and it has none."""
    ss = importlib.import_module("spike_scan")
    _metric_run(tmp_path / "s", "flat", "e1", 1000, 42, [2.0] * 60)
    _metric_run(tmp_path / "s", "spiky", "e1", 1000, 43, [2.0] * 29 + [2.7] + [2.0] * 30)
    out = tmp_path / "scan.json"
    assert ss.main([str(tmp_path / "s"), "--out", str(out)]) == 0
    rows = {r["run"]: r for r in json.loads(out.read_text())["runs"]}
    assert rows["spiky"]["largest_rise"] == pytest.approx(0.7) and rows["spiky"]["at_step"] == 300
    assert rows["spiky"]["spikes"] == [300] and rows["flat"]["spikes"] == [] and rows["flat"]["largest_rise"] == 0
    assert "without a spike: 1 runs, largest rise 0.000" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert ss.main([str(tmp_path / "empty")]) == 2 and "no completed run" in capsys.readouterr().err


def test_pure_bf16_cpu_refuses_too_few_steps_for_its_late_phase(capsys):
    pb = importlib.import_module("pure_bf16_cpu")
    with pytest.raises(SystemExit) as e:
        pb.main(["--skip-tensors", "--steps", "200"])
    assert e.value.code == 2 and "--steps must be at least 300" in capsys.readouterr().err
