"""`elmanlab report DIR --against TABLE.csv [--speed DIR]` (elmanlab.report.against) on fabricated run
folders: every expected number is computed here from the summaries make_run wrote, not by the module.

The lab: Mamba2 (d_state 64) and E1 96x4 with two seeds each, E1 128x2 (shared GPU) and E1 expansion
2.0 with one, E1 96x4 with init=reference (a non-default-option line), Mamba2 with the lab's default
d_state (in no row), a failed minLSTM run and a minGRU row with no run at all.
"""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from elmanlab.errors import ElmanlabError
from elmanlab.report import Report, write_report
from elmanlab.report.against import load_table, matches
from elmanlab.report.collect import Run
from test_report import make_run

REPO = Path(__file__).resolve().parents[1]
TABLE = """# a test table
label,model,dim,depth,expansion,d_state,params,loss,tok_s,memory_gb
M2,mamba2,128,2,,64,402K,1.50,20000,8.0
E1 96x4,e1,96,4,,,400000,1.59,15000,10.0
E1 128x2,e1,128,2,,,400000,1.60,18000,9.0
E1 exp2,e1,64,4,2.0,,400000,1.54,14000,10.0
minGRU,mingru,100,3,,,,1.78,,
minLSTM,minlstm,90,3,,,,1.75,,
"""
REF = {"M2": 1.50, "E1 96x4": 1.59, "E1 128x2": 1.60, "E1 exp2": 1.54}
KERNEL = "elmanlab persistent Elman CUDA kernel (tanh)"


def _patch(d: Path, **kv):
    p = d / "summary.json"
    s = json.loads(p.read_text())
    s.update(kv)
    p.write_text(json.dumps(s))
    return s


def _lab(tmp_path, second_seeds=True):
    root = tmp_path / "study"
    root.mkdir()
    s = {}
    s["m2a"] = make_run(root, "m2-s42", "mamba2", 402_000, 128, 2, final=1.40, options={"d_state": 64}, tok_s=20000)
    s["e1a"] = make_run(root, "e1-96-s42", "e1", 400_000, 96, 4, final=1.50, tok_s=15000)
    if second_seeds:
        s["m2b"] = make_run(root, "m2-s43", "mamba2", 402_000, 128, 2, final=1.42, seed=43, options={"d_state": 64},
                            tok_s=20000)
        s["e1b"] = make_run(root, "e1-96-s43", "e1", 400_000, 96, 4, final=1.53, seed=43, tok_s=15000)
    make_run(root, "m2-d128", "mamba2", 410_000, 128, 2, final=1.39)
    s["ref"] = make_run(root, "e1-96-ref", "e1", 400_000, 96, 4, final=1.45, options={"init": "reference"})
    s["wide"] = make_run(root, "e1-128", "e1", 400_000, 128, 2, final=1.46, tok_s=18000)
    s["exp2"] = make_run(root, "e1-exp2", "e1", 400_000, 64, 4, final=1.45, options={"expansion": 2.0},
                         tok_s=14000)
    make_run(root, "minlstm-s42", "minlstm", 383_000, 90, 3, final=1.9, status="failed", error="CUDA out of memory")
    _patch(root / "e1-128", gpu_jobs=2)
    for rid in ("m2-s42", "m2-s43"):
        if (root / rid).exists():
            _patch(root / rid, peak_memory_gb=10.0, gpu_jobs=1)
    for rid in ("e1-96-s42", "e1-96-s43"):
        if (root / rid).exists():
            _patch(root / rid, peak_memory_gb=12.0, kernel={"family": "e1", "path": KERNEL, "fast": True})
    table = tmp_path / "ref.csv"
    table.write_text(TABLE)
    return root, table, s


def _rows(path):
    with open(path) as f:
        return {r["line"]: r for r in csv.DictReader(f)}


def _loss(*summaries):
    vals = [x["loss_last100"] for x in summaries]
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)


