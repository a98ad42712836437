import json
import subprocess
import sys

import pytest

from elmanlab.errors import ElmanlabError
from cli_inproc import run_main
from elmanlab.sizing import count_params, model_config, parse_count, report, solve

FAMILIES = ["e1", "e33", "e42", "e88", "mamba2", "gdn", "mingru", "minlstm", "transformer"]

# The seeds' published configurations: (model, dim, depth, options, params, tolerance)
SEEDS = [
    ("e1", 1760, 26, {}, 403e6, 0.015),
    ("e1", 3584, 6, {}, 386e6, 0.015),
    ("e1", 1312, 26, {"expansion": 1.5}, 403e6, 0.015),
    ("mamba2", 1728, 22, {"d_state": 128, "headdim": 64}, 402e6, 0.015),
    ("mingru", 2752, 24, {}, 364e6, 0.015),
    ("minlstm", 2304, 24, {}, 383e6, 0.015),
    ("e88", 1792, 38, {"n_heads": 56, "n_state": 32}, 500e6, 0.03),
]


@pytest.mark.parametrize("model,dim,depth,opts,target,tol", SEEDS)
def test_seed_configurations(model, dim, depth, opts, target, tol):
    p = count_params(model_config(model, dim=dim, depth=depth, options=opts))
    assert abs(p - target) / target <= tol, (model, p)


@pytest.mark.parametrize("model", FAMILIES)
@pytest.mark.parametrize("target", ["50M", "100M", "250M", "500M", "1B"])
def test_solver_within_two_percent(model, target):
    cfg = solve(model, target)
    t = parse_count(target)
    assert abs(count_params(cfg) - t) / t <= 0.02
    assert cfg.dim % 8 == 0


def test_solver_respects_depth_and_balance():
    cfg = solve("e1", "400M", depth=26)
    assert cfg.depth == 26 and abs(cfg.dim - 1760) <= 64
    cfg = solve("e88", "500M", depth=38, options={"n_state": 32})
    assert cfg.depth == 38
    assert abs(cfg.options.n_heads * 32 / cfg.dim - 1.0) < 0.05
    cfg = solve("e88", "100M", options={"n_state": 48, "balance": 0.5})
    assert abs(cfg.options.n_heads * 48 / cfg.dim - 0.5) < 0.1


def test_state_per_layer():
    assert report(model_config("e1", dim=1760, depth=26)).state_per_layer == 1760
    r = report(model_config("e88", dim=1792, depth=38, options={"n_heads": 56, "n_state": 32}))
    assert r.state_per_layer == 56 * 32 * 32
    r = report(model_config("mamba2", dim=1728, depth=22))
    assert r.state_per_layer == 3456 * 128 and r.n_heads == 54


@pytest.mark.parametrize("text,value", [("100M", 100_000_000), ("1.5B", 1_500_000_000), ("500k", 500_000),
                                        ("2e8", 200_000_000), ("12345", 12345)])
def test_parse_count(text, value):
    assert parse_count(text) == value


@pytest.mark.parametrize("kwargs,msg", [
    (dict(model="nope", params="1M"), "unknown model"),
    (dict(model="e1", params="100M", options={"n_state": 32}), "has no option n_state"),
    (dict(model="e88", params="100M", options={"n_state": 20}), "n_state 20 is not supported"),
    (dict(model="e1", params="100"), "too small"),
    (dict(model="e1", params="1M", dim=64), "exactly one"),
    (dict(model="mamba2", dim=100, depth=2), "multiple of headdim"),
    (dict(model="transformer", dim=100, depth=2), "transformer dim 100 is not a multiple of head_dim 64"),
    (dict(model="e88", params="100M", options={"gate_activation": "relu"}), "must be one of"),
])
def test_bad_input_is_one_clear_error(kwargs, msg):
    with pytest.raises(ElmanlabError, match=msg):
        model_config(**kwargs)


def run_cli(*args):
    return run_main(*args)


