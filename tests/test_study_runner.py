"""The study runner: the output-folder rules, GPUs, the lock, resuming, and real tiny studies on CPU."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from elmanlab.errors import ElmanlabError
from elmanlab.study import Runner, check_out_dir, load_study, parse_gpus
from cli_inproc import run_main
from test_study_spec import cli, write

REPO = Path(__file__).resolve().parents[1]


def test_bad_input_cli_one_line_nothing_written(tmp_path):
    """(in-process: elmanlab.cli.main, as `python3 -m elmanlab` runs it)"""
    out = tmp_path / "out"
    p = write(tmp_path, "train: {steps: 3}\ngrid: {model: [e1, gdnn], params: [200K]}\n")
    r = run_main("study", p, "--out", out)
    assert r.returncode == 2 and r.stderr.startswith("error: grid (model=gdnn, params=200K): unknown model 'gdnn'")
    assert len(r.stderr.strip().splitlines()) == 1 and not out.exists()
    ok = write(tmp_path, "train: {steps: 3}\nruns: [{model: e1, params: 200K}]\n", "ok.yaml")
    r = run_main("study", ok, "--out", out, "--gpus", "7")
    assert r.returncode == 2 and "GPU 7 does not exist" in r.stderr and not out.exists()
    r = run_main("study", tmp_path / "missing.yaml", "--out", out)
    assert r.returncode == 2 and "does not exist" in r.stderr
    # a folder holding another study, or anything else: refused, untouched
    other = tmp_path / "other"
    other.mkdir()
    (other / "study.json").write_text(json.dumps({"name": "someone-else", "jobs": []}))
    r = run_main("study", ok, "--out", other)
    assert r.returncode == 2 and "holds another study ('someone-else'" in r.stderr
    assert json.loads((other / "study.json").read_text()) == {"name": "someone-else", "jobs": []}
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    r = run_main("study", ok, "--out", busy)
    assert r.returncode == 2 and "not empty and holds no study" in r.stderr
    assert sorted(x.name for x in busy.iterdir()) == ["notes.txt"]


def test_parse_gpus(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert parse_gpus("cpu", count=4) is None
    assert parse_gpus(None, count=0) is None
    assert parse_gpus(None, count=2) == ["0", "1"]
    assert parse_gpus("1,0", count=2) == ["1", "0"]
    with pytest.raises(ElmanlabError, match="GPU 2 does not exist: this machine has GPUs 0-1"):
        parse_gpus("0,2", count=2)
    with pytest.raises(ElmanlabError, match="listed twice"):
        parse_gpus("0,0", count=2)
    with pytest.raises(ElmanlabError, match="GPU indices"):
        parse_gpus("a,b", count=2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")          # indices map to the visible GPUs
    assert parse_gpus("1", count=2) == ["6"]


def test_out_dir_rules(tmp_path):
    st = load_study(write(tmp_path, "name: a\ntrain: {steps: 3}\nruns: [{model: e1, params: 200K}]\n"))
    assert check_out_dir(tmp_path / "new", st) is None
    (tmp_path / "empty").mkdir()
    assert check_out_dir(tmp_path / "empty", st) is None
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "study.json").write_text(json.dumps({"name": "a", "jobs": []}))
    assert check_out_dir(tmp_path / "mine", st)["name"] == "a"
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "study.json").write_text("{not json")
    with pytest.raises(ElmanlabError, match="not a study state file"):
        check_out_dir(tmp_path / "bad", st)


def test_a_study_recorded_with_the_old_identity_resumes(tmp_path):
    """study.json records written when every train setting but data/val_data/device defined a run
    (log_every, checkpoint_every, ...): compared on today's identity settings, the finished run is
    done and the failed one stays failed; a setting that defines a run still refuses a changed run."""
    text = """
        name: old
        train: {steps: 6, batch_size: 2, seq_len: 32, lr: 3e-3, seed: 42, log_every: 2, checkpoint_every: 3}
        grid: {model: [e1, e33], params: [200K]}
        """
    st = load_study(write(tmp_path, text))
    out = tmp_path / "out"
    (out / "e1-200K-s42").mkdir(parents=True)
    (out / "e1-200K-s42" / "summary.json").write_text(json.dumps({"status": "completed"}))
    records = []
    for j in st.jobs:
        old = {**j.identity(), "train": {k: v for k, v in j.train.items() if k not in ("data", "val_data", "device")}}
        assert old != j.identity() and old["train"]["log_every"] == 2
        records.append({"id": j.id, "status": "completed" if j.model == "e1" else "failed", "error": "boom",
                        "spec_identity": old})
    (out / "study.json").write_text(json.dumps({"name": "old", "jobs": records}))
    state = Runner(st, out, None).plan(check_out_dir(out, st))
    assert [(r["id"], r["status"]) for r in state["jobs"]] == [("e1-200K-s42", "completed"), ("e33-200K-s42", "failed")]
    assert state["jobs"][1]["error"] == "boom"
    changed = load_study(write(tmp_path, text.replace("lr: 3e-3", "lr: 1e-3")))
    with pytest.raises(ElmanlabError, match="trained with other settings"):
        Runner(changed, out, None).plan(check_out_dir(out, changed))


# ---------------------------------------------------------------- real studies (`elmanlab train` processes)

E2E = """
name: e2e
baseline: e1
train: {steps: 6, batch_size: 2, seq_len: 32, lr: 3e-3, seed: 42, eval_bytes: 512, log_every: 2}
grid: {model: [e1, e33], params: [200K]}
runs:
  - {model: e1, params: 600K}
  - {name: short-data, model: e1, params: 200K, data: short.txt}