def test_gaps_verdicts_ranks_and_rows_not_run(tmp_path):
    root, table, s = _lab(tmp_path)
    res = write_report(root, against=table)
    rows = _rows(root / "against.csv")
    m2, sd_m2 = _loss(s["m2a"], s["m2b"])
    e1, sd_e1 = _loss(s["e1a"], s["e1b"])
    spread = max(sd_m2, sd_e1)
    lab = {"M2": m2, "E1 96x4": e1, "E1 128x2": s["wide"]["loss_last100"], "E1 exp2": s["exp2"]["loss_last100"]}
    # matched numbers, gaps and their differences, by hand
    r = rows["E1 96x4"]
    assert r["n"] == "2" and r["seeds"] == "42 43" and r["status"] == "ran"
    assert float(r["loss"]) == pytest.approx(e1, abs=1e-5) and float(r["loss_sd"]) == pytest.approx(sd_e1, abs=1e-5)
    assert float(rows["M2"]["loss"]) == pytest.approx(m2, abs=1e-5) and rows["M2"]["verdict"] == "baseline"
    for label in ("E1 96x4", "E1 128x2", "E1 exp2"):
        gap, ref_gap = lab[label] - m2, REF[label] - REF["M2"]
        r = rows[label]
        assert float(r["gap"]) == pytest.approx(gap, abs=1e-5)
        assert float(r["ref_gap"]) == pytest.approx(ref_gap, abs=1e-9)
        assert float(r["gap_diff"]) == pytest.approx(gap - ref_gap, abs=1e-5)
        assert float(r["spread"]) == pytest.approx(spread, abs=1e-5)
        assert r["verdict"] == ("disagrees" if abs(gap - ref_gap) > spread else "agrees"), label
    # the fabricated lab has one of each: E1 96x4 inside the spread, E1 128x2 outside it
    assert abs(lab["E1 96x4"] - m2 - 0.09) < spread < abs(lab["E1 128x2"] - m2 - 0.10)
    assert rows["E1 96x4"]["verdict"] == "agrees" and rows["E1 128x2"]["verdict"] == "disagrees"
    md = res["markdown"]
    sec = md.split("## Against ref.csv")[1]
    d96 = lab["E1 96x4"] - m2 - 0.09
    assert f"gap E1 96x4 to M2: lab {lab['E1 96x4'] - m2:+.4f} (n=2, sd {sd_e1:.4f}) vs reference +0.09: agrees " \
           f"(difference {d96:+.4f} inside the seed spread {spread:.4f})" in sec
    d128 = lab["E1 128x2"] - m2 - 0.10
    assert f"gap E1 128x2 to M2: lab {lab['E1 128x2'] - m2:+.4f} (n=1) vs reference +0.10: disagrees by " \
           f"{d128:+.4f} (> seed spread {spread:.4f})" in sec
    assert not re.search(r"gap E1 96x4 to M2.*disagrees", sec)
    # the non-default-option configuration is its own line, gap to the default baseline, unranked
    r = rows["E1 96x4 + init=reference"]
    assert r["options"] == "init=reference" and r["n"] == "1" and r["rank"] == "" and r["row"] == "E1 96x4"
    assert float(r["gap"]) == pytest.approx(s["ref"]["loss_last100"] - m2, abs=1e-5)
    # ranks over the default-option lines run, in the lab and in the table
    order = sorted(lab, key=lab.get)
    ref_rank = {k: 1 + sum(REF[o] < REF[k] for o in lab) for k in lab}
    for k in lab:
        assert (int(rows[k]["rank"]), int(rows[k]["ref_rank"])) == (order.index(k) + 1, ref_rank[k])
    assert order.index("E1 128x2") < order.index("E1 96x4") and ref_rank["E1 128x2"] > ref_rank["E1 96x4"]
    assert "Order by loss over the 4 rows run: differs from the reference's" in sec
    # rows without a completed run
    assert rows["minGRU"]["status"] == "not run" and rows["minGRU"]["n"] == "0" and rows["minGRU"]["loss"] == ""
    assert rows["minLSTM"]["status"].startswith("failed: CUDA out of memory")
    assert rows["minLSTM"]["verdict"] == "failed"
    assert "Not run yet: minGRU." in sec and "Failed: minLSTM." in sec
    assert re.search(r"\| minGRU \| minGRU \| not run \| 0 \|", sec)
    # the lab's default d_state matches no row (the row says 64)
    assert "Lab configurations in no row of the table: mamba2 128x2." in sec
    # speed from the loss runs: the shared-GPU run gets no tokens/s ratio
    assert rows["E1 128x2"]["speed_from"] == "loss runs, shared GPU" and rows["E1 128x2"]["tok_s_ratio"] == ""
    assert rows["E1 96x4"]["speed_from"] == "loss runs"
    assert float(rows["E1 96x4"]["tok_s_ratio"]) == pytest.approx(15000 / 20000)
    assert float(rows["E1 96x4"]["ref_tok_s_ratio"]) == pytest.approx(15000 / 20000)
    assert float(rows["E1 96x4"]["memory_ratio"]) == pytest.approx(12.0 / 10.0)
    assert float(rows["E1 128x2"]["ref_memory_ratio"]) == pytest.approx(9.0 / 8.0)
    assert rows["E1 96x4"]["kernel_path"] == KERNEL and rows["E1 96x4"]["kernel_fast"] == "True"
    assert "shared their GPU" in sec


