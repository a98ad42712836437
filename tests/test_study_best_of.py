"""best_of waves: the best runs of an earlier wave, repeated with other settings once that wave is done."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from elmanlab.errors import ElmanlabError
from elmanlab.study import Runner, load_study

STUDY = """
name: bo
baseline: mamba2
train: {steps: 30, batch_size: 4, seq_len: 64, seed: 42}
waves:
  - name: families
    grid: {model: [mamba2, e1, e33, e88], params: [200K]}
  - name: ablations
    runs: [{model: e1, params: 200K, lr: 1e-3}]
  - name: second-seed
    train: {seed: 43}
    best_of: {wave: families, n: 2, metric: val_bpb, baseline: true}
"""
FAMILIES = ["mamba2-200K-s42", "e1-200K-s42", "e33-200K-s42", "e88-200K-s42"]


def write(tmp_path, text, name="s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def fake_run(out: Path, rid: str, **summary) -> None:
    """A run folder as `elmanlab train` leaves it, as far as run_status reads it."""
    (out / rid).mkdir(parents=True, exist_ok=True)
    (out / rid / "summary.json").write_text(json.dumps({"status": "completed", **summary}))


def test_deferred_until_source_wave_done(tmp_path):
    p = write(tmp_path, STUDY)
    st = load_study(p)
    assert [j.wave for j in st.jobs] == ["families"] * 4 + ["ablations"]
    assert [d["wave"] for d in st.deferred] == ["second-seed"] and st.best_of == {}
    assert st.deferred[0]["line"] == ("wave second-seed: the 2 best of wave families by val_bpb plus the baseline "
                                      "(decided when that wave has finished)")
    out = tmp_path / "out"
    for rid, v in zip(FAMILIES[:3], (2.5, 2.3, 2.4)):          # e88 still missing
        fake_run(out, rid, val_bpb=v)
    st = load_study(p, out=out)
    assert len(st.jobs) == 5 and len(st.deferred) == 1


def test_expansion_choice_order_and_copies(tmp_path):
    p = write(tmp_path, STUDY)
    out = tmp_path / "out"
    # e1 and e88 tie on val_bpb: the file's order breaks the tie; loss_last100 ranks otherwise
    for rid, v, loss in zip(FAMILIES, (2.5, 2.3, 2.4, 2.3), (1.0, 3.0, 2.0, 4.0)):
        fake_run(out, rid, val_bpb=v, loss_last100=loss)
    st = load_study(p, out=out)
    assert st.deferred == []
    new = [j for j in st.jobs if j.wave == "second-seed"]
    assert [j.id for j in new] == ["e1-200K-s42-second-seed", "e88-200K-s42-second-seed",
                                   "mamba2-200K-s42-second-seed"]
    src = st.job("e1-200K-s42")
    copy = new[0]
    assert (copy.model, copy.params, copy.size, copy.options) == (src.model, src.params, src.size, src.options)
    assert copy.train == {**src.train, "seed": 43}
    rec = st.best_of["second-seed"]
    assert rec["chosen"] == ["e1-200K-s42", "e88-200K-s42"] and rec["baseline_runs"] == ["mamba2-200K-s42"]
    assert [r["id"] for r in rec["ranking"]] == ["e1-200K-s42", "e88-200K-s42", "e33-200K-s42", "mamba2-200K-s42"]
    assert st.messages == ["wave second-seed: best 2 of families by val_bpb: e1-200K-s42 (2.3), "
                           "e88-200K-s42 (2.3) + baseline mamba2-200K-s42"]
    # the same folder gives the same choice; another metric another one (baseline already among the best)
    assert [j.id for j in load_study(p, out=out).jobs] == [j.id for j in st.jobs]
    st2 = load_study(write(tmp_path, STUDY.replace("metric: val_bpb", "metric: loss_last100"), "l.yaml"), out=out)
    assert st2.best_of["second-seed"]["chosen"] == ["mamba2-200K-s42", "e33-200K-s42"]
    assert st2.best_of["second-seed"]["baseline_runs"] == []


def test_failed_runs_skipped_and_all_failed(tmp_path):
    p = write(tmp_path, STUDY.replace("n: 2", "n: 1"))
    out = tmp_path / "out"
    fake_run(out, "mamba2-200K-s42", val_bpb=2.0, status="failed", error="out of memory")
    fake_run(out, "e1-200K-s42", val_bpb=2.9)
    fake_run(out, "e33-200K-s42", status="stopped_nonfinite")
    fake_run(out, "e88-200K-s42", val_bpb=2.8)
    st = load_study(p, out=out)
    assert [j.id for j in st.jobs if j.wave == "second-seed"] == ["e88-200K-s42-second-seed"]
    assert any("not ranked" in m and "mamba2-200K-s42 (failed)" in m for m in st.messages)
    assert any(m.startswith("warning:") and "baseline mamba2" in m for m in st.messages)
    # --retry-failed: the failed runs run again first, so the choice waits
    assert load_study(p, out=out, retry_failed=True).deferred
    for rid in ("e1-200K-s42", "e88-200K-s42"):
        fake_run(out, rid, status="failed", error="boom")
    st = load_study(p, out=out)
    assert [j.wave for j in st.jobs] == ["families"] * 4 + ["ablations"] and not st.deferred
    assert any(m.startswith("warning: wave second-seed: no run of wave families") for m in st.messages)


def test_seeds_and_chained_best_of(tmp_path):
    p = write(tmp_path, STUDY + """
  - name: long
    train: {steps: 60}
    seeds: [7, 8]
    best_of: {wave: second-seed, n: 1}
