"""The report's scaling fits (elmanlab.report.fit): L(x) = E + A x^-alpha per family at equal tokens,
bootstrap intervals, crossings, predictions, L(C) against training FLOPs, refusals, failed runs, and
`elmanlab report --fit` end to end.

The runs are synthetic run folders (``make_run``) whose last-100 loss is set from known constants
plus seeded noise: two families whose curves cross at a known size (a shallow one, "e1", ahead
below 80M, and a steep one, "mamba2", ahead above), five sizes from 20M to 400M, two seeds each.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from elmanlab.errors import ElmanlabError
from elmanlab.report import Report
from test_report import _study, make_run

B = 300                                   # refits per family here (the report's default is 1000)
SIZES = {"20M": 20e6, "50M": 50e6, "100M": 100e6, "200M": 200e6, "400M": 400e6}
CROSS = 80e6                              # where the two true curves cross


def law(c, n):
    return c[0] + c[1] * n ** -c[2]


SHALLOW = (1.10, 6.34, 0.15)                                      # e1: E, A, alpha
STEEP = (0.90, (law(SHALLOW, CROSS) - 0.90) * CROSS ** 0.40, 0.40)   # mamba2: crosses e1 at CROSS
TOKENS = 300 * 4 * 64                     # make_run's default budget: 300 steps of 4 x 64 bytes


def run(root, rid, model, n, loss, *, seed=42, target=None, fpt=None, steps=300, status="completed",
        error=None):
    """A run folder with last-100 loss ``loss`` (and val bpb ``loss / ln 2 + 0.1``)."""
    make_run(root, rid, model, int(n), 64, 4, seed=seed, steps=steps, status=status, error=error,
             val_bpb=loss / math.log(2) + 0.1)
    p = root / rid / "summary.json"
    s = json.loads(p.read_text())
    s.update(loss_last100=loss, target=target)
    if fpt is not None:
        s["flops_per_token"] = fpt
    p.write_text(json.dumps(s))


def scaling_study(tmp_path, *, noise=0.005, name="scaling", sizes=SIZES, seeds=(42, 43), extra=True):
    """e1 (no flops_per_token in its records) and mamba2 (flops_per_token 6.6 x params) at ``sizes``
    with ``seeds``; with ``extra``, e88 at two sizes and a failed e1 run whose loss would wreck the fit."""
    root = tmp_path / name
    root.mkdir()
    rng = np.random.default_rng(7)
    for t, n in sizes.items():
        for s in seeds:
            run(root, f"e1-{t}-s{s}", "e1", n * 1.003, law(SHALLOW, n) + noise * rng.standard_normal(),
                seed=s, target=t)
            run(root, f"mamba2-{t}-s{s}", "mamba2", n * 0.996, law(STEEP, n) + noise * rng.standard_normal(),
                seed=s, target=t, fpt=6.6 * n * 0.996)
    if extra:
        run(root, "e88-20M-s42", "e88", 20e6, 1.70, target="20M")
        run(root, "e88-400M-s42", "e88", 400e6, 1.30, target="400M")
        run(root, "e1-100M-bad", "e1", 100e6, 9.0, target="100M", status="stopped_nonfinite",
            error="loss was not finite for 10 steps in a row")
    return root


def fam(fs, label):
    return next(f for f in fs.fits if f.label == label)


def test_fit_recovers_known_constants_and_crossing_within_intervals(tmp_path):
    rep = Report(scaling_study(tmp_path), fit=True, bootstrap=B)
    fits = rep.fits()
    (g,) = fits.groups
    assert g.tokens == TOKENS
    fs = g.params
    for label, true in (("e1", SHALLOW), ("mamba2", STEEP)):
        f = fam(fs, label)
        assert f.n == 10 and len(f.sizes) == 5 and f.dof == 7
        for k, v in zip(("E", "A", "alpha"), true):
            lo, hi = f.interval(k)
            assert lo <= v <= hi, (label, k, v, lo, hi)
        assert f.rms < 0.01 and f.r2 > 0.99
        assert f.seed_sd() is not None
    (c,) = fs.crossings
    assert (c.a, c.b) == ("e1", "mamba2")            # the baseline (mamba2) second
    (root,) = c.roots
    lo, hi = root["interval"]
    assert lo <= CROSS <= hi and root["verdict"] == "decided" and c.frac >= 0.8
    assert root["ahead_below"] == "e1" and root["ahead_above"] == "mamba2"
    # the failed run is left out (its loss of 9 would wreck e1's fit) and listed
    assert ("e1-100M-bad", "stopped_nonfinite: loss was not finite for 10 steps in a row") in fits.left_out
    assert all(p.run != "e1-100M-bad" for f in fs.fits for p in f.points)
    md = rep.markdown([])
    sec = md.split("## Scaling fits")[1]
    assert "### L(N): loss last-100 vs parameters at 76.8K tokens" in sec
    assert "### L(C): loss last-100 vs training FLOPs" in sec
    assert "Left out of the fits: e1-100M-bad (stopped_nonfinite" in sec
    assert "| e1 vs mamba2 | 7" in sec and "decided" in sec


def test_noiseless_runs_give_the_constants_and_the_crossing():
    from elmanlab.report.fit import Point, crossing, fit_family
    pts = {c: [Point(f"{n}", n, law(c, n), n) for n in SIZES.values()] for c in (SHALLOW, STEEP)}
    fa, fb = fit_family("a", "e1", pts[SHALLOW], B=60), fit_family("b", "mamba2", pts[STEEP], B=60)
    for f, (E, A, alpha) in ((fa, SHALLOW), (fb, STEEP)):
        assert f.E == pytest.approx(E, rel=1e-3) and f.alpha == pytest.approx(alpha, rel=1e-3)
        assert f.A == pytest.approx(A, rel=1e-2) and f.rms < 1e-5 and f.bounds() == []
    (root,) = crossing(fa, fb).roots
    assert root["x"] == pytest.approx(CROSS, rel=1e-3)


def test_refuses_two_sizes_and_says_why(tmp_path):
    # inside a fitted study: e88 ran at two sizes
    fs = Report(scaling_study(tmp_path), fit=True, bootstrap=B).fits().groups[0].params
    e88 = fam(fs, "e88")
    assert e88.refused == "2 sizes (20M, 400M): a fit of three constants needs at least 3 distinct sizes"
    assert all("e88" not in (c.a, c.b) for c in fs.crossings)
    # a study where no family has three sizes: one clear line, nothing fitted, no fit plots
    root = scaling_study(tmp_path, name="two", sizes={"20M": 20e6, "400M": 400e6}, extra=False)
    rep = Report(root, fit=True, bootstrap=B)
    assert not rep.fits().any_fitted()
    sec = rep.markdown([]).split("## Scaling fits")[1]
    assert ("**Not fitted:** no family has completed runs at 3 sizes or more at one token count (three constants "
            "need three sizes): e1: 2 sizes (20M, 400M); mamba2: 2 sizes (20M, 400M).") in sec
    res = rep.write()
    assert not any(p.name.startswith("fit_") for p in res["plots"])
    assert json.loads((root / "fit.json").read_text())["groups"] == []


def test_three_runs_at_three_sizes_have_no_interval(tmp_path):
    root = scaling_study(tmp_path, sizes={k: SIZES[k] for k in ("20M", "100M", "400M")}, seeds=(42,), extra=False)
    fs = Report(root, fit=True, bootstrap=B).fits().groups[0].params
    f = fam(fs, "e1")
    assert f.boot is None and f.interval("alpha") is None and "3 runs for 3 constants" in f.no_interval
    assert fs.crossings[0].roots[0]["verdict"].startswith("undecided: no interval")


def test_refits_carry_the_pooled_seed_noise(tmp_path):
    """Three sizes with a second seed at the smallest only (scaling-small's Mamba2 on 2026-12-07): resampling
    runs moves the curve only by that one pair, so without noise the 400M interval is as narrow as the two
    seeds are close. The refits add normal noise with the sd pooled over both families' repeated sizes;
    fit.json and the section say which sd, from how many sizes."""
    from elmanlab.report.fit import fit_family
    root = tmp_path / "s"
    root.mkdir()
    ys = {}
    for model, c, d in (("e1", SHALLOW, (0.012, -0.004)), ("mamba2", STEEP, (0.0002, 0.0))):
        for t, seed, dy in (("20M", 42, d[0]), ("20M", 43, -d[0]), ("50M", 42, d[1]), ("100M", 42, 0.0)):
            n = SIZES[t]
            ys[(model, t, seed)] = law(c, n) + dy
            run(root, f"{model}-{t}-s{seed}", model, n, ys[(model, t, seed)], seed=seed, target=t)
    rep = Report(root, fit=True, predict=["400M"], bootstrap=B)
    (g,) = rep.fits().groups
    pairs = [(ys[(m, "20M", 42)] - ys[(m, "20M", 43)]) for m in ("e1", "mamba2")]
    sd = math.sqrt(sum(v * v / 2 for v in pairs) / 2)              # two pairs: one degree of freedom each
    assert g.noise_sd == pytest.approx(sd) and g.noise_dof == 2 and g.noise_sizes == 2
    m2 = fam(g.params, "mamba2")
    assert m2.noise_sd == pytest.approx(sd)
    lo, hi = next(v["interval"] for v in g.params.predictions[0].values if v["family"] == "mamba2")
    bare = fit_family("mamba2", "mamba2", m2.points, B=B)            # the runs resampled, no noise
    blo, bhi = bare.boot_curves([400e6])[:, 0].min(), bare.boot_curves([400e6])[:, 0].max()
    assert bhi - blo < 0.002 < 10 * (bhi - blo) < hi - lo, (blo, bhi, lo, hi)
    assert lo <= law(STEEP, 400e6) <= hi
    fj = rep.fits().to_json()
    assert fj["groups"][0]["seed_noise_sd"] == pytest.approx(sd) and "noise" in fj["method"]["resampling"]
    assert f"Seed noise in the refits: sd {sd:.4f}, pooled over 2 sizes" in rep.markdown([])
    # no size run twice: no noise to add, and the section says so
    root1 = scaling_study(tmp_path, name="one", sizes={k: SIZES[k] for k in ("20M", "100M", "400M")}, seeds=(42,),
                          extra=False)
    g1 = Report(root1, fit=True, bootstrap=B).fits().groups[0]
    assert g1.noise_sd is None and "Seed noise in the refits: none" in Report(root1, fit=True, bootstrap=B).markdown([])


def test_unequal_tokens_are_not_fitted_together(tmp_path):
    root = tmp_path / "tok"
    root.mkdir()
    for i, (t, n) in enumerate(SIZES.items()):      # more steps for bigger models: every size its own tokens
        run(root, f"e1-{t}", "e1", n, law(SHALLOW, n), target=t, steps=200 + 100 * i)
    rep = Report(root, fit=True, bootstrap=B)
    assert not rep.fits().any_fitted()
    assert "the runs trained on 5 different token counts" in rep.markdown([])


def test_flops_fit_uses_recorded_flops_and_says_when_estimated(tmp_path):
    rep = Report(scaling_study(tmp_path), fit=True, bootstrap=B)
    g = rep.fits().groups[0]
    params = {p.run: p.x for f in g.params.fits for p in f.points}
    for label, per_param in (("mamba2", 6.6), ("e1", 6.0)):      # e1's records have no flops_per_token
        for p in fam(g.flops, label).points:
            assert p.x == pytest.approx(per_param * params[p.run] * TOKENS)
    assert sorted(g.flops_estimated) == sorted(r for r in params if not r.startswith("mamba2"))
    # C = 6 N D for e1: the same exponent as against N
    assert fam(g.flops, "e1").alpha == pytest.approx(fam(g.params, "e1").alpha, rel=1e-3)
    assert "predate `flops_per_token`: C = 6 x params x tokens" in rep.markdown([])


def test_prediction_gap_interval_metric_and_determinism(tmp_path):
    root = scaling_study(tmp_path)
    rep = Report(root, fit=True, predict=["400M"], bootstrap=B)
    (pred,) = rep.fits().groups[0].params.predictions
    (gap,) = pred.gaps
    true = law(SHALLOW, 400e6) - law(STEEP, 400e6)
    assert gap["a"] == "e1" and gap["b"] == "mamba2" and gap["gap"] == pytest.approx(true, abs=0.01)
    assert gap["interval"][0] <= true <= gap["interval"][1] and gap["verdict"] == "mamba2 ahead"
    assert "Predicted at N = 400M" in rep.markdown([])
    # deterministic: the same fit.json from a second report
    again = Report(root, fit=True, predict=["400M"], bootstrap=B)
    assert json.dumps(again.fits().to_json()) == json.dumps(rep.fits().to_json())
    # the fit follows the report's metric
    fs = Report(root, metric="val_bpb", fit=True, bootstrap=B).fits().groups[0].params
    p = fam(fs, "e1").points[0]
    assert p.y == pytest.approx(json.loads((root / p.run / "summary.json").read_text())["val_bpb"])


def test_bad_fit_settings_are_one_line_errors(tmp_path):
    root = scaling_study(tmp_path, extra=False)
    with pytest.raises(ElmanlabError, match=r"^--bootstrap must be a whole number of refits, at least 50"):
        Report(root, bootstrap=5)
    with pytest.raises(ElmanlabError, match=r"^--predict '1Q' is not a parameter count; give a size such as 400M"):
        Report(root, predict=["400M,1Q"])
    assert Report(root, predict=["1B", "400M,1B"]).predict == [400_000_000, 1_000_000_000]


def test_multi_scale_reports_fit_without_asking(tmp_path):
    assert "## Scaling fits" in Report(scaling_study(tmp_path), bootstrap=B).markdown([])
    root, _ = _study(tmp_path)                                    # two scales: no fit section
    res = Report(root).write()
    assert "Scaling fits" not in res["markdown"] and res["fit"] is None and not (root / "fit.json").exists()


def test_report_fit_cli_end_to_end(tmp_path):
    root = scaling_study(tmp_path)

    def cli(*a):
        return subprocess.run([sys.executable, "-m", "elmanlab", "report", str(root), *a], capture_output=True,
                              text=True)
    p = cli("--fit", "--predict", "garbage")
    assert p.returncode == 2 and p.stderr.startswith("error: --predict 'garbage' is not a parameter count")
    assert len(p.stderr.strip().splitlines()) == 1 and not (root / "report.md").exists()
    p = cli("--fit", "--predict", "400M,1B", "--bootstrap", str(B))
    assert p.returncode == 0, p.stderr
    assert "## Scaling fits" in p.stdout and "| e1 vs mamba2 |" in p.stdout and "Predicted at N = 1B" in p.stdout
    fit = json.loads((root / "fit.json").read_text())
    assert fit["predict"] == [400_000_000, 1_000_000_000] and fit["method"]["bootstrap"] == B
    (grp,) = fit["groups"]
    assert [f["family"] for f in grp["params"]["families"]] == ["e1", "e88", "mamba2"]
    assert grp["params"]["crossings"][0]["crossings"][0]["verdict"] == "decided"
    md = (root / "report.md").read_text()
    for name in ("fit_vs_params.png", "fit_vs_flops.png"):
        assert (root / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"plots/{name}" in md


def _set_losses(root, rid, loss_at_200):
    """metrics.jsonl of run ``rid``: every 10-step line up to step 200 at ``loss_at_200``, later lines
    0.3 lower."""
    path = root / rid / "metrics.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    for r in rows:
        r["loss"] = loss_at_200 if r["step"] <= 200 else loss_at_200 - 0.3
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_at_step_fits_each_runs_value_at_that_step(tmp_path):
    """--at-step 200: the last-100 loss at step 200 read from metrics.jsonl (not the summary's, at 300),
    at 200 x 4 x 64 tokens; a run that stopped earlier, or whose lines do not start at step 100, is left
    out with the reason."""
    root = scaling_study(tmp_path, noise=0.0, extra=False)
    for t, n in SIZES.items():
        for s in (42, 43):
            _set_losses(root, f"e1-{t}-s{s}", law(SHALLOW, n * 1.003) + 0.2)      # the summaries say law()
            _set_losses(root, f"mamba2-{t}-s{s}", law(STEEP, n * 0.996) + 0.2)
    make_run(root, "e1-50M-short", "e1", int(50e6), 64, 4, steps=150)
    make_run(root, "e1-50M-odd", "e1", int(50e6), 64, 4, steps=300, log_every=30)    # lines at 90, 120: no 100
    rep = Report(root, at_step=200, bootstrap=100)
    fits = rep.fits()
    assert rep.fit_wanted and fits.at_step == 200 and len(fits.groups) == 1
    g = fits.groups[0]
    assert g.tokens == 200 * 4 * 64
    e1 = fam(g.params, "e1")
    assert (e1.E, e1.alpha) == (pytest.approx(SHALLOW[0] + 0.2, abs=1e-3), pytest.approx(SHALLOW[2], abs=1e-3))
    why = dict(fits.left_out)
    assert why["e1-50M-short"] == "no loss_last100 at step 200 in its metrics.jsonl (it ran 150 steps)"
    assert why["e1-50M-odd"] == "no loss_last100 at step 200 in its metrics.jsonl"
    assert "(each run at its step 200, not at its end)" in fits.markdown()
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ElmanlabError, match=r"^--at-step must be a positive whole number of steps"):
            Report(root, at_step=bad)
    with pytest.raises(ElmanlabError, match=r"^--at-step takes the value at one step: use --metric loss_last100"):
        Report(root, at_step=200, metric="best_val_bpb")


def test_a_run_at_step_n_is_the_run_of_n_steps(tmp_path):
    """The claim --at-step rests on, with real training (CPU): Schedule-Free with no warm-up looks
    nowhere ahead to the budget, so the last-100 loss a 250-step run logged at step 150 is the
    loss_last100 of the same run stopped at 150 steps; at 250 it is its own summary's."""
    from elmanlab.config import ModelConfig, TrainConfig
    from elmanlab.data import embedded_corpus_path
    from elmanlab.report.collect import collect_runs
    from elmanlab.train import run_training
    sums = {}
    for steps in (150, 250):
        sums[steps] = run_training(TrainConfig(
            model=ModelConfig("e1", 24, 2), out=str(tmp_path / f"r{steps}"), data=str(embedded_corpus_path()),
            steps=steps, batch_size=2, seq_len=16, lr=3e-3, device="cpu", progress=False, eval_bytes=0,
            log_every=10))
    runs = {r.id: r for r in collect_runs(tmp_path)[0]}
    long = runs["r250"]
    assert long.value_at(150, "loss_last100") == pytest.approx(sums[150]["loss_last100"], rel=1e-9, abs=0)
    assert long.value_at(250, "loss_last100") == pytest.approx(sums[250]["loss_last100"], rel=1e-9, abs=0)
    assert long.value_at(155, "loss_last100") is None and long.value_at(300, "loss_last100") is None


def test_a_curve_that_misses_its_runs_is_marked_and_not_judged(tmp_path):
    """A family whose loss rises with size (scaling-small's E42 on 2026-12-07: 1.29, 1.32, 1.40) gets a flat
    curve that misses its runs far beyond the seed noise: the table marks it and its crossings and gaps are
    not judged. The families that follow the law (with the same noise) are not marked."""
    root = scaling_study(tmp_path, extra=False)
    rng = np.random.default_rng(3)
    for t, base in (("20M", 1.29), ("50M", 1.32), ("200M", 1.40)):
        for s in (42, 43):
            run(root, f"e42-{t}-s{s}", "e42", SIZES[t], base + 0.005 * rng.standard_normal(), seed=s, target=t)
    rep = Report(root, fit=True, predict=["400M"], bootstrap=B)
    fs = rep.fits().groups[0].params
    e42 = fam(fs, "e42")
    assert e42.misfit.startswith("misfit:") and "chi-square" in e42.misfit
    assert not fam(fs, "e1").misfit and not fam(fs, "mamba2").misfit
    for c in fs.crossings:
        verdicts = [r["verdict"] for r in c.roots] or [c.none_verdict]
        judged = all(not v.startswith("not judged") for v in verdicts)
        assert judged == ("e42" not in (c.a, c.b)), (c.a, c.b, verdicts)
    (pred,) = fs.predictions
    for q in pred.gaps:
        assert q["verdict"].startswith("not judged") == ("e42" in (q["a"], q["b"])), q
    assert next(v for v in pred.values if v["family"] == "e42")["misfit"] is True
    md = rep.markdown([])
    assert "**misfit: the curve misses its runs" in md and "misfit: not a prediction" in md
    fj = rep.fits().to_json()
    fams = {f["family"]: f for f in fj["groups"][0]["params"]["families"]}
    assert fams["e42"]["misfit"] and fams["e1"]["misfit"] is None
    from elmanlab.report.plots import plot_fit
    fig = plot_fit(rep, fs, rep.fits().groups[0].tokens)
    styles = {ln.get_label().split(":")[0]: (ln.get_linestyle(), ln.get_label()) for ln in fig.axes[0].lines
              if not ln.get_label().startswith("_")}
    assert styles["e42"][0] == ":" and "MISFIT" in styles["e42"][1], styles
    assert styles["e1"][0] == "-" and "MISFIT" not in styles["e1"][1], styles
    assert len(fig.axes[0].collections) == 3 + 2          # the runs of e1, mamba2, e42; bands for e1 and mamba2


def test_misfit_needs_noise_and_a_residual_degree_of_freedom():
    from elmanlab.report.fit import chi2_quantile, misfit
    assert chi2_quantile(1) == pytest.approx(6.635, rel=0.01) and chi2_quantile(3) == pytest.approx(11.345, rel=0.01)
    assert misfit(1.0, 2, None) == "" and misfit(1.0, 0, 0.01) == ""
    assert misfit(9.0 * 0.01 ** 2, 2, 0.01) == ""                 # at the bound: chi-square 9.0 < 9.2
    assert misfit(9.5 * 0.01 ** 2, 2, 0.01).startswith("misfit:")


def test_not_judged_names_each_misfit_family_once():
    from types import SimpleNamespace as NS
    from elmanlab.report.fit import _not_judged
    ok, a, b = NS(label="e1", misfit=""), NS(label="e42", misfit="misfit: x"), NS(label="transformer", misfit="misfit: y")
    assert _not_judged(ok, ok) == ""
    assert _not_judged(ok, a) == "not judged: e42's curve does not describe its runs (misfit)"
    assert _not_judged(a, b) == "not judged: the curves of e42 and transformer do not describe their runs (misfit)"