def test_one_seed_everywhere_is_spread_unmeasured(tmp_path):
    root, table, s = _lab(tmp_path, second_seeds=False)
    md = write_report(root, against=table)["markdown"]
    rows = _rows(root / "against.csv")
    assert rows["E1 128x2"]["verdict"] == "spread unmeasured" and rows["E1 128x2"]["spread"] == ""
    sec = md.split("## Against ref.csv")[1].split("## Failed")[0]
    assert "spread unmeasured" in sec and "disagrees" not in sec and "agrees" not in sec


def test_speed_study_runs_give_the_speed(tmp_path):
    root, table, s = _lab(tmp_path)
    speed = tmp_path / "speed"
    speed.mkdir()
    make_run(speed, "m2", "mamba2", 402_000, 128, 2, options={"d_state": 64}, tok_s=30000, steps=100)
    make_run(speed, "e1", "e1", 400_000, 96, 4, tok_s=21000, steps=100)
    _patch(speed / "m2", peak_memory_gb=9.0)
    _patch(speed / "e1", peak_memory_gb=11.7)
    write_report(root, against=table, speed=speed)
    rows = _rows(root / "against.csv")
    assert rows["E1 96x4"]["speed_from"] == "speed study"
    assert float(rows["E1 96x4"]["tok_s"]) == pytest.approx(21000)
    assert float(rows["E1 96x4"]["tok_s_ratio"]) == pytest.approx(21000 / 30000)
    assert float(rows["E1 96x4"]["memory_ratio"]) == pytest.approx(11.7 / 9.0)
    # the init=reference line has no speed run of its own: its loss runs, ratio to the speed baseline
    assert rows["E1 96x4 + init=reference"]["speed_from"] == "loss runs"
    assert rows["E1 128x2"]["speed_from"] == "loss runs, shared GPU" and rows["E1 128x2"]["tok_s_ratio"] == ""


@pytest.mark.parametrize("text, words", [
    ("model,dim,depth,params\ne1,96,4,1M\n", "no column loss"),
    ("model,dim,depth,loss\ne1,96,four,1.5\n", "depth 'four' is not a number"),
    ("model,dim,depth,loss\ne1,96,4,1.5,9\n", "data row 1 has 5 cells"),
    ("model,dim,depth,loss\nlstm9,96,4,1.5\n", "unknown model 'lstm9'"),
    ("model,dim,depth,loss\n", "no rows"),
])
def test_malformed_table_is_refused_in_one_line(tmp_path, text, words):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(ElmanlabError) as e:
        load_table(p)
    msg = str(e.value)
    assert words in msg and "\n" not in msg and ("seeds-400m.csv" in msg or "choose one of" in msg)


def _cli(*a):
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "elmanlab", "report", *map(str, a)], capture_output=True, text=True,
                          env=env)


def _main(capsys, *a):
    """`elmanlab report ...` in this process (the CLI's main, its exit code, stdout, stderr)."""
    from elmanlab.cli import main
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["report", *map(str, a)])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_cli_end_to_end_and_bad_paths(tmp_path, capsys):
    root, table, s = _lab(tmp_path)
    bad = tmp_path / "bad.csv"
    bad.write_text("model,dim\ne1,96\n")
    for args, words in (((root, "--against", tmp_path / "nope.csv"), "no such file"),
                        ((root, "--against", bad), "no column depth, loss"),
                        ((root, "--against", table, "--speed", tmp_path / "nope"), "not a folder"),
                        ((root, "--speed", tmp_path), "--speed goes with --against")):
        rc, out, err = _main(capsys, *args)
        assert rc == 2 and err.startswith("error:") and words in err, err
        assert len(err.strip().splitlines()) == 1 and not (root / "report.md").exists()
    p = _cli(root, "--against", table)                      # once as a user runs it
    assert p.returncode == 0, p.stderr
    assert "Against ref.csv:" in p.stdout and "gap E1 96x4 to M2" in p.stdout and "against.csv" in p.stdout
    md = (root / "report.md").read_text()
    assert "## Against ref.csv" in md and md.index("## Against ref.csv") < md.index("## Failed and unfinished runs")
    assert set(_rows(root / "against.csv")) >= {"M2", "E1 96x4", "E1 96x4 + init=reference", "minGRU"}
    rc, out, err = _main(capsys, root, "--against", table, "--quiet")
    assert rc == 0 and "Against" not in out
    rc, out, err = _main(capsys, "--help")
    assert rc == 0 and "--against" in out and "--speed" in out


