"""Study files: expansion, validation, the output-folder rules, GPUs, and real tiny studies on CPU."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from elmanlab.errors import ElmanlabError
from elmanlab.sizing import model_config, report
from elmanlab.study import check_out_dir, load_study, parse_gpus, train_available

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path, text, name="s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "elmanlab", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd)


BASIC = """
name: tiny
baseline: mamba2
train: {steps: 30, batch_size: 4, seq_len: 64, lr: 3e-4, seed: 42}
runs:
  - {model: mamba2, params: 200K}
grid:
  model: [e1, e33]
  params: [200K, 400K]
seeds: [42, 43]
waves:
  - name: gate
    train: {steps: 20}
    grid: {model: [e88], params: [200K], use_gate: [true, false]}
  - name: deep
    runs:
      - {model: e1, dim: 64, depth: 3, seed: 7, name: e1-small}
"""


def test_expansion_grid_seeds_waves(tmp_path):
    st = load_study(write(tmp_path, BASIC))
    ids = [j.id for j in st.jobs]
    assert len(ids) == len(set(ids)) == 2 + 2 * 2 * 2 + 2 * 2 + 1 == 15
    assert st.baseline == "mamba2" and st.name == "tiny"
    # cartesian product x seeds
    grid = [j for j in st.jobs if j.wave is None and j.model in ("e1", "e33")]
    assert sorted((j.model, j.params, j.train["seed"]) for j in grid) == sorted(
        (m, p, s) for m in ("e1", "e33") for p in ("200K", "400K") for s in (42, 43))
    # wave train settings override the study's, and land in the id
    gate = [j for j in st.jobs if j.wave == "gate"]
    assert {j.train["steps"] for j in gate} == {20} and {j.options["use_gate"] for j in gate} == {True, False}
    assert all("steps=20" in j.id for j in gate)
    # an explicit seed wins over the study's seeds; a name is the folder name
    small = st.job("e1-small")
    assert small.train["seed"] == 7 and small.dim == 64 and small.depth == 3 and small.wave == "deep"
    # sizes are the solver's
    j = st.job("e1-400K-s43")
    rep = report(model_config("e1", params="400K"))
    assert (j.size["params"], j.size["dim"], j.size["depth"]) == (rep.params, rep.dim, rep.depth)
    assert j.train == {"steps": 30, "batch_size": 4, "seq_len": 64, "lr": 3e-4, "seed": 43}


def test_budget_override_and_data_paths(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "corpus.txt").write_text("some text\n" * 100)
    (tmp_path / "other.txt").write_text("other text\n" * 100)
    p = write(tmp_path / "d", """
        train: {minutes: 10, data: corpus.txt}
        runs:
          - {model: e1, params: 200K}
          - {model: e1, params: 200K, steps: 50}
        """)
    st = load_study(p)
    a, b = st.jobs
    assert a.train["minutes"] == 10 and "steps" not in a.train
    assert b.train["steps"] == 50 and "minutes" not in b.train and b.id != a.id
    assert a.train["data"] == str((tmp_path / "d" / "corpus.txt").resolve())   # relative to the file
    st = load_study(p, data=str(tmp_path / "other.txt"))
    assert {j.train["data"] for j in st.jobs} == {str((tmp_path / "other.txt").resolve())}
    assert st.name == "s"            # the file name when the study has no name
    with pytest.raises(ElmanlabError, match="data file .*missing.txt does not exist"):
        load_study(p, data=str(tmp_path / "missing.txt"))


def test_argv_is_accepted_by_train(tmp_path):
    st = load_study(write(tmp_path, BASIC))
    j = next(j for j in st.jobs if j.options.get("use_gate") is False)
    argv = j.argv(tmp_path / "run")
    assert argv[:2] == ["train", "e88"] and "--no-use-gate" in argv and argv[-2:] == ["--out", str(tmp_path / "run")]
    if not train_available():
        pytest.skip("no train command in this install")
    from elmanlab.cli import build_parser
    for job in st.jobs:
        args = build_parser().parse_args(job.argv(tmp_path / job.id))
        assert args.model == job.model and args.steps == job.train["steps"]
        assert args.seed == job.train["seed"] and float(args.lr) == pytest.approx(3e-4)


BAD = [
    ("name: x\ntrain: {steps: 3\nruns: []\n", "malformed YAML at line"),
    ("- just\n- a list\n", "a study file is a mapping"),
    ("train: {steps: 3}\nrunz: [{model: e1, params: 200K}]\n", "unknown top-level key 'runz' (did you mean runs?)"),
    ("train: {steps: 3}\nruns: [{model: e9, params: 200K}]\n", "unknown model 'e9'"),
    ("train: {steps: 3}\nruns: [{model: e1, params: 200K, n_state: 32}]\n", "e1 has no option 'n_state'"),
    ("train: {steps: 3}\nruns: [{model: e1, params: 200K, colour: red}]\n", "unknown run key 'colour'"),
    ("train: {steps: 3}\ngrid: {}\n", "the grid is empty"),
    ("train: {steps: 3}\ngrid: {model: [], params: [200K]}\n", "grid key 'model' has an empty list"),
    ("train: {steps: 3}\n", "the study has no runs"),
    ("runs: [{model: e1, params: 200K}]\n", "no budget"),
    ("train: {steps: 3, params: 1M}\nruns: [{model: e1, params: 200K}]\n", "'params' is a model setting"),
    ("train: {steps: 3}\nruns: [{model: e1}]\n", "exactly one of `params`"),
    ("train: {steps: 3}\nruns: [{model: e1, params: lots}]\n", "cannot read parameter count"),
    ("train: {steps: 3}\nruns: [{model: e1, params: 1}]\n", "too small"),
    ("train: {steps: -3}\nruns: [{model: e1, params: 200K}]\n", "steps must be a positive number"),
    ("baseline: mamba2\ntrain: {steps: 3}\nruns: [{model: e1, params: 200K}]\n", "baseline 'mamba2' is neither"),
    ("train: {steps: 3}\nruns: [{model: e1, params: 200K, name: a}, {model: e1, params: 400K, name: a}]\n",
     "same name 'a'"),
    ("train: {steps: 3}\nwaves: [{name: w, train: {steps: 5}}]\n", "a wave needs runs or a grid"),
    ("train: {steps: 3}\nseeds: [1, two]\nruns: [{model: e1, params: 200K}]\n", "seeds is a list of integers"),
]


@pytest.mark.parametrize("text,msg", BAD, ids=[m.split()[0] + str(i) for i, (_, m) in enumerate(BAD)])
def test_bad_study_files(tmp_path, text, msg):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ElmanlabError) as e:
        load_study(p)
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_bad_input_cli_one_line_nothing_written(tmp_path):
    out = tmp_path / "out"
    p = write(tmp_path, "train: {steps: 3}\ngrid: {model: [e1, gdnn], params: [200K]}\n")
    r = cli("study", p, "--out", out)
    assert r.returncode == 2 and r.stderr.startswith("error: grid (model=gdnn, params=200K): unknown model 'gdnn'")
    assert len(r.stderr.strip().splitlines()) == 1 and not out.exists()
    ok = write(tmp_path, "train: {steps: 3}\nruns: [{model: e1, params: 200K}]\n", "ok.yaml")
    r = cli("study", ok, "--out", out, "--gpus", "7")
    assert r.returncode == 2 and "GPU 7 does not exist" in r.stderr and not out.exists()
    r = cli("study", tmp_path / "missing.yaml", "--out", out)
    assert r.returncode == 2 and "does not exist" in r.stderr
    # a folder holding another study, or anything else: refused, untouched
    other = tmp_path / "other"
    other.mkdir()
    (other / "study.json").write_text(json.dumps({"name": "someone-else", "jobs": []}))
    r = cli("study", ok, "--out", other)
    assert r.returncode == 2 and "holds another study ('someone-else'" in r.stderr
    assert json.loads((other / "study.json").read_text()) == {"name": "someone-else", "jobs": []}
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    r = cli("study", ok, "--out", busy)
    assert r.returncode == 2 and "not empty and holds no study" in r.stderr
    assert sorted(x.name for x in busy.iterdir()) == ["notes.txt"]


def test_dry_run_lists_sizes(tmp_path):
    r = cli("study", write(tmp_path, BASIC), "--out", tmp_path / "o", "--dry-run", "--gpus", "cpu")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("study tiny: 15 runs, baseline mamba2, on CPU")
    row = next(ln for ln in lines if " e33-400K-s42 " in ln)
    rep = report(model_config("e33", params="400K"))
    assert f" {rep.dim} " in row and f" {rep.depth} " in row and "to run" in row
    assert not (tmp_path / "o").exists()
    r = cli("study", write(tmp_path, BASIC), "--out", tmp_path / "o", "--dry-run", "--json", "--gpus", "cpu")
    jobs = json.loads(r.stdout)["jobs"]
    assert len(jobs) == 15 and all(j["size"]["params"] > 0 for j in jobs)


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


# ---------------------------------------------------------------- real studies (need `elmanlab train`)

needs_train = pytest.mark.skipif(not train_available(), reason="no train command in this install")

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


@needs_train
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


@needs_train
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
        train: {{steps: 4000, batch_size: 2, seq_len: 32, lr: 1e-3, seed: 1, eval_bytes: 0, log_every: 10,
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
    assert len(ckpts) == 1 and 30 <= int(ckpts[0].name[5:]) < 4000
    r = _study_cli(p, "--out", out, "--gpus", "cpu", "--no-report")
    assert r.returncode == 0, r.stderr[-2000:]
    summ = json.loads((out / "long" / "summary.json").read_text())
    assert summ["status"] == "completed" and summ["steps"] == 4000
    assert "train --resume" in (out / "logs" / "long.log").read_text()


@needs_train
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


@needs_train
def test_queue_one_job_per_slot(tmp_path, monkeypatch):
    """Two GPU slots (here on a CPU-only machine, so each job runs on the CPU): jobs are spread over
    both slots, each in its own process with its CUDA_VISIBLE_DEVICES, never two at once on a slot."""
    from elmanlab.study import Runner
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


def test_one_study_process_per_folder(tmp_path):
    import os
    import socket
    from elmanlab.study import LOCK_FILE, StudyLock
    (tmp_path / LOCK_FILE).write_text(f"{os.getpid()} {socket.gethostname()}\n")      # a live holder
    with pytest.raises(ElmanlabError, match=f"another `elmanlab study` \\(pid {os.getpid()}\\) is running"):
        StudyLock(tmp_path).__enter__()
    (tmp_path / LOCK_FILE).write_text(f"999999999 {socket.gethostname()}\n")          # a dead one: taken over
    with StudyLock(tmp_path):
        assert (tmp_path / LOCK_FILE).read_text().split()[0] == str(os.getpid())
    assert not (tmp_path / LOCK_FILE).exists()
