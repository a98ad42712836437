"""The report's tables (elmanlab.report.tables): equal-token / equal-time views, best by swept
setting, the baseline, ranking by held-out bits per byte; and that they need no matplotlib."""
from __future__ import annotations

import json
import statistics
import subprocess
import sys

import pytest

from elmanlab.errors import ElmanlabError
from elmanlab.report import Report, loss_at
from test_report import _study, make_run


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


NO_MATPLOTLIB = """
import sys
sys.modules["matplotlib"] = None          # any import of matplotlib now raises ImportError
import elmanlab.report.tables
from elmanlab.report import Report
rep = Report(sys.argv[1])
md = rep.markdown([])
text = rep.csv_text()
assert md.startswith("# Study report") and "## Ranked runs" in md and text.startswith("rank,run,")
print(len(rep.done))
"""


def test_tables_need_no_matplotlib(tmp_path):
    """Importing the report and building report.md and results.csv works where matplotlib cannot be
    imported; only the plots need it."""
    r = subprocess.run([sys.executable, "-c", "import sys, elmanlab.report; print('matplotlib' in sys.modules)"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr
    root, _ = _study(tmp_path)
    r = subprocess.run([sys.executable, "-c", NO_MATPLOTLIB, str(root)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "7"