"""


def _study_cli(*args):
    return subprocess.run([sys.executable, "-m", "elmanlab", "study", *map(str, args)], capture_output=True,
                          text=True, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})


def test_tiny_study_end_to_end(tmp_path):
    """Real `elmanlab train` processes: a failure is recorded and the rest go on; a second invocation
    runs nothing; a run that lost its summary runs again; the report ranks against the baseline."""
    (tmp_path / "short.txt").write_text("far too short")
    p = write(tmp_path, E2E)
    out = tmp_path / "out"
    r = _study_cli(p, "--out", out, "--gpus", "cpu")
    assert r.returncode == 1, r.stderr                 # one job failed
    st = json.loads((out / "study.json").read_text())
    status = {j["id"]: j["status"] for j in st["jobs"]}
    assert status == {"e1-200K-s42": "completed", "e33-200K-s42": "completed", "e1-600K-s42": "completed",
                      "short-data": "failed"}
    bad = next(j for j in st["jobs"] if j["id"] == "short-data")
    assert "too short" in bad["error"] and bad["returncode"] == 2 and bad["stderr_tail"]
    for rid in ("e1-200K-s42", "e33-200K-s42", "e1-600K-s42"):
        summ = json.loads((out / rid / "summary.json").read_text())
        assert summ["status"] == "completed" and summ["steps"] == 6 and summ["seed"] == 42
    assert "[1/4] start" in r.stderr and "FAILED short-data" in r.stderr
    # the report: all completed runs ranked, gaps to e1 at the same scale, the failure with its reason
    md = (out / "report.md").read_text()
    assert "| 1 |" in md and "gap to e1" in md and "too short" in md
    assert sorted(x.name for x in (out / "plots").iterdir()) == [
        "loss_vs_params.png", "loss_vs_time.png", "loss_vs_tokens.png", "tokens_per_s_vs_params.png"]
    # (6-step runs are scored at the end only: no held-out curves to plot)
    # second invocation: nothing runs (the failed job is not retried without --retry-failed)
    before = {rid: (out / rid / "summary.json").stat().st_mtime_ns for rid in ("e1-200K-s42", "e33-200K-s42")}
    r = _study_cli(p, "--out", out, "--gpus", "cpu", "--no-report")
    assert r.returncode == 1 and "4 runs, 4 already done" in r.stderr and "start" not in r.stderr
    assert before == {rid: (out / rid / "summary.json").stat().st_mtime_ns for rid in before}
    # a run interrupted before its summary: its folder is kept aside and the run starts again
    (out / "e33-200K-s42" / "summary.json").unlink()
    r = _study_cli(p, "--out", out, "--gpus", "cpu", "--no-report")
    assert "3 already done" in r.stderr and "start e33-200K-s42" in r.stderr and r.stderr.count("start") == 1
    assert (out / "e33-200K-s42" / "summary.json").exists()
    assert (out / "e33-200K-s42.interrupted-1" / "config.json").exists()
    # --retry-failed runs the failed job again; a changed setting for a finished run is refused
    r = _study_cli(p, "--out", out, "--gpus", "cpu", "--retry-failed", "--no-report")
    assert "start short-data" in r.stderr and r.stderr.count("start") == 1
    p.write_text(E2E.replace("steps: 6", "steps: 7"))
    r = _study_cli(p, "--out", out, "--gpus", "cpu")
    assert r.returncode == 2 and "trained with other settings" in r.stderr
    # the report skips the folder kept aside
    rows = (out / "results.csv").read_text()
    assert "interrupted-1" not in rows and rows.count("e33-200K-s42") == 1


def test_interrupted_study_resumes_the_run_in_flight(tmp_path):
    """Ctrl-C (SIGINT to the whole process group, as a terminal or `timeout` sends it; the study then
    forwards one more): the run in flight finishes its step and saves a checkpoint, the study records
    it as interrupted, and the next invocation resumes it with `train --resume` to the full budget."""
    import os
    import signal
    import time
    data = tmp_path / "text.txt"
    data.write_bytes((REPO / "README.md").read_bytes() * 20)
    p = write(tmp_path, f"""
        name: stop
        train: {{steps: 1000, batch_size: 2, seq_len: 32, lr: 1e-3, seed: 1, eval_bytes: 0, log_every: 10,
                 data: {data}}}
        runs:
          - {{model: e1, dim: 32, depth: 2, name: long}}
        """)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "elmanlab", "study", str(p), "--out", str(out), "--gpus", "cpu",
                             "--no-report"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    metrics = out / "long" / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    st = json.loads((out / "study.json").read_text())
    assert [j["status"] for j in st["jobs"]] == ["interrupted"]
    ckpts = list((out / "long" / "checkpoints").iterdir())
    assert len(ckpts) == 1 and 30 <= int(ckpts[0].name[5:]) < 1000
    r = _study_cli(p, "--out", out, "--gpus", "cpu", "--no-report")
    assert r.returncode == 0, r.stderr[-2000:]
    summ = json.loads((out / "long" / "summary.json").read_text())
    assert summ["status"] == "completed" and summ["steps"] == 1000
    assert "train --resume" in (out / "logs" / "long.log").read_text()


@pytest.mark.slow
def test_tiny_cpu_study_file(tmp_path):
    """The done-when check: studies/tiny-cpu.yaml (3 models x 2 sizes) runs, re-runs at once, reports."""
    import time
    study = REPO / "studies" / "tiny-cpu.yaml"
    out = tmp_path / "tiny"
    r = _study_cli(study, "--out", out, "--gpus", "cpu")
    assert r.returncode == 0, r.stderr
    t0 = time.time()
    r = _study_cli(study, "--out", out, "--gpus", "cpu")
    assert r.returncode == 0 and "6 already done, 0 to run" in r.stderr and time.time() - t0 < 30
    md = (out / "report.md").read_text()
    assert "## Scaling: loss last-100" in md and "## Scaling: throughput" in md and "gap to mamba2" in md
    ranked = [ln for ln in md.split("## Ranked runs")[1].split("##")[0].splitlines() if ln.startswith("| ")][1:]
    assert len(ranked) == 6


def test_queue_one_job_per_slot(tmp_path, monkeypatch):
    """Two GPU slots (here on a CPU-only machine, so each job runs on the CPU): jobs are spread over
    both slots, each in its own process with its CUDA_VISIBLE_DEVICES, never two at once on a slot."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    p = write(tmp_path, """
        name: q
        train: {steps: 4, batch_size: 2, seq_len: 32, seed: 42, eval_bytes: 256, device: cpu}
        grid: {model: [e1, e33], params: [200K], seed: [1, 2]}
        """)
    out = tmp_path / "q"
    state = Runner(load_study(p), out, ["0", "1"], echo=lambda m: None).run()
    jobs = state["jobs"]
    assert [j["status"] for j in jobs] == ["completed"] * 4
    assert {j["gpu"] for j in jobs} == {"0", "1"}
    for j in jobs:
        head = (out / j["log"]).read_text().splitlines()[1]
        assert head.startswith("# ") and f"CUDA_VISIBLE_DEVICES={j['gpu']} elmanlab train" in head
    for slot in ("0", "1"):
        spans = sorted((j["t_start"], j["t_end"]) for j in jobs if j["gpu"] == slot)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))      # one job at a time per slot
    a, b = (sorted((j["t_start"], j["t_end"]) for j in jobs if j["gpu"] == s)[0] for s in ("0", "1"))
    assert a[0] < b[1] and b[0] < a[1]                                  # the two slots ran together


def test_jobs_per_gpu_share_a_slot_and_are_recorded(tmp_path, monkeypatch):
    """--jobs-per-gpu 2 on one GPU: two jobs at once there, each run records gpu_jobs 2, and the
    report ranks them at equal tokens only (their times measure the sharing)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    p = write(tmp_path, """
        name: shared
        train: {steps: 30, batch_size: 2, seq_len: 32, seed: 42, eval_bytes: 256, device: cpu, log_every: 5}
        grid: {model: [e1, e33], params: [200K]}
        """)
    out = tmp_path / "s"
    state = Runner(load_study(p), out, ["0"], echo=lambda m: None, jobs_per_gpu=2).run()
    jobs = state["jobs"]
    assert [j["status"] for j in jobs] == ["completed"] * 2 and {j["gpu"] for j in jobs} == {"0"}
    assert state["jobs_per_gpu"] == 2
    (a0, a1), (b0, b1) = sorted((j["t_start"], j["t_end"]) for j in jobs)
    assert b0 < a1                                                      # together on the one GPU
    for j in jobs:
        assert json.loads((out / j["id"] / "summary.json").read_text())["gpu_jobs"] == 2
    from elmanlab.report import Report
    from elmanlab.report.headline import build_headline, section_headline
    rep = Report(out)
    heads = build_headline(rep)
    assert heads and all(g.time is None and g.tokens is not None for g in heads)
    assert "no equal-time ranking" in section_headline(rep, [], [])
    r = cli("study", p, "--out", tmp_path / "x", "--jobs-per-gpu", 0)
    assert r.returncode == 2 and "--jobs-per-gpu" in r.stderr and "Traceback" not in r.stderr
    r = cli("study", p, "--out", tmp_path / "x", "--jobs-per-gpu", 2, "--gpus", "cpu")
    assert r.returncode == 2 and "--jobs-per-gpu" in r.stderr and "Traceback" not in r.stderr