def test_report_without_against_is_unchanged(tmp_path):
    root, table, s = _lab(tmp_path)
    rep = Report(root)
    assert rep.against is None and "## Against" not in rep.write()["markdown"]
    assert not (root / "against.csv").exists()


def test_seeds_table_mirrors_the_md_and_the_study():
    rows = load_table(REPO / "docs/reference/seeds-400m.csv")
    md = (REPO / "docs/reference/seeds-400m.md").read_text()
    table = [ln for ln in md.splitlines() if ln.startswith("| ") and not ln.startswith("| model")]
    assert len(rows) == len(table) == 11
    for row, line in zip(rows, table):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert f"dim {row.dim}, depth {row.depth}" in cells[1]
        assert cells[2] == f"{row.params / 1e6:.0f}M" and float(cells[3]) == row.loss
        assert cells[4] == f"{row.tok_s / 1e3:.1f}K" and cells[5] == f"{row.memory_gb:.1f} GB"
        exp = re.search(r"expansion ([0-9.]+)", cells[0])
        assert row.expansion == (float(exp.group(1)) if exp else 1.0)
        assert row.model == cells[0].split()[0].lower()
    assert rows[0].model == "mamba2" and rows[0].d_state == 64
    # every run of the study's `table` wave is one row, except Mamba2 with the lab's d_state 128
    study = yaml.safe_load((REPO / "studies/reference-400m.yaml").read_text())
    wave = next(w for w in study["waves"] if w["name"] == "table")
    unmatched = []
    for j in wave["runs"]:
        opts = {k: v for k, v in j.items() if k not in ("model", "dim", "depth", "seed", "name")}
        run = Run(id="x", path=Path("."), status="completed", model=j["model"], dim=j["dim"], depth=j["depth"],
                  options=opts)
        hits = [r.label for r in rows if matches(r, run)]
        assert len(hits) <= 1
        if not hits:
            unmatched.append(j)
    assert unmatched == [{"model": "mamba2", "dim": 1728, "depth": 22}]


def test_option_lines_of_a_wave_measure_against_that_waves_baseline(tmp_path):
    """Wave `reference` (the reference's own layers) is compared with its own Mamba2; a pending job's row
    reads "not run"."""
    root, table, s = _lab(tmp_path, second_seeds=False)
    s["m2ref"] = make_run(root, "ref-m2", "mamba2", 402_000, 128, 2, final=1.30,
                          options={"d_state": 64, "init": "reference"})
    s["e1ref"] = make_run(root, "ref-e1", "e1", 400_000, 96, 4, final=1.41,
                          options={"init": "reference", "spectral_norm": True})
    job = {"model": "e1", "params": "400K", "status": "completed", "train": {"steps": 300}}
    state = {"name": "ref", "baseline": "mamba2", "jobs": [
        {**job, "id": rid, "run_dir": rid, "wave": wave, "options": opts}
        for rid, wave, opts in (("m2-s42", "table", {"d_state": 64}), ("e1-96-s42", "table", {}),
                                ("ref-m2", "reference", {"d_state": 64, "init": "reference"}),
                                ("ref-e1", "reference", {"init": "reference", "spectral_norm": True}),
                                ("e1-96-ref", "ablation", {"init": "reference"}))]
        + [{"id": "mingru-x", "run_dir": "mingru-x", "model": "mingru", "status": "pending", "options": {},
            "train": {"steps": 300}, "size": {"params": 364_000, "dim": 100, "depth": 3}}]}
    (root / "study.json").write_text(json.dumps(state))
    write_report(root, against=table)
    rows = _rows(root / "against.csv")
    ref = {r["runs"]: r for r in rows.values() if r["runs"]}
    assert ref["ref-m2"]["verdict"] == "baseline" and ref["ref-m2"]["gap_to"] == "M2 + init=reference"
    assert float(ref["ref-e1"]["gap"]) == pytest.approx(s["e1ref"]["loss_last100"] - s["m2ref"]["loss_last100"],
                                                        abs=1e-5)
    # the ablation's option line has no Mamba2 of its wave: the default-option baseline
    assert ref["e1-96-ref"]["gap_to"] == "M2"
    assert float(ref["e1-96-ref"]["gap"]) == pytest.approx(s["ref"]["loss_last100"] - s["m2a"]["loss_last100"],
                                                           abs=1e-5)
    assert rows["minGRU"]["status"] == "not run"


