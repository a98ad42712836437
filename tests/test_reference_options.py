"""ekg/elman's choices as options (docs/reference/ekg-elman-differences.md): the defaults are bit for
bit what they were, the reference init gives the reference's distributions, the reference wrapper
gives the reference's parameter counts to the unit, bad values are one-line errors, and the study
file of issue 19 expands to the runs it describes."""
import hashlib
import math
from pathlib import Path

import pytest
import torch

from elmanlab.config import ModelConfig
from elmanlab.errors import ElmanlabError
from elmanlab.lm import LM
from elmanlab.sizing import count_params

ROOT = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------- defaults: bit for bit as before

# LM(cfg) after torch.manual_seed(1234), as the code before these options built it (computed with that
# code, commit caedd5c): sha256 over the state dict's tensors made by QR (orthogonal W_h / W) and over all
# the others, and the next torch.randn(1) (the random stream is left where it was).
QR = ("W_h", "W_h_param.weight", "layer.W.weight")
GOLDEN = [
    ("e1", 32, 3, {}, None, False, "90de94ece2e153f32050", "d684c2fd506597fa869d", 1.7111798524856567),
    ("e1", 24, 2, {"expansion": 1.5, "spectral_norm": True}, None, False, "70f7af4ddcde9a1a4342",
     "ecf79a230c12b08403cc", -0.6877185106277466),
    ("e1", 32, 2, {}, 2.0, True, "5fe3f1cc8b2eeda6ffd3", "6e263adf908034dc46fa", 1.2206858396530151),
    ("e33", 32, 2, {}, None, False, "cc5e0da418441bba2990", "bfaefd81db068d237f7a", 0.5575958490371704),
    ("e42", 32, 2, {"expansion": 0.75}, None, False, "c88babd6aa622b0b64ae", "40d303401663bbe44a69",
     1.7926912307739258),
    ("mamba2", 32, 2, {"d_state": 8, "headdim": 16, "chunk_size": 8}, None, False, "9574876858c07dd90b76",
     None, -0.6342586278915405),
    ("mingru", 32, 2, {"expansion": 2.0}, None, False, "8c29843ddc7682d86d22", None, -0.42160487174987793),
    ("minlstm", 32, 2, {}, None, False, "554b380c016e2b6e273c", None, -1.0793999433517456),
]
# orthogonal_ goes through LAPACK's QR, whose last bits may differ between builds: its tensors are
# compared bitwise only where this canary (orthogonal_ of a seeded 24 x 24) matches the machine the
# digests came from; everything else (and the random stream) is compared everywhere
QR_CANARY = "fc6805b3670835b5623b"


def _digests(lm):
    plain, qr = hashlib.sha256(), hashlib.sha256()
    for name, t in sorted(lm.state_dict().items()):
        h = qr if name.endswith(QR) else plain
        h.update(name.encode())
        h.update(t.detach().contiguous().numpy().tobytes())
    return plain.hexdigest()[:20], qr.hexdigest()[:20]


