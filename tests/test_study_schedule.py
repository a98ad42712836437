"""--finish-by: a job starts only if the finished runs of its model say it ends in time; a shorter one
further on in the queue takes the time instead (study/schedule.py, and the runner using it)."""
from __future__ import annotations

import json
import math
import re
import time

import pytest

from elmanlab.study import Runner, load_study
from elmanlab.study.schedule import (DEFAULT_EXPONENT, FINISH_AT_FILE, FIRST_RUN_S, SAFETY, expected_wall_s,
                                     job_tokens, next_job, read_finish_at)
from test_study_spec import cli, write


def rec(id, model, params, steps=100, wall=None, status="pending", **train):
    r = {"id": id, "model": model, "size": {"params": params}, "status": status,
         "train": {"steps": steps, "batch_size": 16, "seq_len": 512, **train}}
    if wall is not None:
        r["wall_s"] = wall
    return r


def test_expected_wall_scales_the_nearest_size_by_tokens_and_a_fitted_exponent():
    assert job_tokens(rec("a", "e1", 1e6, steps=10)) == 10 * 16 * 512
    assert job_tokens({"train": {"minutes": 3}}) is None
    one = [rec("f", "e1", 20e6, steps=100, wall=50.0, status="completed")]
    # one size: the default exponent; twice the tokens and 10x the parameters
    got = expected_wall_s(rec("j", "e1", 200e6, steps=200), one)
    assert got == pytest.approx(50.0 * 2 * 10 ** DEFAULT_EXPONENT * SAFETY)
    # another model, a failed run or no parameters: no expectation
    assert expected_wall_s(rec("j", "e42", 200e6), one) is None
    assert expected_wall_s(rec("j", "e1", 200e6), [{**one[0], "status": "failed"}]) is None
    assert expected_wall_s(rec("j", "e1", None), one) is None
    # two sizes: the exponent fitted (wall ~ N^0.5 here), scaled from the nearest size (100M, not 20M)
    two = one + [rec("g", "e1", 80e6, steps=100, wall=100.0, status="completed")]
    got = expected_wall_s(rec("j", "e1", 320e6, steps=100), two)
    assert got == pytest.approx(100.0 * 2 * SAFETY)
    # an exponent outside the plausible range is clamped (a run that tuned kernels for minutes)
    odd = one + [rec("g", "e1", 40e6, steps=100, wall=50.0 * 2 ** 3, status="completed")]
    assert expected_wall_s(rec("j", "e1", 80e6), odd) == pytest.approx(400.0 * 2 ** 1.2 * SAFETY)
    # a time budget: its minutes and the fixed costs, no runs needed
    assert expected_wall_s({"train": {"minutes": 2}}, []) == pytest.approx(120 * SAFETY + 120)
    # a model with no finished run: the slowest finished model's expectation at its size, x the margin
    both = one + [rec("m", "mamba2", 20e6, steps=100, wall=10.0, status="completed")]
    assert expected_wall_s(rec("j", "gdn", 20e6), both, other_models=True) == \
        pytest.approx(50.0 * SAFETY + FIRST_RUN_S)
    assert expected_wall_s(rec("j", "mamba2", 20e6), both, other_models=True) == pytest.approx(10.0 * SAFETY)
    assert expected_wall_s(rec("j", "gdn", 20e6), [], other_models=True) is None


def test_next_job_passes_over_what_would_overrun_and_keeps_queue_order():
    done = [rec("f", "e1", 20e6, wall=60.0, status="completed"),
            rec("m", "mamba2", 20e6, wall=20.0, status="completed")]
    big, small, mamba, new = (rec("big", "e1", 200e6), rec("small", "e1", 20e6), rec("mamba", "mamba2", 20e6),
                              rec("new", "gdn", 20e6))
    todo = [big, small, mamba, new]
    # no limits: the head of the queue
    assert next_job(todo, done, 0, None, None) == (big, [])
    # --stop-after alone: nothing once it has passed
    assert next_job(todo, done, 100, 60, None) == (None, [])
    # --finish-by 300 s at 200 s: the 200M e1 (60 x 10^0.7 x 1.15 = 345 s) is passed over, the 20M one
    # (69 s) starts
    got, passed = next_job(todo, done, 200, None, 300)
    assert got is small and [r["id"] for r, _ in passed] == ["big"] and got["expected_s"] == 69
    assert passed[0][1] == pytest.approx(60 * 10 ** DEFAULT_EXPONENT * SAFETY)
    # at 260 s only Mamba2 (23 s) fits; GDN, with no run of its own, is expected to take what E1, the
    # slower finished model, would, and to compile and tune its kernels first (69 s + 120 s = 189 s)
    assert next_job(todo, done, 260, None, 300)[0] is mamba
    assert next_job([new], done, 200, None, 400)[0] is new and new["expected_s"] == 189
    assert next_job([new], done, 220, None, 400)[0] is None
    # before any run has finished there is no expectation: a run starts only before --stop-after
    assert next_job([big, new], [], 290, None, 300)[0] is big
    assert next_job([big, new], [], 290, 240, 300)[0] is None
    assert next_job([big, new], [], 200, 240, 300)[0] is big
    assert next_job([], done, 0, None, 300) == (None, [])


