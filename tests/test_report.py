"""The report on run folders written to the run-record contract (DESIGN.md, summary.json keys).

The run folders here are real files (config.json, metrics.jsonl, summary.json) with loss curves
of known shape, so every number in the report can be checked against a hand computation.
"""
from __future__ import annotations

import csv
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from elmanlab.errors import ElmanlabError
from elmanlab.report import Report, loss_at, write_report


def make_run(root: Path, rid: str, model: str, params: int, dim: int, depth: int, *, seed=42,
             final=1.5, tok_s=10000.0, steps=300, log_every=10, batch=4, seq=64, options=None,
             status="completed", error=None, minutes=None, val_bpb=None, start=5.0):
    """A run folder as `elmanlab train` writes it: loss falls from ``start`` towards ``final``."""
    d = root / rid
    d.mkdir(parents=True)
    options = options or {}
    tokens_per_step = batch * seq
    rows = []
    for s in range(log_every, steps + 1, log_every):
        loss = final + (start - final) * math.exp(-s / (steps / 5))
        tokens = s * tokens_per_step
        rows.append({"step": s, "loss": loss, "tokens": tokens, "elapsed": tokens / tok_s,
                     "tokens_per_s": tok_s, "lr": 3e-4})
    with open(d / "metrics.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    model_cfg = {"model": model, "dim": dim, "depth": depth, "options": options, "mlp_ratio": 0.0,
                 "tie_embeddings": False}
    budget = {"minutes": minutes} if minutes else {"steps": steps}
    (d / "config.json").write_text(json.dumps({"model": model_cfg, "train": {
        "seed": seed, "batch_size": batch, "seq_len": seq, "lr": 3e-4, "weight_decay": 0.1, **budget}}))
    last = [r["loss"] for r in rows if r["step"] > steps - 100]
    summ = {"model": model, "params": params, "dim": dim, "depth": depth, "steps": steps,
            "tokens": steps * tokens_per_step, "loss_last100": statistics.fmean(last),
            "final_loss": rows[-1]["loss"], "tokens_per_s": tok_s, "mfu": None, "peak_memory_gb": 0.25,
            "wall_s": steps * tokens_per_step / tok_s, "data_fingerprint": f"fp-{seed}-{steps}",
            "world_size": 1, "device": "cpu", "versions": {"torch": "2.13"}, "config": model_cfg,
            "options": options, "seed": seed, "batch_size": batch, "seq_len": seq, "lr": 3e-4,
            "budget": budget, "status": status, "error": error}
    if val_bpb is not None:
        summ["val_bpb"] = val_bpb
    (d / "summary.json").write_text(json.dumps(summ))
    return summ


def _study(tmp_path):
    """Three models at two scales, two seeds for e1 at 200K, one failed run."""
    root = tmp_path / "study"
    root.mkdir()
    s = {}
    s["m2-200K"] = make_run(root, "mamba2-200K-s42", "mamba2", 200_204, 128, 1, final=1.60, tok_s=8000)
    s["m2-400K"] = make_run(root, "mamba2-400K-s42", "mamba2", 401_000, 96, 4, final=1.50, tok_s=6000)
    s["e1-200K"] = make_run(root, "e1-200K-s42", "e1", 200_728, 88, 4, final=1.55, tok_s=12000)
    s["e1-200K-43"] = make_run(root, "e1-200K-s43", "e1", 200_728, 88, 4, final=1.57, seed=43, tok_s=12000)
    s["e1-400K"] = make_run(root, "e1-400K-s42", "e1", 400_752, 176, 2, final=1.45, tok_s=9000)
    s["e88-200K"] = make_run(root, "e88-200K-s42", "e88", 198_032, 128, 2, final=1.62, tok_s=4000,
                             options={"n_heads": 4, "n_state": 32})
    s["e88-400K"] = make_run(root, "e88-400K-s42", "e88", 396_120, 192, 2, final=1.52, tok_s=3000,
                             options={"n_heads": 6, "n_state": 32})
    make_run(root, "e88-400K-bad", "e88", 396_120, 192, 2, status="stopped_nonfinite", final=1.9,
             error="loss was not finite for 10 steps in a row", options={"n_heads": 6, "n_state": 32})
    return root, s