@pytest.fixture
def two_threads():
    """The digests were taken with two threads (conftest's default); LAPACK's QR of the wider matrices
    gives other last bits with one (as under pytest-xdist's workers)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _same_lapack() -> bool:
    torch.manual_seed(7)
    w = torch.empty(24, 24)
    torch.nn.init.orthogonal_(w)
    return hashlib.sha256(w.numpy().tobytes()).hexdigest()[:20] == QR_CANARY


@pytest.mark.parametrize("model,dim,depth,opts,mlp,tie,plain,qr,after", GOLDEN,
                         ids=[f"{g[0]}-{i}" for i, g in enumerate(GOLDEN)])
def test_defaults_build_the_same_parameters_as_before(model, dim, depth, opts, mlp, tie, plain, qr, after,
                                                     two_threads):
    for explicit in ({}, {"init": "default"}):
        if explicit and model in ("e1", "e33", "e42"):
            explicit = {"init": "default", "spectral_mode": "bound"}
        torch.manual_seed(1234)
        lm = LM(ModelConfig(model, dim, depth, {**opts, **explicit}, mlp_ratio=mlp, tie_embeddings=tie,
                            **({"norm": "rms"} if explicit else {})))
        got_plain, got_qr = _digests(lm)
        assert got_plain == plain
        assert torch.randn(1).item() == after
        if qr is not None and _same_lapack():
            assert got_qr == qr


def test_old_configs_read_with_the_defaults():
    """A config.json written before these options (no init, spectral_mode or norm) rebuilds the same model."""
    old = {"model": "e1", "dim": 32, "depth": 2, "mlp_ratio": 0.0, "tie_embeddings": False,
           "options": {"expansion": 1.0, "spectral_norm": False, "w_h_scale": 0.9}}
    cfg = ModelConfig.from_dict(old)
    assert cfg.norm == "rms" and cfg.options.init == "default" and cfg.options.spectral_mode == "bound"
    assert cfg.to_dict()["norm"] == "rms" and ModelConfig.from_dict(cfg.to_dict()) == cfg


# ---------------------------------------------------------------- the reference init's distributions

def _uniform_on(w: torch.Tensor, bound: float) -> None:
    """w looks like U(-bound, bound): inside it, std bound / sqrt(3), half the mass within bound / 2."""
    w = w.detach().double().flatten()
    assert w.abs().max() <= bound * (1 + 1e-6)
    assert abs(w.std().item() / (bound / math.sqrt(3)) - 1) < 0.03
    assert abs((w.abs() < bound / 2).double().mean().item() - 0.5) < 0.02


def _xavier_bound(w: torch.Tensor, gain: float = 1.0) -> float:
    fan_out, fan_in = w.shape
    return gain * math.sqrt(6.0 / (fan_in + fan_out))


@pytest.mark.parametrize("expansion", [1.0, 2.0])
def test_e1_reference_init_is_xavier_with_the_wrappers_w_h_gain(expansion):
    torch.manual_seed(0)
    dim, depth = 160, 4
    lm = LM(ModelConfig("e1", dim, depth, {"init": "reference", "expansion": expansion}))
    layer = lm.blocks[1].layer
    di = int(dim * expansion)
    for w in (layer.in_proj.weight, layer.W_x.weight, layer.out_proj.weight):
        _uniform_on(w, _xavier_bound(w))
    assert layer.out_proj.weight.shape == (dim, di)             # kept: not rescaled with depth by the LM
    _uniform_on(layer.W_h, 0.1 * math.sqrt(6.0 / (2 * di)))     # xavier-uniform, gain 0.1
    assert torch.count_nonzero(layer.b) == 0
    # the default, for contrast: out_proj N(0, 0.02 / sqrt(2 depth)), W_h orthogonal x 0.9
    torch.manual_seed(0)
    d = LM(ModelConfig("e1", dim, depth, {"expansion": expansion})).blocks[1].layer
    assert abs(d.out_proj.weight.std().item() / (0.02 / math.sqrt(2 * depth)) - 1) < 0.05
    sv = torch.linalg.svdvals(d.W_h.detach())
    torch.testing.assert_close(sv, torch.full_like(sv, 0.9))


@pytest.mark.parametrize("model", ["e1", "e33"])
def test_fixed_spectral_norm_sets_the_norm_to_0_99(model):
    """spectral_mode fixed: W_h x 0.99 / sigma, the reference's, whatever W_h's own scale (xavier gain
    0.1 gives sigma about 0.2): ||W_h|| = 0.99 before training (also in eval mode), after training
    forwards, and after W_h was scaled up or down, where the bound would only clip it from above."""
    torch.manual_seed(0)
    lm = LM(ModelConfig(model, 96, 2, {"init": "reference", "spectral_norm": True, "spectral_mode": "fixed"}))
    sn = lm.blocks[0].layer.W_h_param
    assert sn.mode == "fixed" and sn.power_iters == 3
    _uniform_on(sn.weight, 0.1 * math.sqrt(6.0 / (2 * 96)))
    assert torch.linalg.matrix_norm(sn.weight.detach(), ord=2) < 0.3
    sigma = lambda: torch.linalg.matrix_norm(sn().detach(), ord=2).item()  # noqa: E731
    lm.eval()
    assert abs(sigma() - 0.99) < 0.01
    lm.train()
    for scale in (1.0, 5.0, 0.2):
        with torch.no_grad():
            sn.weight.mul_(scale)
        for _ in range(20):
            s = sigma()
        assert abs(s - 0.99) < 0.01, (scale, s)
    # the bound leaves a small W_h alone
    torch.manual_seed(0)
    lm = LM(ModelConfig(model, 96, 2, {"init": "reference", "spectral_norm": True})).train()
    sn = lm.blocks[0].layer.W_h_param
    assert sn.mode == "bound" and torch.linalg.matrix_norm(sn().detach(), ord=2) < 0.3


def test_e42_reference_init_and_fixed_radius():
    torch.manual_seed(0)
    lm = LM(ModelConfig("e42", 96, 2, {"init": "reference", "spectral_mode": "fixed", "spectral_radius": 0.9}))
    layer = lm.blocks[0].layer
    for w in (layer.in_proj.weight, layer.out_proj.weight):
        _uniform_on(w, _xavier_bound(w))
    _uniform_on(layer.W.weight, 0.1 * math.sqrt(6.0 / (2 * 96)))
    assert abs(torch.linalg.matrix_norm(layer.W().detach(), ord=2).item() - 0.9) < 0.01


def test_mamba2_reference_init_is_mamba_ssms_module():
    """out_proj keeps PyTorch's Linear init, U(-1/sqrt(d_inner), 1/sqrt(d_inner)), instead of the
    depth-scaled normal; the conv bias is nn.Conv1d's U(-1/sqrt(K), 1/sqrt(K)) instead of zero."""
    opts = {"d_state": 16, "headdim": 32}
    torch.manual_seed(0)
    layer = LM(ModelConfig("mamba2", 128, 4, {**opts, "init": "reference"})).blocks[1].layer
    _uniform_on(layer.out_proj.weight, 1 / math.sqrt(256))
    b = layer.conv.bias.detach()
    assert b.abs().max() <= 0.5 and b.std() > 0.2
    torch.manual_seed(0)
    d = LM(ModelConfig("mamba2", 128, 4, opts)).blocks[1].layer
    assert torch.count_nonzero(d.conv.bias) == 0
    assert abs(d.out_proj.weight.std().item() / (0.02 / math.sqrt(8)) - 1) < 0.05