def test_finish_at_file(tmp_path):
    assert read_finish_at(tmp_path) is None
    (tmp_path / FINISH_AT_FILE).write_text("1765000000\n")
    assert read_finish_at(tmp_path) == 1765000000.0
    (tmp_path / FINISH_AT_FILE).write_text("soon")
    assert read_finish_at(tmp_path) is None


def test_runner_finish_by_runs_the_short_job_and_leaves_the_long_one(tmp_path, monkeypatch):
    """A real tiny study on CPU: after one e1 run has finished, --finish-by passes over a queued e1 run
    of 10,000x its tokens, runs the short one queued behind it, and leaves the long one pending."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    runs = ["{model: e1, params: 200K}", "{model: e1, params: 200K, steps: 20000, name: long}",
            "{model: e1, params: 200K, seed: 43}", "{model: e1, params: 200K, seed: 44}",
            "{model: e1, params: 200K, seed: 45}"]

    def study(n):           # the study file with the first n of those runs
        return load_study(write(tmp_path, "name: sessions\ntrain: {steps: 2, batch_size: 2, seq_len: 32, seed: 42, "
                                          "eval_bytes: 64, device: cpu}\nruns:\n"
                                + "".join(f"  - {r}\n" for r in runs[:n]), f"s{n}.yaml"))
    out = tmp_path / "s"
    assert [j["status"] for j in Runner(study(1), out, None, echo=lambda m: None).run()["jobs"]] == ["completed"]
    said = []
    r = Runner(study(3), out, None, echo=said.append, finish_by_s=600)
    state = r.run()
    assert [j["status"] for j in state["jobs"]] == ["completed", "pending", "completed"]
    assert state["jobs"][2]["expected_s"] > 0
    assert any(m.startswith("passed over long: expected") for m in said)
    assert r.n_held_back == 1 and any("--finish-by 10 min" in m and "1 left" in m for m in said)
    # a deadline written while the study runs (the folder's finish-at file) replaces --finish-by: set to
    # a second from now when the first of two more runs starts, it lets that one finish and starts no other
    (out / FINISH_AT_FILE).write_text("1\n")          # a stale deadline: removed when the study starts

    def now_is_the_deadline(msg):
        said.append(msg)
        if "start" in msg and not (out / FINISH_AT_FILE).exists():
            (out / FINISH_AT_FILE).write_text(f"{time.time() + 1:.0f}\n")
    said.clear()
    r = Runner(study(5), out, None, echo=now_is_the_deadline, finish_by_s=600)
    state = r.run()
    assert [j["status"] for j in state["jobs"]] == ["completed", "pending", "completed", "completed", "pending"]
    assert r.n_held_back == 2 and any(m.startswith("passed over e1-200K-s45: expected") for m in said)
    assert any(re.search(r"--finish-by 0\.0\d* min: no more runs started; 2 left", m) for m in said)
    res = cli("study", tmp_path / "s5.yaml", "--out", tmp_path / "x", "--finish-by", -1)
    assert res.returncode == 2 and "--finish-by takes a positive number" in res.stderr
    assert math.isfinite(state["jobs"][2]["wall_s"])


def test_expected_wall_converts_between_sharings_of_the_gpu():
    """A finished run's wall time is gpu_jobs times its time alone (the GPU time-slices between
    processes); a job is expected to take that times the jobs it will share with."""
    shared = [rec("f", "e1", 20e6, wall=100.0, status="completed") | {"gpu_jobs": 2}]
    assert expected_wall_s(rec("j", "e1", 20e6), shared, sharing=1) == pytest.approx(50.0 * SAFETY)
    assert expected_wall_s(rec("j", "e1", 20e6), shared, sharing=2) == pytest.approx(100.0 * SAFETY)
    assert expected_wall_s(rec("j", "e1", 20e6), shared, sharing=3) == pytest.approx(150.0 * SAFETY)
    # a record that does not say how it shared is taken to have shared as the job will
    unknown = [rec("f", "e1", 20e6, wall=100.0, status="completed")]
    assert expected_wall_s(rec("j", "e1", 20e6), unknown, sharing=1) == pytest.approx(100.0 * SAFETY)
    assert expected_wall_s(rec("j", "e1", 20e6), unknown, sharing=2) == pytest.approx(100.0 * SAFETY)
    # another model's runs convert the same way, then the first-run margin
    assert expected_wall_s(rec("j", "gdn", 20e6), shared, other_models=True, sharing=1) == \
        pytest.approx(50.0 * SAFETY + FIRST_RUN_S)
    # next_job asks each job's sharing: a job of twice the tokens fits a deadline alone (115 s) that it
    # would miss sharing (230 s)
    big = rec("big", "e1", 20e6, steps=200)
    assert next_job([big], shared, 0, None, 150, sharing=lambda r: 2)[0] is None
    assert next_job([big], shared, 0, None, 150, sharing=lambda r: 1)[0] is big and big["expected_s"] == 115


def test_runner_solo_above_runs_a_large_job_alone_on_its_gpu(tmp_path, monkeypatch):
    """--jobs-per-gpu 2 --solo-above: the large job waits for the GPU to empty, nothing starts beside it,
    it records gpu_jobs 1; the small jobs share two at a time before and after it."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    p = write(tmp_path, "name: solo\ntrain: {steps: 12, batch_size: 2, seq_len: 32, seed: 42, eval_bytes: 64, "
                        "device: cpu}\nruns:\n  - {model: e1, params: 200K}\n  - {model: e33, params: 200K}\n"
                        "  - {model: e1, params: 500K}\n  - {model: e42, params: 200K}\n"
                        "  - {model: e1, params: 200K, seed: 43}\n")
    out = tmp_path / "s"
    said = []
    state = Runner(load_study(p), out, ["0"], echo=said.append, jobs_per_gpu=2, solo_above=300e3).run()
    jobs = {j["id"]: j for j in state["jobs"]}
    assert all(j["status"] == "completed" for j in jobs.values()) and state["solo_above"] == 300e3
    big = jobs["e1-500K-s42"]
    for j in jobs.values():
        assert j["gpu_jobs"] == (1 if j is big else 2)
        assert json.loads((out / j["id"] / "summary.json").read_text())["gpu_jobs"] == j["gpu_jobs"]
        if j is not big:        # never beside the solo job
            assert j["t_end"] <= big["t_start"] or j["t_start"] >= big["t_end"], j["id"]
    a, b = jobs["e1-200K-s42"], jobs["e33-200K-s42"]
    assert a["t_start"] < b["t_end"] and b["t_start"] < a["t_end"]      # the small ones still share
    assert any("e1-500K-s42 on GPU 0, alone (--solo-above)" in m for m in said)
    # resumed, the records keep how each run shared (the estimates of --finish-by read it)
    again = Runner(load_study(p), out, ["0"], echo=lambda m: None, jobs_per_gpu=2).plan(
        json.loads((out / "study.json").read_text()))
    assert {j["id"]: j["gpu_jobs"] for j in again["jobs"]} == {i: j["gpu_jobs"] for i, j in jobs.items()}
    # --dry-run plans a session: what --finish-by would expect of each run still to run (GPU 0 is not
    # checked against this machine); the new 500K run alone takes what the first one took alone
    p2 = write(tmp_path, p.read_text() + "  - {model: e1, params: 500K, seed: 43}\n  - {model: e33, params: 200K, seed: 43}\n",
               "solo2.yaml")
    res = cli("study", p2, "--out", out, "--dry-run", "--json", "--gpus", "0", "--jobs-per-gpu", "2",
              "--solo-above", "300K")
    assert res.returncode == 0, res.stderr
    plan = {j["id"]: j for j in json.loads(res.stdout)["jobs"]}
    assert plan["e1-500K-s43"]["expected_s"] == round(big["wall_s"] * SAFETY)
    assert plan["e33-200K-s43"]["expected_s"] == round(jobs["e33-200K-s42"]["wall_s"] * SAFETY)
    assert "expected_s" not in plan["e1-500K-s42"]                        # done
    res = cli("study", p2, "--out", out, "--dry-run", "--gpus", "0", "--jobs-per-gpu", "2", "--solo-above", "300K")
    assert res.returncode == 0 and re.search(r"e1-500K-s43 .* to run +[0-9,]+ s alone", res.stdout), res.stdout
    for argv, why in ((["--solo-above", "150M"], "needs --jobs-per-gpu 2"),
                      (["--solo-above", "lots", "--jobs-per-gpu", "2", "--gpus", "0"], "--solo-above takes")):
        res = cli("study", p, "--out", tmp_path / "x", *argv)
        assert res.returncode == 2 and why in res.stderr and "Traceback" not in res.stderr, res.stderr