def _csv(root):
    with open(root / "results.csv") as f:
        return list(csv.DictReader(f))


def test_report_ranks_gaps_scaling_and_plots(tmp_path):
    root, s = _study(tmp_path)
    res = write_report(root)
    md = res["markdown"]
    rows = _csv(root)
    ranked = [r for r in rows if r["rank"]]
    # ranked by last-100 loss, lowest first; the failed run is not ranked
    assert [float(r["loss_last100"]) for r in ranked] == sorted(float(r["loss_last100"]) for r in ranked)
    assert len(ranked) == 7 and ranked[0]["run"] == "e1-400K-s42"
    bad = next(r for r in rows if r["run"] == "e88-400K-bad")
    assert bad["rank"] == "" and bad["status"] == "stopped_nonfinite" and "not finite" in bad["error"]
    # gap to the baseline (mamba2 by default) at the same scale
    e1 = next(r for r in rows if r["run"] == "e1-400K-s42")
    want = s["e1-400K"]["loss_last100"] - s["m2-400K"]["loss_last100"]
    assert e1["baseline"] == "mamba2" and float(e1["gap_to_baseline"]) == pytest.approx(want, abs=1e-5)
    assert float(e1["gap_pct"]) == pytest.approx(100 * want / s["m2-400K"]["loss_last100"], abs=1e-3)
    # scale x model tables with the mean over seeds in the e1 200K cell
    assert "## Scaling: loss last-100" in md and "## Scaling: throughput" in md
    e1_200 = [s["e1-200K"]["loss_last100"], s["e1-200K-43"]["loss_last100"]]
    cell = f"{statistics.fmean(e1_200):.4f} ± {statistics.stdev(e1_200):.4f}"
    line = next(ln for ln in md.splitlines() if ln.startswith("| ~200K |") and "±" in ln)
    assert cell in line
    assert "## Best model per scale" in md
    best_line = next(ln for ln in md.split("## Best model per scale")[1].splitlines() if ln.startswith("| ~398K"))
    assert "| e1 | e1-400K-s42 |" in best_line
    # seeds: mean and spread of the e1 200K pair
    seeds = md.split("## Mean and spread over seeds")[1]
    assert "42, 43" in seeds and f"{statistics.stdev(e1_200):.4f}" in seeds
    # failed runs with their reason
    assert "## Failed and unfinished runs" in md and "loss was not finite" in md
    # plots: real PNGs of a readable size, linked from the report
    names = sorted(p.name for p in res["plots"])
    assert names == ["loss_vs_params.png", "loss_vs_time.png", "loss_vs_tokens.png", "tokens_per_s_vs_params.png"]
    import matplotlib.image as mpimg
    for p in res["plots"]:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        h, w = mpimg.imread(p).shape[:2]
        assert w >= 800 and h >= 500
        assert f"plots/{p.name}" in md


def test_iso_token_and_iso_time(tmp_path):
    root = tmp_path / "iso"
    root.mkdir()
    # same curve per step; A is twice as fast, B runs twice as many steps
    make_run(root, "fast", "e1", 200_000, 88, 4, final=1.5, tok_s=20000, steps=200)
    make_run(root, "slow", "mamba2", 200_000, 128, 1, final=1.5, tok_s=5000, steps=400)
    rep = Report(root)
    (tab,) = rep.iso_tables()
    assert tab["tokens"] == 200 * 4 * 64 and tab["shortest_tokens"] == "fast"
    t_fast, t_slow = 200 * 256 / 20000, 400 * 256 / 5000
    assert tab["time"] == pytest.approx(t_fast) and tab["shortest_time"] == "fast"
    rows = {r["run"]: r for r in tab["rows"]}
    mf = [json.loads(x) for x in (root / "fast" / "metrics.jsonl").read_text().splitlines()]
    ms = [json.loads(x) for x in (root / "slow" / "metrics.jsonl").read_text().splitlines()]
    # equal tokens: the slow run at 200 steps' tokens: mean loss of its steps 110..200
    want = statistics.fmean(m["loss"] for m in ms if 100 < m["step"] <= 200)
    assert rows["slow"]["loss_at_tokens"] == pytest.approx(want)
    assert rows["fast"]["loss_at_tokens"] == pytest.approx(statistics.fmean(m["loss"] for m in mf if m["step"] > 100))
    # equal time: in t_fast seconds the slow run did a quarter of the fast run's tokens -> 50 steps
    want_t = statistics.fmean(m["loss"] for m in ms if m["step"] <= 50)
    assert rows["slow"]["loss_at_time"] == pytest.approx(want_t)
    assert rows["slow"]["loss_at_time"] > rows["fast"]["loss_at_time"]
    md = rep.markdown([])
    assert "### Equal tokens" in md and "### Equal time" in md
    assert t_slow > t_fast