@pytest.mark.parametrize("model,n", [("mingru", 2), ("minlstm", 3)])
def test_minrnn_reference_init_is_xavier(model, n):
    torch.manual_seed(0)
    layer = LM(ModelConfig(model, 128, 4, {"init": "reference", "expansion": 1.5})).blocks[0].layer
    assert layer.proj.weight.shape == (n * 192, 128)
    _uniform_on(layer.proj.weight, _xavier_bound(layer.proj.weight))
    _uniform_on(layer.out_proj.weight, _xavier_bound(layer.out_proj.weight))


# ---------------------------------------------------------------- the reference wrapper

# ekg/elman's logged counts (same_steps_sf/*.log, e1_expansion_400m/*.log): tied head, LayerNorm
REFERENCE_COUNTS = [
    ("mamba2", 1728, 22, {"d_state": 64}, 402_064_492),
    ("e1", 1760, 26, {}, 403_279_360),
    ("e1", 1984, 20, {}, 394_256_512),
    ("e1", 2208, 16, {}, 390_696_768),
    ("e1", 2560, 12, {}, 393_968_640),
    ("e1", 3584, 6, {}, 386_340_864),
    ("minlstm", 2304, 24, {}, 382_910_976),
    ("mingru", 2752, 24, {}, 364_370_304),
    ("e1", 1312, 26, {"expansion": 1.5}, 403_252_384),
    ("e1", 1056, 26, {"expansion": 2.0}, 406_291_776),
    ("e1", 880, 26, {"expansion": 2.5}, 403_018_000),
]


@pytest.mark.parametrize("model,dim,depth,opts,count", REFERENCE_COUNTS)
def test_the_reference_wrapper_gives_the_reference_counts(model, dim, depth, opts, count):
    ref = ModelConfig(model, dim, depth, dict(opts), tie_embeddings=True, norm="layer")
    assert count_params(ref) == count
    # this lab's wrapper: + an untied head, - the LayerNorm biases
    lab = ModelConfig(model, dim, depth, dict(opts))
    assert count_params(lab) == count + 256 * dim - (depth + 1) * dim


def test_layer_norm_wrapper_builds_layernorms():
    torch.manual_seed(0)
    lm = LM(ModelConfig("e1", 32, 2, {}, mlp_ratio=2.0, norm="layer", tie_embeddings=True))
    norms = [lm.norm] + [m for b in lm.blocks for m in (b.norm, b.mlp_norm)]
    assert all(isinstance(m, torch.nn.LayerNorm) and m.bias is not None and m.eps == 1e-5 for m in norms)
    assert lm.head is None
    x = torch.randint(0, 256, (2, 9))
    _, loss = lm(x[:, :-1], x[:, 1:])
    loss.backward()
    assert lm.norm.bias.grad is not None and torch.isfinite(loss)


# ---------------------------------------------------------------- bad values: one line each