def test_reference_train_choices_are_lines_of_their_own(tmp_path):
    """A run with precision: bf16 (or weight_decay_on: all) is its row's configuration with that choice:
    its own line, measured against the default baseline, unranked, never pooled with the default seeds
    and never the baseline."""
    root, table, s = _lab(tmp_path)
    for rid, model, opts, final, setting in (("m2-bf16", "mamba2", {"d_state": 64}, 1.60, ("precision", "bf16")),
                                             ("e1-bf16", "e1", {}, 1.70, ("precision", "bf16")),
                                             ("e1-decay", "e1", {}, 1.52, ("weight_decay_on", "all"))):
        dims = (128, 2) if model == "mamba2" else (96, 4)
        s[rid] = make_run(root, rid, model, 400_000, *dims, final=final, options=opts)
        cfg = json.loads((root / rid / "config.json").read_text())
        cfg["train"][setting[0]] = setting[1]
        (root / rid / "config.json").write_text(json.dumps(cfg))
    write_report(root, against=table)
    rows = _rows(root / "against.csv")
    m2, _ = _loss(s["m2a"], s["m2b"])
    e1, _ = _loss(s["e1a"], s["e1b"])
    assert rows["M2"]["verdict"] == "baseline" and float(rows["M2"]["loss"]) == pytest.approx(m2, abs=1e-5)
    assert rows["E1 96x4"]["n"] == "2" and float(rows["E1 96x4"]["loss"]) == pytest.approx(e1, abs=1e-5)
    for label, rid in (("M2 + precision=bf16", "m2-bf16"), ("E1 96x4 + precision=bf16", "e1-bf16"),
                       ("E1 96x4 + weight_decay_on=all", "e1-decay")):
        r = rows[label]
        assert r["n"] == "1" and r["rank"] == "" and r["gap_to"] == "M2", label
        assert float(r["gap"]) == pytest.approx(s[rid]["loss_last100"] - m2, abs=1e-5)


def _throughput_json(path: Path, rows, gpu="NVIDIA H100 80GB HBM3"):
    """A benchmarks/throughput.py JSON with these rows (model, dim, depth, options, batch, mode, tok/s, GB)."""
    out = []
    for model, dim, depth, options, batch, mode, tok, gb in rows:
        out.append({"model": model, "target": f"{dim}x{depth}", "batch": batch, "mode": mode, "seq_len": 64,
                    "dim": dim, "depth": depth, "options": options, "params": 400_000, "tokens_per_s": tok,
                    "peak_memory_gb": gb, "ran": f"{model} kernel", "status": "ok",
                    "implementations": {"op": {"path": f"{model} kernel", "fast": True}}})
    path.write_text(json.dumps({"machine": {"gpu": {"name": gpu}}, "seq_len": 64, "rows": out}))
    return path


def test_throughput_json_gives_the_speed_of_its_rows_of_the_runs_batch(tmp_path):
    root, table, s = _lab(tmp_path)
    tp = _throughput_json(tmp_path / "tp.json", [
        ("mamba2", 128, 2, {"d_state": 64}, 4, "graph", 32000.0, 9.0),
        ("e1", 96, 4, {}, 4, "graph", 24000.0, 10.8),
        ("e1", 96, 4, {}, 64, "graph", 99000.0, 40.0),        # another batch: not the runs' step
        ("e1", 64, 4, {"expansion": 2.0}, 4, "graph", 16000.0, 11.0)])
    write_report(root, against=table, speed=[tp])
    rows = _rows(root / "against.csv")
    assert rows["E1 96x4"]["speed_from"] == "tp.json (NVIDIA H100 80GB HBM3)"
    assert float(rows["E1 96x4"]["tok_s"]) == pytest.approx(24000)
    assert float(rows["E1 96x4"]["tok_s_ratio"]) == pytest.approx(24000 / 32000)
    assert float(rows["E1 96x4"]["memory_ratio"]) == pytest.approx(10.8 / 9.0)
    assert float(rows["E1 exp2"]["tok_s_ratio"]) == pytest.approx(16000 / 32000)
    # the row of another batch was left out, not averaged in
    assert float(rows["E1 96x4"]["memory_gb"]) == pytest.approx(10.8)


