"""Study files: expansion, validation, job ids and the train arguments of each job."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from elmanlab.config import field_type, train_settings
from elmanlab.errors import ElmanlabError
from elmanlab.sizing import model_config, report
from elmanlab.study import load_study


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


def test_train_keys_are_the_train_settings(tmp_path):
    """The study file's train keys are exactly the TrainConfig settings, and each reaches
    `elmanlab train` as its own flag with its value."""
    settings = train_settings()
    with pytest.raises(ElmanlabError) as e:
        load_study(write(tmp_path, "train: {steps: 3, colour: red}\nruns: [{model: e1, params: 200K}]\n"))
    assert set(str(e.value).split("allowed: ")[1].split(", ")) == set(settings)
    data = tmp_path / "text.txt"
    data.write_text("some text\n" * 100)
    sample = {bool: True, int: 64, float: 0.5, str: "cpu"}
    given = {k: sample[field_type(f)] for k, f in settings.items() if k != "minutes"}
    # values that pass `elmanlab train`'s checks together (the study checks them as it loads)
    # (a pure-bf16 run is scored with y already: --eval-train-weights with it is an error)
    given.update(data=str(data), val_data=str(data), seq_len=32, precision="bf16", weight_decay_on="all",
                 cuda_graph=False, eval_train_weights=False)
    p = write(tmp_path, f"train: {json.dumps(given)}\nruns: [{{model: e1, params: 200K}}, "
                        f"{{model: e1, params: 200K, minutes: 2, name: m}}]\n")
    a, b = load_study(p).jobs
    assert a.train == given and set(a.train) | set(b.train) == set(settings)
    from elmanlab.cli import build_parser
    for job in (a, b):
        args = build_parser().parse_args(job.argv(tmp_path / job.id))
        assert {k: getattr(args, k) for k in job.train} == job.train


@pytest.mark.parametrize("key,value,want", [
    ("lr", "3e-4", 3e-4), ("lr", 1, 1.0), ("steps", 30, 30), ("steps", 30.0, 30), ("compile", False, False),
    ("steps", 2.5, "steps must be an integer, got 2.5"), ("steps", True, "steps must be an integer"),
    ("lr", "fast", "lr must be a number, got 'fast'"), ("compile", "yes", "compile is true or false"),
    ("grad_clip", None, "grad_clip needs one value, got None"), ("seq_len", [64], "seq_len needs one value"),
])
def test_train_values_by_field_type(tmp_path, key, value, want):
    text = f"train: {{steps: 3, {key}: {json.dumps(value)}}}\nruns: [{{model: e1, params: 200K}}]\n"
    if isinstance(want, str):
        with pytest.raises(ElmanlabError, match=want):
            load_study(write(tmp_path, text))
    else:
        got = load_study(write(tmp_path, text)).jobs[0].train[key]
        assert got == want and type(got) is type(want)


def test_only_settings_that_define_a_run_name_it(tmp_path):
    """A wave's log_every or checkpoint_every does not change what the run computes: not in its id."""
    st = load_study(write(tmp_path, """
        train: {steps: 3, seed: 1}
        waves:
          - {name: a, train: {log_every: 1, checkpoint_every: 5, lr: 1e-3}, runs: [{model: e1, params: 200K}]}
        """))
    assert [j.id for j in st.jobs] == ["e1-200K-lr=0.001-s1"]
    assert st.jobs[0].train["log_every"] == 1 and "log_every" not in st.jobs[0].identity()["train"]