@pytest.mark.parametrize("model,opts,kw,msg", [
    ("e1", {"init": "xavier"}, {}, "e1 option init must be one of default, reference, got 'xavier'"),
    ("e33", {"spectral_mode": "exact"}, {}, "e33 option spectral_mode must be one of bound, fixed, got 'exact'"),
    ("e42", {"init": "orthogonal"}, {}, "e42 option init must be one of default, reference"),
    ("mamba2", {"init": "mamba"}, {}, "mamba2 option init must be one of default, reference"),
    ("mingru", {"init": 1}, {}, "mingru option init must be one of default, reference"),
    ("e1", {}, {"norm": "batch"}, "norm must be one of rms, layer, got 'batch'"),
])
def test_bad_values_are_one_line_errors(model, opts, kw, msg):
    with pytest.raises(ElmanlabError) as e:
        ModelConfig(model, 64, 2, opts, **kw)
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_options_built_directly_are_checked_too():
    from elmanlab.layers import E1
    from elmanlab.layers.elman import ElmanOptions
    with pytest.raises(ElmanlabError, match="e1 option spectral_mode must be one of bound, fixed"):
        E1.resolve(64, ElmanOptions(spectral_mode="Fixed"))


def test_the_sizing_solver_takes_the_norm():
    from elmanlab.sizing import model_config
    a = model_config("e1", params="10M", depth=4)
    b = model_config("e1", params="10M", depth=4, norm="layer", tie_embeddings=True)
    assert b.norm == "layer" and b.tie_embeddings and abs(count_params(b) / 10e6 - 1) < 0.02
    assert a.norm == "rms"
    with pytest.raises(ElmanlabError, match="norm must be one of rms, layer"):
        model_config("e1", params="10M", norm="LN")


# ---------------------------------------------------------------- the study of issue 19

TABLE = [  # model, dim, depth, expansion, the reference's loss (for the record)
    ("mamba2", 1728, 22, None, 1.50), ("e1", 1760, 26, 1.0, 1.59), ("e1", 1984, 20, 1.0, 1.59),
    ("e1", 2208, 16, 1.0, 1.60), ("e1", 2560, 12, 1.0, 1.62), ("e1", 3584, 6, 1.0, 1.69),
    ("minlstm", 2304, 24, None, 1.75), ("mingru", 2752, 24, None, 1.78), ("e1", 1312, 26, 1.5, 1.56),
    ("e1", 1056, 26, 2.0, 1.54), ("e1", 880, 26, 2.5, 1.54),
]


def _load(name):
    from elmanlab.study.spec import load_study
    return load_study(ROOT / "studies" / name)


def test_reference_study_expands_to_the_table_the_reference_and_the_ablations():
    study = _load("reference-400m.yaml")
    jobs = study.jobs
    waves = {}
    for j in jobs:
        waves.setdefault(j.wave, []).append(j)
    assert {w: len(v) for w, v in waves.items()} == {"table": 15, "reference": 9, "ablation": 8, "stability": 3,
                                                       "precision": 3}
    assert study.baseline == "mamba2"
    base = {"steps": 1500, "batch_size": 16, "seq_len": 512, "lr": 3e-4, "weight_decay": 0.1, "eval_every": 750,
            "eval_bytes": 2_000_000}
    for j in jobs:                                          # the reference's settings, stated once
        if j.wave not in ("stability", "precision"):
            assert j.train == {**base, "seed": j.train["seed"]}
    # the precision wave: the reference's pure bf16, one setting changed, on Mamba2, minGRU, fixed-norm E1
    for j in waves["precision"]:
        assert j.train == {**base, "seed": 42, "precision": "bf16"}
    assert [j.model for j in waves["precision"]] == ["mamba2", "mingru", "e1"]
    # the stability wave: E1 depth 26 with this lab's defaults and one training setting changed
    changed = []
    for j in waves["stability"]:
        assert (j.model, j.dim, j.depth, j.train["seed"]) == ("e1", 1760, 26, 42) and not j.options
        assert j.norm == "rms" and not j.tie_embeddings
        diff = {k: v for k, v in j.train.items() if k != "seed" and base.get(k) != v}
        assert len(diff) == 1 and all(base[k] == j.train[k] for k in base if k not in diff)
        changed.append(diff)
    assert changed == [{"lr": 1.5e-4}, {"grad_clip": 1.0}, {"warmup_steps": 200}]
    assert sorted(j.id for j in jobs if j.train["seed"] == 43) == [
        "e1-d1056x26-expansion=2-s43", "e1-d1056x26-expansion=2-spectral_norm=true-spectral_mode=fixed-s43",
        "e1-d1760x26-s43", "e1-d1760x26-spectral_norm=true-spectral_mode=fixed-s43",
        "mamba2-d1728x22-d_state=64-s43"]
    # every row of the table, at its dim and depth, once with seed 42 and this lab's defaults
    table = [j for j in waves["table"] if j.train["seed"] == 42]
    for model, dim, depth, exp, _ in TABLE:
        hit = [j for j in table if (j.model, j.dim, j.depth) == (model, dim, depth)
               and (exp is None or j.options.get("expansion", 1.0) == exp)]
        assert hit, (model, dim, depth)
        assert all(j.norm == "rms" and not j.tie_embeddings for j in hit)
        assert all(not {"init", "spectral_norm", "spectral_mode"} & set(j.options) for j in hit)
    mamba = sorted(j.options.get("d_state", 128) for j in table if j.model == "mamba2")
    assert mamba == [64, 128]
    # the reference wave: the reference's layers and wrapper, and its parameter counts to the unit
    counts = {(m, d, L, o.get("expansion", 1.0)): c for m, d, L, o, c in REFERENCE_COUNTS}
    for j in waves["reference"]:
        assert j.norm == "layer" and j.tie_embeddings and j.options["init"] == "reference"
        if j.model == "e1":
            assert j.options["spectral_norm"] is True and j.options["spectral_mode"] == "fixed"
        assert j.size["params"] == counts[(j.model, j.dim, j.depth, j.options.get("expansion", 1.0))]
        assert "--norm" in j.argv("x") and "--tie-embeddings" in j.argv("x")
    assert {(j.dim, j.depth) for j in waves["reference"] if j.model == "e1"} == {
        (1760, 26), (1984, 20), (2208, 16), (2560, 12), (3584, 6), (1056, 26)}
    # the ablation: one reference choice at a time, in this lab's wrapper
    abl = {(j.dim, tuple(sorted(j.options.items()))) for j in waves["ablation"]}
    assert len(abl) == 6 and all(j.norm == "rms" and not j.tie_embeddings for j in waves["ablation"])
    assert sorted(j.train["seed"] for j in waves["ablation"]) == [42, 42, 42, 42, 42, 42, 43, 43]