def test_speed_ratios_need_only_the_baseline_rows_timing(tmp_path):
    """With the baseline row not trained yet (no gaps), a throughput row of it still gives the ratios."""
    root, table, s = _lab(tmp_path)
    for rid in ("m2-s42", "m2-s43"):
        shutil.rmtree(root / rid)
    tp = _throughput_json(tmp_path / "tp.json", [("mamba2", 128, 2, {"d_state": 64}, 4, "graph", 30000.0, 9.0),
                                                 ("e1", 96, 4, {}, 4, "graph", 21000.0, 11.7)])
    write_report(root, against=table, speed=[tp])
    rows = _rows(root / "against.csv")
    assert rows["E1 96x4"]["gap"] == "" and rows["E1 96x4"]["verdict"] == "no lab baseline"
    assert float(rows["E1 96x4"]["tok_s_ratio"]) == pytest.approx(21000 / 30000)
    assert rows["M2"]["status"] == "not run" and float(rows["M2"]["tok_s"]) == pytest.approx(30000)


@pytest.mark.parametrize("files, words", [
    ([("a.json", "H100"), ("b.json", "H200")], "ran on different GPUs"),
    ([("a.json", None)], "not a throughput benchmark's JSON"),
    ([("both.json", "H100")], "in both step modes"),
    ([("b64.json", "H100")], "no row of the loss runs' batch"),
])
def test_bad_throughput_files_are_refused_in_one_line(tmp_path, capsys, files, words):
    root, table, s = _lab(tmp_path)
    args = []
    for name, gpu in files:
        p = tmp_path / name
        if gpu is None:
            p.write_text(json.dumps({"results": []}))
        elif name == "both.json":
            _throughput_json(p, [("e1", 96, 4, {}, 4, "graph", 24000.0, 10.8),
                                 ("e1", 96, 4, {}, 4, "eager", 20000.0, 10.8)], gpu)
        elif name == "b64.json":
            _throughput_json(p, [("e1", 96, 4, {}, 64, "graph", 24000.0, 10.8)], gpu)
        else:
            _throughput_json(p, [("e1", 96, 4, {}, 4, "graph", 24000.0, 10.8)], gpu)
        args += ["--speed", p]
    rc, out, err = _main(capsys, root, "--against", table, *args)
    assert rc == 2 and err.startswith("error:") and words in err, err
    assert len(err.strip().splitlines()) == 1 and not (root / "report.md").exists()


def test_lines_of_one_row_not_run_yet_are_told_apart_by_their_settings(tmp_path):
    """Pending runs of one configuration with other train settings (a study's wave) are their own lines,
    labelled by what they set away from the defaults; the default line keeps its plain label."""
    root, table, s = _lab(tmp_path)
    train = {"seed": 42, "batch_size": 4, "seq_len": 64, "lr": 3e-4, "weight_decay": 0.1, "steps": 300}
    job = {"model": "e1", "dim": 96, "depth": 4, "mlp_ratio": 0.0, "tie_embeddings": False, "options": {},
           "status": "pending", "error": None, "norm": "rms", "size": {"params": 400_000, "dim": 96, "depth": 4}}
    state = {"name": "t", "baseline": "mamba2", "jobs": [
        {**job, "id": "e1-96-lr", "run_dir": "e1-96-lr", "train": {**train, "lr": 1.5e-4}},
        {**job, "id": "e1-96-clip", "run_dir": "e1-96-clip", "train": {**train, "grad_clip": 1.0}}]}
    (root / "study.json").write_text(json.dumps(state))
    write_report(root, against=table)
    lines = set(_rows(root / "against.csv"))
    assert {"E1 96x4", "E1 96x4 (lr=0.00015)", "E1 96x4 (grad_clip=1)"} <= lines
