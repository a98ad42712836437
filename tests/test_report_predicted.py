"""`elmanlab report DIR --check-fit FIT.json`: runs held against a scaling fit's predictions."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from elmanlab.errors import ElmanlabError
from elmanlab.report import Report
from elmanlab.sizing import count_params, parse_count, solve
from test_report import make_run
from test_report_fit import B, SHALLOW, STEEP, law, scaling_study

SMALL = {"20M": 20e6, "50M": 50e6, "100M": 100e6, "200M": 200e6}


def fitted(tmp_path, noise=0.01):
    """The fit.json of e1 and mamba2 at 20M-200M (two seeds each), predicting 400M."""
    root = scaling_study(tmp_path, noise=noise, sizes=SMALL, extra=False)
    Report(root, fit=True, predict=["400M"], bootstrap=B).write()
    return root / "fit.json"


def big_run(root, rid, model, loss, *, seed=42, shape=None, options=None, steps=300, lr=None, size="400M"):
    """A run of ``model`` sized at ``size`` (the sizing tool's shape unless ``shape``), last-100 loss ``loss``."""
    cfg = solve(model, size, options=options)
    dim, depth = shape or (cfg.dim, cfg.depth)
    n = count_params(cfg) if shape is None else parse_count(size)
    make_run(root, rid, model, n, dim, depth, seed=seed, steps=steps, options=options)
    p = root / rid / "summary.json"
    s = json.loads(p.read_text())
    s.update(loss_last100=loss, target=size)
    p.write_text(json.dumps(s))
    if lr is not None:
        c = json.loads((root / rid / "config.json").read_text())
        c["train"]["lr"] = lr
        (root / rid / "config.json").write_text(json.dumps(c))


def test_predictions_that_hold_and_one_that_misses(tmp_path):
    fit = fitted(tmp_path)
    root = tmp_path / "big"
    e1, m2 = law(SHALLOW, 400e6), law(STEEP, 400e6)
    big_run(root, "e1-s42", "e1", e1 + 0.002)
    big_run(root, "e1-s43", "e1", e1 - 0.002, seed=43)
    big_run(root, "mamba2-s42", "mamba2", m2 + 0.25)                 # far worse than its curve
    big_run(root, "e1-wide", "e1", e1 + 0.3, shape=(3584, 6))         # another shape: listed, not judged
    big_run(root, "e1-lr", "e1", e1, lr=1e-3)                         # another recipe: listed, not judged
    rep = Report(root, check_fit=fit)
    res = rep.write()
    chk = json.loads(res["check"].read_text())
    lines = {ln["configuration"] + (" lr" if "e1-lr" in ln["runs"] else ""): ln for ln in chk["lines"]}
    e1_line = next(ln for ln in chk["lines"] if set(ln["runs"]) == {"e1-s42", "e1-s43"})
    assert e1_line["family"] == "e1" and e1_line["verdict"].startswith("held")
    lo, hi = e1_line["interval"]
    assert lo <= e1 <= hi and e1_line["predicted"] == pytest.approx(e1, abs=0.02)
    m2_line = next(ln for ln in chk["lines"] if ln["runs"] == ["mamba2-s42"])
    assert m2_line["verdict"] == "missed: higher than predicted"
    assert m2_line["with_seed_noise"][0] < m2_line["interval"][0]      # the noise widens the interval
    wide = next(ln for ln in chk["lines"] if ln["runs"] == ["e1-wide"])
    assert wide["verdict"].startswith("not judged: another shape") and "3584x6" in wide["verdict"]
    other = next(ln for ln in chk["lines"] if ln["runs"] == ["e1-lr"])
    assert other["verdict"].startswith("not judged: other settings") and "lr 0.001 (the fit's 0.0003)" in other["verdict"]
    assert len(lines) == 4
    (gap,) = chk["gaps"]
    assert (gap["a"], gap["b"], gap["n"]) == ("e1", "mamba2", [2, 1])
    assert gap["observed"] == pytest.approx(e1 - (m2 + 0.25))
    assert gap["verdict"].startswith("missed: lower than predicted") and gap["verdict"].endswith("the order reversed")
    md = res["markdown"]
    assert "## Against the fit's predictions" in md and "| e1 - mamba2 | 2, 1 |" in md
    png = root / "plots" / "fit_check.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "plots/fit_check.png" in md


def test_held_out_checks_need_the_same_held_out_bytes(tmp_path):
    root = scaling_study(tmp_path, sizes=SMALL, extra=False)
    Report(root, metric="val_bpb", fit=True, predict=["400M"], bootstrap=B).write()
    big = tmp_path / "big"
    for rid, eb in (("e1-same", None), ("e1-other", 100_000)):
        big_run(big, rid, "e1", 1.0)
        sp = big / rid / "summary.json"
        sp.write_text(json.dumps({**json.loads(sp.read_text()), "val_bpb": 1.6}))
        c = json.loads((big / rid / "config.json").read_text())
        if eb:
            c["train"]["eval_bytes"] = eb
        (big / rid / "config.json").write_text(json.dumps(c))
    lines = {ln.runs[0].id: ln for ln in Report(big, check_fit=root / "fit.json").check.lines}
    assert lines["e1-same"].family == "e1" and lines["e1-same"].interval is not None
    assert lines["e1-other"].verdict.startswith("not judged: held out on other bytes (eval_bytes 100000")


def test_other_token_count_or_no_prediction_is_said_not_judged(tmp_path):
    fit = fitted(tmp_path)
    root = tmp_path / "long"
    big_run(root, "e1-long", "e1", 1.0, steps=600)                    # twice the fit's tokens
    chk = Report(root, check_fit=fit).check
    assert chk.group is None and "nothing judged" in chk.notes[0]
    assert chk.lines[0].verdict == "not judged: other token count" and not chk.gaps
    Report(root, check_fit=fit).write()
    assert not (root / "plots" / "fit_check.png").exists()          # nothing judged: no plot
    root = tmp_path / "far"                                           # 50M is not a predicted size
    make_run(root, "e1-50M", "e1", 50_000_000, 64, 4)
    (ln,) = Report(root, check_fit=fit).check.lines
    assert ln.verdict.startswith("not judged: the fit predicts no size within 5% of 50M")


def test_bad_fit_files_are_one_line_errors(tmp_path):
    root = tmp_path / "r"
    make_run(root, "e1-a", "e1", 400_000_000, 64, 4)
    with pytest.raises(ElmanlabError, match=r"^--check-fit .*nope.json: no such file; give the fit.json"):
        Report(root, check_fit=tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ElmanlabError, match=r"not readable JSON"):
        Report(root, check_fit=tmp_path / "bad.json")
    fit = fitted(tmp_path)
    f = json.loads(fit.read_text())
    f["predict"] = []
    (tmp_path / "nopred.json").write_text(json.dumps(f))
    with pytest.raises(ElmanlabError, match=r"the fit predicts no size; refit with --predict SIZE"):
        Report(root, check_fit=tmp_path / "nopred.json")
    p = subprocess.run([sys.executable, "-m", "elmanlab", "report", str(root), "--check-fit", str(tmp_path / "bad.json")],
                       capture_output=True, text=True)
    assert p.returncode != 0 and len(p.stderr.strip().splitlines()) == 1 and "not readable JSON" in p.stderr


def test_a_verdict_on_a_run_that_spiked_says_so(tmp_path):
    """E1 400M missed its prediction with a loss spike at step 830 inside it: the verdict, on the
    configuration and on the gap, names the spike (Run.loss_spikes); a run without one gets no note."""
    fit = fitted(tmp_path)
    root = tmp_path / "big"
    big_run(root, "e1-s42", "e1", law(SHALLOW, 400e6) + 0.3)
    big_run(root, "mamba2-s42", "mamba2", law(STEEP, 400e6))
    p = root / "e1-s42" / "metrics.jsonl"
    rows = [json.loads(x) for x in p.read_text().splitlines()]
    for r in rows:
        r["loss"] += 0.8 if r["step"] == 200 else 0.0
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    chk = json.loads(Report(root, check_fit=fit).write()["check"].read_text())
    v = {tuple(ln["runs"]): ln["verdict"] for ln in chk["lines"]}
    assert v[("e1-s42",)] == "missed: higher than predicted; e1-s42 had a loss spike at step 200"
    assert v[("mamba2-s42",)].startswith("held") and "spike" not in v[("mamba2-s42",)]
    assert chk["gaps"][0]["verdict"].endswith("; e1-s42 had a loss spike at step 200")
    # a blow-up in the first steps (Run.early_blowup) is named too, before the spike
    rows = [json.loads(x) for x in p.read_text().splitlines()]
    rows[0]["loss_max"] = 19.0
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    chk = json.loads(Report(root, check_fit=fit).write()["check"].read_text())
    v = {tuple(ln["runs"]): ln["verdict"] for ln in chk["lines"]}
    assert v[("e1-s42",)] == ("missed: higher than predicted; e1-s42 blew up in its first steps (a step's loss 19.0 "
                              f"by step {rows[0]['step']}); e1-s42 had a loss spike at step 200")