""")
    out = tmp_path / "out"
    for rid, v in zip(FAMILIES, (2.5, 2.3, 2.4, 2.6)):
        fake_run(out, rid, val_bpb=v)
    st = load_study(p, out=out)
    assert [d["wave"] for d in st.deferred] == ["long"]       # waits for second-seed's runs
    fake_run(out, "e1-200K-s42-second-seed", val_bpb=2.2)
    fake_run(out, "e33-200K-s42-second-seed", val_bpb=2.1)
    fake_run(out, "mamba2-200K-s42-second-seed", val_bpb=2.0, status="failed")
    st = load_study(p, out=out)
    long = [j for j in st.jobs if j.wave == "long"]
    assert [j.id for j in long] == ["e33-200K-s42-second-seed-long-s7", "e33-200K-s42-second-seed-long-s8"]
    assert [(j.train["seed"], j.train["steps"]) for j in long] == [(7, 60), (8, 60)]


BAD = [
    ("best_of: {wave: nope, n: 1}", "best_of.wave must name an earlier wave, got 'nope' (earlier waves: families)"),
    ("best_of: {wave: families, n: 0}", "best_of.n is how many runs to take, a positive integer, got 0"),
    ("best_of: {wave: families, n: two}", "a positive integer, got 'two'"),
    ("best_of: {wave: families, n: 1, metric: acc}", "best_of.metric must be one of val_bpb, loss_last100"),
    ("best_of: {wave: families, n: 1, baseline: yes-please}", "best_of.baseline is true or false"),
    ("best_of: {wave: families, n: 1, top: 3}", "unknown best_of key 'top'"),
    ("best_of: {wave: families, n: 1}\n    runs: [{model: e1, params: 200K}]", "either best_of or runs/grid"),
    ("best_of: [families]", "best_of is a mapping"),
]


@pytest.mark.parametrize("wave,msg", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_best_of(tmp_path, wave, msg):
    text = ("train: {steps: 3}\nwaves:\n  - name: families\n    grid: {model: [e1], params: [200K]}\n"
            f"  - name: again\n    train: {{seed: 3}}\n    {wave}\n")
    with pytest.raises(ElmanlabError) as e:
        load_study(write(tmp_path, text))
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_bad_best_of_whole_file(tmp_path):
    head = "train: {steps: 3}\nwaves:\n  - {name: fam, grid: {model: [e1, e33], params: [200K]}}\n"
    for tail, msg in [
        ("  - {name: again, best_of: {wave: fam, n: 1}}\n", "give it `train:`"),
        ("  - {name: again, train: {seed: 3}, best_of: {wave: fam, n: 1, baseline: true}}\n",
         "needs the study's `baseline:`"),
        ("  - {name: fam, train: {seed: 3}, best_of: {wave: fam, n: 1}}\n", "two waves are named 'fam'"),
        ("  - {name: a, train: {seed: 3}, best_of: {wave: b, n: 1}}\n"
         "  - {name: b, grid: {model: [e1], params: [400K]}}\n",
         "must name an earlier wave, got 'b'"),
    ]:
        with pytest.raises(ElmanlabError, match=None) as e:
            load_study(write(tmp_path, head + tail))
        assert msg in str(e.value), (tail, str(e.value))
    with pytest.raises(ElmanlabError, match="wave fam has no run of the baseline e1"):
        load_study(write(tmp_path, "baseline: e1\n" + head.replace("[e1, e33]", "[e33]") +
                         "  - {name: x, grid: {model: [e1], params: [200K]}}\n"
                         "  - {name: again, train: {seed: 3}, best_of: {wave: fam, n: 1, baseline: true}}\n"))


def test_dry_run_lists_deferred_then_expanded(tmp_path):
    p = write(tmp_path, STUDY)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    run = lambda: subprocess.run([sys.executable, "-m", "elmanlab", "study", str(p), "--out", str(out),  # noqa
                                  "--dry-run", "--gpus", "cpu"], capture_output=True, text=True, env=env)
    r = run()
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].startswith("study bo: 5 runs")
    assert r.stdout.splitlines()[-1] == ("wave second-seed: the 2 best of wave families by val_bpb plus the "
                                         "baseline (decided when that wave has finished)")
    out.mkdir()
    (out / "study.json").write_text(json.dumps({"name": "bo", "jobs": []}))
    for rid, v in zip(FAMILIES, (2.5, 2.3, 2.4, 2.6)):
        fake_run(out, rid, val_bpb=v)
    r = run()
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].startswith("study bo: 8 runs")
    assert " e33-200K-s42-second-seed " in r.stdout and "decided when" not in r.stdout
    assert r.stdout.splitlines()[-1].startswith("wave second-seed: best 2 of families by val_bpb: e1-200K-s42 (2.3)")


# ---------------------------------------------------------------- a real tiny study on CPU

E2E = """
name: bo-e2e
baseline: e1
train: {steps: 4, batch_size: 2, seq_len: 32, lr: 3e-3, seed: 42, eval_bytes: 256, log_every: 2}
waves:
  - name: fam
    grid: {model: [e1, e33, mingru], params: [200K]}
  - name: again
    train: {seed: 43}
    best_of: {wave: fam, n: 1, metric: loss_last100, baseline: true}