def _three_run_study(tmp_path, name: str):
    """A study of three 3-step CPU runs (e1, e33, e42 at 200K), for the tests of what runs when."""
    return write(tmp_path, f"""
        name: {name}
        train: {{steps: 3, batch_size: 2, seq_len: 32, seed: 42, eval_bytes: 256, device: cpu}}
        grid: {{model: [e1, e33, e42], params: [200K]}}
        """)


def test_stop_after_starts_no_new_run_and_resumes(tmp_path, monkeypatch):
    """--stop-after: the run in flight finishes, no new one starts after the deadline, and the same
    command later runs the rest (a study split over time-limited sessions)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    p = _three_run_study(tmp_path, "split")
    out = tmp_path / "split"
    said = []
    # the first run starts at once; a run's process takes seconds, so the 0.5 s deadline has passed
    # when it ends and the other two never start
    r1 = Runner(load_study(p), out, None, echo=said.append, stop_after_s=0.5)
    state = r1.run()
    assert [j["status"] for j in state["jobs"]] == ["completed", "pending", "pending"]
    assert r1.n_held_back == 2 and any("--stop-after" in m and "2 left" in m for m in said)
    assert not (out / state["jobs"][1]["id"]).exists()
    state = Runner(load_study(p), out, None, echo=lambda m: None).run()
    assert [j["status"] for j in state["jobs"]] == ["completed"] * 3
    r = cli("study", p, "--out", tmp_path / "x", "--stop-after", 0)
    assert r.returncode == 2 and "--stop-after takes a positive number" in r.stderr and "Traceback" not in r.stderr


def test_only_runs_the_selected_jobs_and_leaves_the_rest_pending(tmp_path, monkeypatch):
    """--only PATTERNS: only the jobs whose names match run; the others stay pending, marked `not
    selected` in a dry run, and a later invocation without --only runs them. A pattern matching no
    job is a one-line error."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    p = _three_run_study(tmp_path, "pick")
    out = tmp_path / "pick"
    names = [j.id for j in load_study(p).jobs]
    e33 = next(n for n in names if n.startswith("e33"))
    said = []
    state = Runner(load_study(p), out, None, echo=said.append, only=["e33-*"]).run()
    assert {j["id"]: j["status"] for j in state["jobs"]} == {n: "completed" if n == e33 else "pending" for n in names}
    assert any("--only: 2 runs not selected" in m for m in said)
    assert sorted(d.name for d in out.iterdir() if (d / "config.json").exists()) == [e33]
    r = cli("study", p, "--out", out, "--dry-run", "--only", "e1-*,e33-*")
    assert r.returncode == 0, r.stderr
    status = {ln.split()[1]: ln for ln in r.stdout.splitlines() if ln[:1].isdigit()}
    assert "done" in status[e33] and "to run" in status[names[0]] and "not selected" in status[names[2]]
    r = cli("study", p, "--out", out, "--only", "mamba2-*")
    assert r.returncode == 2 and "--only pattern 'mamba2-*' matches no run" in r.stderr and "Traceback" not in r.stderr
    state = Runner(load_study(p), out, None, echo=lambda m: None).run()
    assert [j["status"] for j in state["jobs"]] == ["completed"] * 3


