"""`elmanlab doctor`: its exit code on a GPU machine lacking a fast path, and --warmup's plan."""
from pathlib import Path

import pytest

from elmanlab.cli import main
from elmanlab.study import load_study
from elmanlab.warmup import warmup_plan


def run(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    cap = capsys.readouterr()
    return e.value.code, cap.out, cap.err


def test_doctor_exits_nonzero_when_a_family_lacks_its_fast_path_on_a_gpu(monkeypatch, capsys):
    import elmanlab.doctor as doctor
    info = doctor.machine_info()
    info["gpu"] = {"name": "fake GPU", "capability": "sm_90", "sms": 132, "memory_gib": 1.0, "count": 1}
    paths = {f: {"op": "x", "path": "fast kernel", "fast": True, "reason": "-"} for f in doctor.FAMILY_OPS}
    paths["gdn"] = {"op": "delta", "path": "reference", "fast": False, "reason": "fla is not installed"}
    monkeypatch.setattr(doctor, "machine_info", lambda: info)
    monkeypatch.setattr(doctor, "family_paths", lambda params="400M": paths)
    code, out, err = run(["doctor"], capsys)
    assert code == 1 and "fla is not installed" in out
    assert err.startswith("error: no fast path on this GPU for gdn") and len(err.strip().splitlines()) == 1
    paths["gdn"]["fast"] = True
    assert run(["doctor"], capsys)[0] == 0


def test_doctor_on_a_cpu_machine_exits_zero(capsys):
    code, out, _ = run(["doctor"], capsys)
    assert code == 0 and "reference" in out


def test_warmup_plan_is_the_distinct_models_of_a_study(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("train: {steps: 3, batch_size: 4, seq_len: 64}\nseeds: [1, 2]\n"
                 "grid: {model: [e1, mamba2], params: [200K]}\n"
                 "runs: [{model: e1, params: 200K, seq_len: 128}]\n")
    jobs = load_study(p).jobs
    plan = warmup_plan(jobs)
    assert len(jobs) == 6 and len(plan) == 3                 # seeds share a shape; seq_len 128 does not
    assert sorted((q["model"].model, q["batch_size"], q["seq_len"], len(q["runs"])) for q in plan) == \
        [("e1", 4, 64, 2), ("e1", 4, 128, 2), ("mamba2", 4, 64, 2)]


def test_warmup_cli(tmp_path, capsys):
    code, out, err = run(["doctor", "--warmup", Path(__file__).resolve().parents[1] / "studies" / "tiny-cpu.yaml"], capsys)
    assert code == 0 and "warm-up: 6 distinct models" in out and "skipped, no GPU" in out
    code, _, err = run(["doctor", "--warmup", tmp_path / "missing.yaml"], capsys)
    assert code == 2 and err.startswith("error: ") and "does not exist" in err