def test_mlp_ratio_default_keeps_ids_and_identity(tmp_path):
    """A run without mlp_ratio takes its family's default: the recurrent families keep the id and
    identity they always had (mlp_ratio 0.0, no `mlp=` in the id, no flag), the transformer gets its
    SwiGLU 8/3; a ratio other than the family's default is named in the id and passed to train."""
    from elmanlab.cli import build_parser
    from elmanlab.cli.common import model_config_from_args
    st = load_study(write(tmp_path, """
        train: {steps: 3, seed: 42}
        runs:
          - {model: e1, params: 200K}
          - {model: e1, params: 200K, mlp_ratio: 2}
          - {model: e1, params: 200K, mlp_ratio: 0}          # the first run again: merged
          - {model: transformer, params: 1M}
          - {model: transformer, params: 1M, mlp_ratio: 0, name: t-no-mlp}
          - {model: transformer, params: 1M, mlp_ratio: 4}
        """))
    ids = [j.id for j in st.jobs]
    assert ids == ["e1-200K-s42", "e1-200K-mlp=2-s42", "transformer-1M-s42", "t-no-mlp", "transformer-1M-mlp=4-s42"]
    assert len(ids) == 5
    plain, mlp2, t, t0, t4 = st.jobs
    assert plain.identity() == {"model": "e1", "params": "200K", "dim": None, "depth": None, "mlp_ratio": 0.0,
                                "tie_embeddings": False, "options": {}, "train": {"steps": 3, "seed": 42}}
    assert t.mlp_ratio == 8 / 3 and t0.mlp_ratio == 0.0 and mlp2.mlp_ratio == 2.0
    want = [(plain, None, 0.0), (mlp2, "2", 2.0), (t, None, 8 / 3), (t0, "0", 0.0), (t4, "4", 4.0)]
    for job, flag, ratio in want:
        argv = job.argv(tmp_path / job.id)
        assert (argv[argv.index("--mlp-ratio") + 1] if "--mlp-ratio" in argv else None) == flag, job.id
        args = build_parser().parse_args(argv)
        assert model_config_from_args(args).mlp_ratio == ratio, job.id
    assert t.size["state_grows"] is True and "state_grows" not in plain.size
    from elmanlab.study import plan_table
    rows = {r["run"]: r for r in plan_table(st)}
    assert rows["transformer-1M-s42"]["state/layer"].endswith("/byte")
    assert rows["e1-200K-s42"]["state/layer"] == plain.size["state_per_layer"]


@pytest.mark.parametrize("record,study_file", [
    ("docs/results/2026-11-25-h200/study.json", "studies/first-results-100m.yaml"),
    ("docs/results/2026-12-02-h200-trust-check/with-fla/study.json", "studies/trust-check-100m.yaml"),
    ("docs/results/scaling-small/study.json", "studies/scaling-small.yaml")])     # in progress: resumed from it
def test_committed_studies_keep_their_job_ids_and_identities(record, study_file):
    """The studies that ran (their study.json committed) expand to the same job ids and identities
    today, so running them again resumes instead of starting over (e.g. after mlp_ratio's default
    became the family's)."""
    from elmanlab.study.job import same_run
    root = Path(__file__).resolve().parents[1]
    rec = json.loads((root / record).read_text())
    jobs = {j.id: j for j in load_study(root / study_file, data=str(root / "README.md")).jobs}
    for r in rec["jobs"]:
        if r.get("in_study_file", True):
            assert r["id"] in jobs and same_run(r["spec_identity"], jobs[r["id"]]), r["id"]


@pytest.mark.parametrize("study_file", sorted(p.name for p in (Path(__file__).resolve().parents[1] / "studies").glob("*.yaml")))
def test_every_shipped_study_file_loads(study_file):
    """Each study file under studies/ expands into jobs (a typo in one is found here, not on a lent GPU)."""
    root = Path(__file__).resolve().parents[1]
    st = load_study(root / "studies" / study_file, data=str(root / "README.md"), val_data=str(root / "README.md"))
    assert st.jobs and len({j.id for j in st.jobs}) == len(st.jobs)


@pytest.mark.parametrize("entry,msg", [
    ("{model: e1, params: 200K, precision: fp8}", "runs[0]: --precision must be one of autocast, bf16, got 'fp8'"),
    ("{model: e1, params: 200K, dropout: 2}", "runs[0]: --dropout must be in [0, 1), got 2.0"),
    ("{model: e1, params: 200K, eval_bytes: 32, seq_len: 64}", "runs[0]: --eval-bytes must be 0"),
])
def test_bad_train_values_stop_the_study_as_it_loads(tmp_path, entry, msg):
    """A value `elmanlab train` would refuse stops the study before any run, not each run as it starts."""
    with pytest.raises(ElmanlabError) as e:
        load_study(write(tmp_path, f"train: {{steps: 3}}\nruns: [{entry}]\n"))
    assert str(e.value).startswith(msg) and "\n" not in str(e.value)
