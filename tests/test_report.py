"""The report on run folders written to the run-record contract (elmanlab.runs; the summary.json
keys train writes), end to end: ``write_report`` (tables and plots) and ``elmanlab report``.

The run folders here are real files (config.json, metrics.jsonl, summary.json) with loss curves
of known shape, so every number in the report can be checked against a hand computation.
``make_run`` and ``_study`` build them for the other report tests too.
"""
from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import pytest

from elmanlab.report import write_report
from cli_inproc import run_main


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


def test_report_cli_errors(tmp_path):
    def run(*a):
        return run_main("report", *a)
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