"""


def test_best_of_end_to_end(tmp_path, monkeypatch):
    """Real train processes on two slots: the best_of wave is decided once its source wave is done,
    runs, is recorded in study.json; a second invocation runs nothing and keeps the choice."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    p = write(tmp_path, E2E.replace("train: {steps", "train: {device: cpu, steps"))
    out = tmp_path / "out"
    lines: list[str] = []
    st = load_study(p, out=out)
    assert st.deferred and len(st.jobs) == 3
    state = Runner(st, out, ["0", "1"], echo=lines.append).run()
    fam = {j["id"]: j for j in state["jobs"] if j["wave"] == "fam"}
    assert [j["status"] for j in fam.values()] == ["completed"] * 3
    losses = {rid: json.loads((out / rid / "summary.json").read_text())["loss_last100"] for rid in fam}
    best = min(fam, key=lambda r: (losses[r], list(fam).index(r)))
    want = [f"{best}-again"] + (["e1-200K-s42-again"] if best != "e1-200K-s42" else [])
    again = [j for j in state["jobs"] if j["wave"] == "again"]
    assert [j["id"] for j in again] == want and all(j["status"] == "completed" for j in again)
    for j in again:
        summ = json.loads((out / j["id"] / "summary.json").read_text())
        assert summ["seed"] == 43 and summ["steps"] == 4
    saved = json.loads((out / "study.json").read_text())
    assert saved["best_of"]["again"]["chosen"] == [best] and saved["deferred"] == []
    assert [r["id"] for r in saved["best_of"]["again"]["ranking"]] == sorted(fam, key=lambda r: losses[r])
    assert any(ln.startswith(f"wave again: best 1 of fam by loss_last100: {best} (") for ln in lines)
    # again: nothing new runs, the same choice
    lines.clear()
    st2 = load_study(p, out=out)
    assert not st2.deferred and [j.id for j in st2.jobs if j.wave == "again"] == want
    state2 = Runner(st2, out, None, echo=lines.append).run()
    assert f"{3 + len(want)} runs, {3 + len(want)} already done, 0 to run" in lines[0]
    assert not any(" start " in ln for ln in lines)
    assert json.loads((out / "study.json").read_text())["best_of"] == saved["best_of"]
    # the report reads the study as usual
    from elmanlab.report import write_report
    res = write_report(out, None)
    rows = res["csv"].read_text()
    assert all(j["id"] in rows for j in state2["jobs"])


def test_copy_identical_to_a_run_of_the_study_is_not_repeated(tmp_path):
    p = write(tmp_path, """
        train: {steps: 3, seed: 42}
        waves:
          - {name: fam, grid: {model: [e1, e33], params: [200K], seed: [42, 43]}}
          - {name: again, train: {seed: 43}, best_of: {wave: fam, n: 2}}
        """)
    out = tmp_path / "out"
    for rid, v in [("e1-200K-s42", 2.0), ("e1-200K-s43", 2.1), ("e33-200K-s42", 2.2), ("e33-200K-s43", 2.3)]:
        fake_run(out, rid, val_bpb=v)
    st = load_study(p, out=out)
    assert [j.id for j in st.jobs if j.wave == "again"] == []
    assert st.best_of["again"]["already_in_study"] == ["e1-200K-s42-again = e1-200K-s43",
                                                       "e1-200K-s43-again = e1-200K-s43"]


def test_chained_best_of_without_the_baseline_in_its_source_is_a_warning(tmp_path):
    """Which runs a best_of wave holds depends on the results: a later wave asking for the baseline
    from it gets a warning when the baseline did not win, not an error after hours of runs."""
    p = write(tmp_path, """
        name: c
        baseline: mamba2
        train: {steps: 3, seed: 42}
        waves:
          - {name: fam, grid: {model: [mamba2, e1, e33], params: [200K]}}
          - {name: a, train: {seed: 43}, best_of: {wave: fam, n: 1}}
          - {name: b, train: {seed: 44}, best_of: {wave: a, n: 1, baseline: true}}
        """)
    out = tmp_path / "out"
    for rid, v in (("mamba2-200K-s42", 2.5), ("e1-200K-s42", 2.0), ("e33-200K-s42", 2.2)):
        fake_run(out, rid, val_bpb=v)
    assert [d["wave"] for d in load_study(p, out=out).deferred] == ["b"]
    fake_run(out, "e1-200K-s42-a", val_bpb=2.0)
    st = load_study(p, out=out)
    assert [j.id for j in st.jobs if j.wave == "b"] == ["e1-200K-s42-a-b"]
    assert any(m.startswith("warning:") and "baseline mamba2" in m for m in st.messages)


def test_retry_failed_keeps_a_run_that_failed_again_recorded_as_failed(tmp_path):
    """--retry-failed with a best_of wave: a run that fails in this invocation stays `failed` in
    study.json after the wave is expanded (not `pending`), so the study reports the failure."""
    fake = tmp_path / "fakepy.py"
    fake.write_text(f"#!{sys.executable}\n" + textwrap.dedent('''\
        import json, os, sys
        argv = sys.argv[1:]
        out = argv[argv.index("--out") + 1]
        os.makedirs(out, exist_ok=True)
        name = os.path.basename(out)
        failed = name.startswith("e1-") and "again" not in name
        json.dump({"status": "failed" if failed else "completed", "val_bpb": 2.0 + len(name) / 100,
                   "loss_last100": 1.0, "error": "boom" if failed else None},
                  open(os.path.join(out, "summary.json"), "w"))
        sys.exit(1 if failed else 0)
        '''))
    fake.chmod(0o755)
    p = write(tmp_path, """
        name: r
        train: {steps: 3, seed: 42}
        waves:
          - {name: fam, grid: {model: [e1, e33], params: [200K]}}
          - {name: again, train: {seed: 43}, best_of: {wave: fam, n: 1}}
        """)
    out = tmp_path / "out"
    st = load_study(p, out=out, retry_failed=True)
    runner = Runner(st, out, None, retry_failed=True, echo=lambda m: None, python=str(fake))
    runner.run()
    saved = {j["id"]: j["status"] for j in json.loads((out / "study.json").read_text())["jobs"]}
    assert saved == {"e1-200K-s42": "failed", "e33-200K-s42": "completed", "e33-200K-s42-again": "completed"}