def test_reference_study_never_pools_different_configurations():
    """The report pools runs by model, dim, depth, options and train settings but the seed (its
    configuration key), not by norm or tie_embeddings: every configuration of the study must differ in
    those, so that only the seed-43 repeats pool, with their seed-42 runs."""
    study = _load("reference-400m.yaml")
    keys = {}
    for j in study.jobs:
        key = repr((j.model, j.dim, j.depth, sorted(j.options.items()),
                    sorted((k, v) for k, v in j.train.items() if k != "seed")))
        keys.setdefault(key, []).append(j)
    pooled = [sorted(j.train["seed"] for j in js) for js in keys.values() if len(js) > 1]
    assert pooled == [[42, 43]] * 5
    for js in keys.values():
        assert len({(j.norm, j.tie_embeddings) for j in js}) == 1


def test_reference_speed_study_has_every_configuration_once():
    speed = _load("reference-400m-speed.yaml").jobs
    main = _load("reference-400m.yaml").jobs
    shape = lambda j: (j.model, j.dim, j.depth, j.options.get("expansion"), j.options.get("d_state"))  # noqa: E731
    assert {shape(j) for j in main if j.wave == "table"} == {shape(j) for j in speed if j.wave is None
                                                              and j.norm == "rms"}
    assert len(speed) == 13 and all(j.train["steps"] == 100 and j.train["eval_bytes"] == 0 for j in speed)


def test_norm_in_a_study_entry_is_checked_and_kept_out_of_old_identities(tmp_path):
    from elmanlab.study.job import same_run
    from elmanlab.study.spec import load_study
    f = tmp_path / "s.yaml"
    f.write_text("name: t\ntrain: {steps: 3}\nruns:\n  - {model: e1, dim: 32, depth: 2}\n"
                 "  - {model: e1, dim: 32, depth: 2, norm: layer, tie_embeddings: true}\n")
    a, b = load_study(f).jobs
    assert a.id == "e1-d32x2" and "norm" not in a.identity() and "--norm" not in a.argv("x")
    assert b.id == "e1-d32x2-tied-norm=layer" and b.identity()["norm"] == "layer"
    assert b.argv("x")[b.argv("x").index("--norm") + 1] == "layer"
    recorded = {k: v for k, v in a.identity().items()}          # as study.json recorded it before `norm`
    assert same_run(recorded, a) and not same_run(recorded, b)
    f.write_text("name: t\ntrain: {steps: 3}\nruns:\n  - {model: e1, dim: 32, depth: 2, norm: LayerNorm}\n")
    with pytest.raises(ElmanlabError) as e:
        load_study(f)
    assert "norm must be one of rms, layer, got 'LayerNorm'" in str(e.value) and "runs[0]" in str(e.value)