def test_cli_size_json():
    # the one real process: `python3 -m elmanlab` as a user runs it
    r = subprocess.run([sys.executable, "-m", "elmanlab", "size", "e1", "--dim", "1760", "--depth", "26", "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert abs(d["params"] - 403e6) / 403e6 < 0.015
    assert {"params", "dim", "depth", "state_per_layer"} <= set(d)


def test_cli_size_every_family_at_1b():
    for m in FAMILIES:
        r = run_cli("size", m, "--params", "1B", "--json")
        assert r.returncode == 0, r.stderr
        assert abs(json.loads(r.stdout)["params"] - 1e9) / 1e9 <= 0.02


@pytest.mark.parametrize("args,msg", [
    (("size", "foo", "--params", "1M"), "unknown model"),
    (("size", "e1", "--params", "100M", "--n-state", "32"), "has no option n_state"),
    (("size", "e88", "--params", "100M", "--n-state", "7"), "not supported"),
    (("size", "e1", "--params", "10"), "too small"),
    (("size", "e1", "--params", "abc"), "cannot read parameter count"),
    (("size", "transformer", "--dim", "100", "--depth", "2"), "transformer dim 100 is not a multiple of head_dim 64"),
    (("size", "transformer", "--params", "10M", "--head-dim", "7"), "head_dim must be an integer >= 8"),
])
def test_cli_errors_are_one_line(args, msg):
    r = run_cli(*args)
    assert r.returncode == 2
    assert r.stderr.startswith("error:") and msg in r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_cli_models_lists_every_family():
    r = run_cli("models", "--json")
    assert r.returncode == 0
    names = [m["model"] for m in json.loads(r.stdout)]
    assert names == FAMILIES


# Bad option values, found when tried as a new user would (issue 16, item 6): each is one line
# from the family's option validation (resolve), which sizing, training and study validation share.
BAD_OPTIONS = [  # model, CLI flag, study key, value, what the message names
    ("mamba2", "--headdim", "headdim", 0, "headdim must be an integer >= 1"),
    ("mamba2", "--ngroups", "ngroups", 0, "ngroups must be an integer >= 1"),
    ("mamba2", "--d-state", "d_state", -1, "d_state must be an integer >= 1"),
    ("mamba2", "--chunk-size", "chunk_size", 0, "chunk_size must be an integer >= 1"),
    ("mamba2", "--expand", "expand", 0, "expand must be an integer >= 1"),
    ("mamba2", "--d-conv", "d_conv", 1, "d_conv must be an integer >= 2"),
    ("mamba2", "--headdim", "headdim", 48, "must be a multiple of headdim 48"),
    ("gdn", "--head-dim", "head_dim", 0, "head_dim must be an integer >= 1"),
    ("gdn", "--expand-v", "expand_v", 0, "expand_v must be a number > 0"),
    ("gdn", "--expand-v", "expand_v", 0.3, "head_dim * expand_v must be a positive integer"),
    ("gdn", "--conv-size", "conv_size", 1, "conv_size must be an integer >= 2"),
    ("gdn", "--n-heads", "n_heads", 0, "n_heads must be an integer >= 1"),
    ("e88", "--n-heads", "n_heads", -2, "n_heads must be an integer >= 1"),
    ("e88", "--balance", "balance", 0, "balance must be a number > 0"),
    ("e88", "--expansion", "expansion", -1, "expansion must be a number > 0"),
    ("e88", "--conv-size", "conv_size", 0, "conv_size must be an integer >= 2"),
    ("e1", "--expansion", "expansion", 0, "expansion must be a number > 0"),
    ("e1", "--expansion", "expansion", "inf", "expansion must be a number > 0, got inf"),
    ("e33", "--w-h-scale", "w_h_scale", 1.5, "w_h_scale must be a number in (0, 1]"),
    ("e42", "--spectral-radius", "spectral_radius", 0, "spectral_radius must be a number in (0, 1]"),
    ("e42", "--expansion", "expansion", -0.5, "expansion must be a number > 0"),
    ("mingru", "--expansion", "expansion", 0, "expansion must be a number > 0"),
    ("minlstm", "--expansion", "expansion", "nan", "expansion must be a number > 0"),
    ("transformer", "--head-dim", "head_dim", 7, "head_dim must be an integer >= 8"),
    ("transformer", "--head-dim", "head_dim", 9, "head_dim must be even (RoPE rotates pairs), got 9"),
    ("transformer", "--n-heads", "n_heads", 0, "n_heads must be an integer >= 1"),
    ("transformer", "--rope-base", "rope_base", 0, "rope_base must be a number > 1"),
]
BAD_IDS = [f"{m}{flag}={v}" for m, flag, _, v, _ in BAD_OPTIONS]


@pytest.mark.parametrize("model,flag,key,value,msg", BAD_OPTIONS[:4], ids=BAD_IDS[:4])
def test_cli_size_bad_option_is_one_line(model, flag, key, value, msg):
    """The issue's cases, as a new user runs them (before: ZeroDivisionError tracebacks, a negative
    state size, a chunk size of 0 that failed only at step 0)."""
    r = run_cli("size", model, "--params", "100M", flag, str(value))
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("error:") and msg in r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


@pytest.mark.parametrize("model,flag,key,value,msg", BAD_OPTIONS, ids=BAD_IDS)
def test_every_bad_option_is_one_error_before_anything_runs(tmp_path, capsys, model, flag, key, value, msg):
    """The CLI entry point (in-process: the same code as ``python3 -m elmanlab``), both ways of
    sizing, and a study file naming the option: one ``error:`` line / one-line ElmanlabError."""
    from elmanlab.cli import main
    from elmanlab.study import load_study
    for size in (["--params", "100M"], ["--dim", "256", "--depth", "2"]):
        with pytest.raises(SystemExit) as e:
            main(["size", model, *size, flag, str(value)])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith("error:") and msg in err and err.count("\n") == 1, err
    study = tmp_path / "s.yaml"
    study.write_text(f"train: {{steps: 3}}\nruns:\n  - {{model: {model}, params: 200K, {key}: {value}}}\n")
    with pytest.raises(ElmanlabError) as e:
        load_study(study)
    assert msg in str(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------------- the transformer

@pytest.mark.parametrize("target,depth_range", [("10M", (4, 10)), ("50M", (8, 12)), ("100M", (12, 18)),
                                                ("400M", (20, 28))])
def test_transformer_sizes_like_a_gpt(target, depth_range):
    """Widths a multiple of 64 (whole 64-wide heads), GPT-like depths, within 2%, the SwiGLU MLP in."""
    cfg = solve("transformer", target)
    t = parse_count(target)
    assert abs(count_params(cfg) - t) / t <= 0.02
    assert cfg.dim % 64 == 0 and cfg.options.n_heads == cfg.dim // 64
    assert depth_range[0] <= cfg.depth <= depth_range[1], (cfg.dim, cfg.depth)
    assert cfg.mlp_ratio == 8 / 3
    no_mlp = solve("transformer", target, mlp_ratio=0)
    assert no_mlp.mlp_ratio == 0 and no_mlp.dim > cfg.dim


def test_transformer_param_formula_and_state():
    from elmanlab.lm import LM, mlp_hidden
    cfg = model_config("transformer", dim=320, depth=3)
    assert LM(cfg).num_params() == count_params(cfg)
    H = 5
    per_layer = 4 * 320 * H * 64 + 3 * 320 * mlp_hidden(cfg) + 2 * 320
    assert count_params(cfg) == 2 * 256 * 320 + 3 * per_layer + 320
    r = report(cfg)
    assert r.state_grows and r.state_per_layer == 2 * H * 64 and r.state_total == 3 * 2 * H * 64
    assert r.state_text() == "640 values per byte of context (KV cache; 327,680 at seq_len 512)"
    assert not report(model_config("e1", dim=64, depth=2)).state_grows
    assert report(model_config("e1", dim=64, depth=2)).state_text() == "64 values"


def test_train_flops_per_token():
    from elmanlab.sizing import train_flops_per_token
    cfg = model_config("transformer", dim=768, depth=12)
    assert train_flops_per_token(cfg, 1024) == 6 * count_params(cfg) + 12 * 12 * 768 * 1024
    gqa = model_config("transformer", dim=768, depth=12, options={"n_heads": 4, "head_dim": 128})
    assert train_flops_per_token(gqa, 512) == 6 * count_params(gqa) + 12 * 12 * 512 * 512
    e1 = model_config("e1", dim=256, depth=4)
    assert train_flops_per_token(e1, 512) == 6 * count_params(e1)


def test_cli_size_and_models_say_the_kv_cache_grows():
    r = run_cli("size", "transformer", "--dim", "1024", "--depth", "24")
    assert r.returncode == 0, r.stderr
    assert "state per layer    2,048 values per byte of context (KV cache; 1,048,576 at seq_len 512)" in r.stdout
    assert "SwiGLU, hidden 2752" in r.stdout         # round(8/3 x 1024) = 2731, up to a multiple of 32
    d = json.loads(run_cli("size", "transformer", "--params", "100M", "--json").stdout)
    assert d["state_grows"] is True and d["mlp_ratio"] == 8 / 3 and d["dim"] % 64 == 0
    assert json.loads(run_cli("size", "e1", "--params", "100M", "--json").stdout)["state_grows"] is False
    rows = {m["model"]: m for m in json.loads(run_cli("models", "--json").stdout)}
    assert rows["transformer"]["state_grows"] is True and rows["transformer"]["default_mlp_ratio"] == 8 / 3
    assert rows["e1"]["state_grows"] is False and rows["e1"]["default_mlp_ratio"] == 0
    text = run_cli("models").stdout
    assert "a KV cache that grows with the context" in text