def test_only_starts_the_jobs_in_the_order_of_its_patterns(tmp_path, monkeypatch):
    """--only 'B,A': every job matching B starts before any matching A (the queue's order within a
    pattern), so that a session that may end early runs the most wanted first."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    p = _three_run_study(tmp_path, "order")
    names = [j.id for j in load_study(p).jobs]
    said = []
    Runner(load_study(p), tmp_path / "order", None, echo=said.append, only=[names[2], names[0]]).run()
    started = [m.split()[2] for m in said if " start " in m]
    assert started == [names[2], names[0]]
    from elmanlab.study.schedule import only_rank
    assert [only_rank(["b*", "a*"], n) for n in ("a1", "b1", "c1")] == [1, 0, 2] and only_rank(None, "x") == 0


def test_one_study_process_per_folder(tmp_path):
    import os
    import socket
    from elmanlab.runs import LOCK_FILE
    from elmanlab.study import StudyLock
    (tmp_path / LOCK_FILE).write_text(f"{os.getpid()} {socket.gethostname()}\n")      # a live holder
    with pytest.raises(ElmanlabError, match=f"another `elmanlab study` \\(pid {os.getpid()}\\) is running"):
        StudyLock(tmp_path).__enter__()
    (tmp_path / LOCK_FILE).write_text(f"999999999 {socket.gethostname()}\n")          # a dead one: taken over
    with StudyLock(tmp_path):
        assert (tmp_path / LOCK_FILE).read_text().split()[0] == str(os.getpid())
    assert not (tmp_path / LOCK_FILE).exists()