def test_loss_at_window():
    ms = [{"step": s, "loss": float(s), "tokens": 10 * s} for s in range(1, 301)]
    assert loss_at(ms, "tokens", 3000) == pytest.approx(statistics.fmean(range(201, 301)))
    assert loss_at(ms, "tokens", 505) == pytest.approx(statistics.fmean(range(1, 51)))
    assert loss_at(ms, "tokens", 5) is None


def test_best_loss_by_swept_option_and_baseline_choice(tmp_path):
    root = tmp_path / "sweep"
    root.mkdir()
    finals = {16: 1.60, 32: 1.50, 48: 1.52}
    for n, f in finals.items():
        make_run(root, f"e88-n{n}", "e88", 500_000, 128, 4, final=f, options={"n_state": n, "n_heads": 512 // n})
    for depth, f in ((2, 1.7), (4, 1.55), (8, 1.58)):
        make_run(root, f"e1-L{depth}", "e1", 500_000, 100, depth, final=f)
    rep = Report(root, baseline="e1-L4")       # a run name as the baseline
    md = rep.markdown([])
    sec = md.split("### Best loss by n_state")[1].split("###")[0]
    lines = [ln for ln in sec.splitlines() if ln.startswith("| e88")]
    assert [ln.split("|")[3].strip() for ln in lines] == ["16", "32", "48"]      # numeric order
    best = min(lines, key=lambda ln: float(ln.split("|")[4]))
    assert "e88-n32" in best
    assert "### Best loss by depth" in md and "### Best loss by n_heads" in md
    # every gap is against the e1-L4 run
    g = rep.gap(next(r for r in rep.runs if r.id == "e88-n32"))
    base = next(r for r in rep.runs if r.id == "e1-L4").loss
    assert g[0] == pytest.approx(next(r for r in rep.runs if r.id == "e88-n32").loss - base)
    # one scale: no scaling tables
    assert "## Scaling" not in md


def test_an_option_without_effect_is_not_a_swept_setting(tmp_path):
    """E88's gate_activation only acts with use_gate: runs without a gate are not grouped under
    its default (silu) as if they had a silu gate."""
    root = tmp_path / "gates"
    root.mkdir()
    base = {"n_state": 32, "n_heads": 4}
    make_run(root, "none-a", "e88", 500_000, 128, 4, final=1.60, options={**base, "use_gate": False,
                                                                         "gate_activation": "silu"})
    make_run(root, "none-b", "e88", 500_000, 128, 4, final=1.62, seed=43,
             options={**base, "use_gate": False, "gate_activation": "silu"})
    make_run(root, "silu", "e88", 500_000, 128, 4, final=1.50, options={**base, "use_gate": True,
                                                                       "gate_activation": "silu"})
    make_run(root, "sigmoid", "e88", 500_000, 128, 4, final=1.55,
             options={**base, "use_gate": True, "gate_activation": "sigmoid"})
    md = Report(root).markdown([])
    sec = md.split("### Best loss by gate_activation")[1].split("###")[0]
    rows = {ln.split("|")[3].strip(): ln for ln in sec.splitlines() if ln.startswith("| e88")}
    assert set(rows) == {"-", "silu", "sigmoid"}
    assert rows["silu"].split("|")[-2].strip() == "1" and rows["-"].split("|")[-2].strip() == "2"


def test_rank_by_held_out_bits_per_byte(tmp_path):
    """--metric val_bpb: ranking, gaps, best per scale and the seed table use val bpb, which may order
    runs differently from the training loss; a completed run without val_bpb is a clear error."""
    root = tmp_path / "val"
    root.mkdir()
    make_run(root, "m-a", "mamba2", 500_000, 64, 4, final=1.20, val_bpb=1.80)
    make_run(root, "m-b", "mamba2", 500_000, 64, 4, final=1.22, val_bpb=1.76, seed=43)
    make_run(root, "e-a", "e88", 500_000, 64, 4, final=1.25, val_bpb=1.70, options={"n_state": 16, "n_heads": 4})
    by_loss = Report(root).ranked()
    assert [r.id for r in by_loss] == ["m-a", "m-b", "e-a"]
    rep = Report(root, metric="val_bpb")
    assert [r.id for r in rep.ranked()] == ["e-a", "m-b", "m-a"]
    assert rep.gap(rep.ranked()[0])[0] == pytest.approx(1.70 - (1.80 + 1.76) / 2)
    md = rep.markdown([])
    ranked = md.split("## Ranked runs")[1].split("##")[0]
    assert "Ranked by val bpb" in ranked and "| rank | run | model | params | config | val bpb | loss last-100 |" in ranked
    assert "e88 | e-a | 1.7000" in md.split("## Best model per scale")[1]
    assert "mean val bpb" in md
    # the training-curve tables keep training loss (nats/byte), whatever the ranking metric
    tabs = rep.iso_tables()
    assert tabs
    for tab in tabs:
        assert all(x["final"] == pytest.approx(next(r for r in rep.runs if r.id == x["run"]).get("loss_last100"))
                   for x in tab["rows"])
    r = subprocess.run([sys.executable, "-m", "elmanlab", "report", str(root), "--metric", "val_bpb", "--quiet"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    make_run(root, "no-val", "e1", 500_000, 64, 4, final=1.3)
    with pytest.raises(ElmanlabError, match="no val_bpb .*no-val.*elmanlab eval"):
        Report(root, metric="val_bpb")
    r = subprocess.run([sys.executable, "-m", "elmanlab", "report", str(root), "--metric", "bpb"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_study_state_failures_without_summary(tmp_path):
    root = tmp_path / "st"
    root.mkdir()
    make_run(root, "e1-200K-s42", "e1", 200_728, 88, 4)
    state = {"name": "tiny", "baseline": "e1", "jobs": [
        {"id": "e1-200K-s42", "run_dir": "e1-200K-s42", "model": "e1", "params": "200K", "status": "completed",
         "options": {}, "train": {"steps": 300, "seed": 42}, "size": {"params": 200_728, "dim": 88, "depth": 4}},
        {"id": "e42-200K-s42", "run_dir": "e42-200K-s42", "model": "e42", "params": "200K", "status": "failed",
         "error": "CUDA out of memory. Tried to allocate 2.00 GiB", "options": {}, "train": {"steps": 300},
         "size": {"params": 198_864, "dim": 144, "depth": 2}},
        {"id": "e33-200K-s42", "run_dir": "e33-200K-s42", "model": "e33", "params": "200K", "status": "pending",
         "options": {}, "train": {"steps": 300}, "size": {"params": 197_248, "dim": 128, "depth": 2}}]}
    (root / "study.json").write_text(json.dumps(state))
    res = write_report(root)
    md = res["markdown"]
    assert md.startswith("# Study report: tiny")
    fail = md.split("## Failed and unfinished runs")[1]
    assert "e42-200K-s42" in fail and "CUDA out of memory" in fail and "| failed |" in fail
    assert "e33-200K-s42" in fail and "| pending |" in fail
    assert "1 completed, 1 failed, 1 not run" in md


def test_report_cli_errors(tmp_path):
    def run(*a):
        return subprocess.run([sys.executable, "-m", "elmanlab", "report", *a], capture_output=True, text=True)
    p = run(str(tmp_path / "nope"))
    assert p.returncode == 2 and p.stderr.startswith("error:") and len(p.stderr.strip().splitlines()) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    p = run(str(empty))
    assert p.returncode == 2 and "holds no runs" in p.stderr
    root, _ = _study(tmp_path)
    p = run(str(root), "--baseline", "gdn")
    assert p.returncode == 2 and "baseline 'gdn'" in p.stderr and not (root / "report.md").exists()
    p = run(str(root), "--baseline", "e88")
    assert p.returncode == 0, p.stderr
    assert "gap to e88" in p.stdout and (root / "report.md").exists()
