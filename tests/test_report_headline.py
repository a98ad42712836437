"""The report's headline (elmanlab.report.headline) and what-ran checks (elmanlab.report.checks):
both rankings, equal tokens and equal time, with n and the seed spread; ties where a gap is inside
the spread; borrowed and unknown spreads; disagreeing rankings; runs that ran different
implementations, with and without CUDA graphs, or the reference on a GPU; non-finite steps.

Every run here trains for the same time (7.68 s: 300 steps at 10,000 tokens/s or 150 at 5,000),
so the equal-time ranking is the val bpb given, and the equal-token ranking is the training loss
at 150 steps' tokens: each curve is flat at ``tok`` (so that is its loss at any point).
"""
from __future__ import annotations

import csv
import io
import json
import statistics

import pytest

from elmanlab.report import Report
from elmanlab.report.headline import build_headline
from test_report import make_run

MINUTES = 150 * 4 * 64 / 5000 / 60          # 7.68 s, both speeds


def run(root, rid, model, *, tok, val, seed=42, slow=False, params=500_000, options=None, **summary):
    """A run whose curve is flat at ``tok`` nats/byte, scored ``val`` bpb; ``summary`` adds
    summary.json fields (kernel, cuda_graph, ...)."""
    steps, tok_s = (150, 5000.0) if slow else (300, 10000.0)
    if model == "e88" and options is None:
        options = {"n_heads": 4, "n_state": 16}
    make_run(root, rid, model, params, 64, 4, seed=seed, steps=steps, tok_s=tok_s, val_bpb=val,
             minutes=MINUTES, options=options)
    d = root / rid
    rows = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    (d / "metrics.jsonl").write_text("".join(json.dumps({**r, "loss": tok}) + "\n" for r in rows))
    s = json.loads((d / "summary.json").read_text())
    s.update(loss_last100=tok, **summary)
    (d / "summary.json").write_text(json.dumps(s))


def _study(tmp_path, name="s"):
    root = tmp_path / name
    root.mkdir()
    return root


def _md(root, metric="val_bpb"):
    rep = Report(root, metric=metric)
    return rep, rep.markdown([])


def _section(md, title):
    """The text of the headline subsection whose heading starts with ``title``."""
    return md.split(f"### {title}")[1].split("###")[0].split("## Ranked runs")[0]


def test_ties_a_clear_gap_and_agreeing_rankings(tmp_path):
    root = _study(tmp_path)
    vals = {"e1": (1.50, 1.52), "e88": (1.515, 1.525), "mamba2": (1.60, 1.62)}
    toks = {"e1": (1.30, 1.31), "e88": (1.32, 1.33), "mamba2": (1.40, 1.41)}
    for m in vals:
        for i, seed in enumerate((42, 43)):
            run(root, f"{m}-s{seed}", m, tok=toks[m][i], val=vals[m][i], seed=seed, slow=(m == "mamba2"))
    rep, md = _md(root)
    (g,) = build_headline(rep)
    assert g.tokens.at == 150 * 4 * 64 and not g.tokens.final and g.time.final
    assert [c.label.split()[0] for c in g.time.configs] == ["e1", "e88", "mamba2"]
    assert [c.n for c in g.time.configs] == [2, 2, 2]
    sd_e1 = statistics.stdev(vals["e1"])
    assert g.time.configs[0].sd == pytest.approx(sd_e1)
    # e1 -> e88: gap 0.01 inside e1's sd 0.0141: a tie; e88 -> mamba2: 0.09, a clear gap
    assert g.time.gap_text(1) == f"tie (gap 0.0100 < seed sd {sd_e1:.4f})"
    assert g.time.gap_text(2) == f"+0.0900 (≥ seed sd {sd_e1:.4f})"
    assert [c.label.split()[0] for c in g.time.best()] == ["e1", "e88"]
    sec = _section(md, "~500K, equal time")
    assert "Ranked by val bpb (bits/byte) at the end of training" in sec
    assert "**Order:** e1 64x4 1.5100 ≈ e88 64x4 H4 n16 1.5200 > mamba2 64x4 1.6100" in sec
    assert "| 1 | e1 64x4 | 2 | 1.5100 | 0.0141 | e1-s42, e1-s43 | - |" in sec
    assert "**Best:** e1 64x4 (1.5100, n = 2), tied with e88 64x4 H4 n16 (within the seed spread of it)." in sec
    tok = _section(md, "~500K, equal tokens: at 38.4K tokens")
    assert "Ranked by training loss" in tok and "val bpb is scored only at the end" in tok
    assert "e1 64x4 1.3050 > e88 64x4 H4 n16 1.3250 > mamba2 64x4 1.4050" in tok
    assert "**The two rankings agree:**" in md
    # the headline comes first; the existing sections stay below it
    assert md.index("## Headline") < md.index("## Ranked runs") < md.index("## Equal tokens and equal time")


def test_disagreeing_rankings(tmp_path):
    """The fast model is ahead at equal time, the slow one at equal tokens, both beyond the spread."""
    root = _study(tmp_path)
    for seed, d in ((42, 0.0), (43, 0.01)):
        run(root, f"fast-s{seed}", "e1", tok=1.40 + d, val=1.50 + d, seed=seed)
        run(root, f"slow-s{seed}", "mamba2", tok=1.30 + d, val=1.60 + d, seed=seed, slow=True)
    rep, md = _md(root)
    (g,) = build_headline(rep)
    assert [c.label for c in g.tokens.configs] == ["mamba2 64x4", "e1 64x4"]
    assert [c.label for c in g.time.configs] == ["e1 64x4", "mamba2 64x4"]
    assert "**The two rankings disagree** beyond the seed spread: mamba2 64x4 ahead of e1 64x4 at equal " \
           "tokens, behind it at equal time." in md
    assert "First at equal tokens: mamba2 64x4; at equal time: e1 64x4." in md
    assert "**Best:** mamba2 64x4 (1.3050, n = 2), ahead of every other configuration by at least the seed " \
           "spread." in md


def test_one_seed_everywhere_no_win_is_called(tmp_path):
    root = _study(tmp_path)
    run(root, "a", "e1", tok=1.30, val=1.52)
    run(root, "b", "e88", tok=1.35, val=1.50)
    run(root, "c", "mamba2", tok=1.50, val=1.70, slow=True)
    rep, md = _md(root)
    (g,) = build_headline(rep)
    for rk in g.rankings():
        assert rk.pooled is None and not rk.spread_known
        assert all(rk.gap_text(i).endswith("(spread unknown)") for i in (1, 2))
        assert rk.best() == rk.configs[:1]
    assert "tie (" not in md and "≥ seed sd" not in md
    assert md.count("the seed spread is unknown, so no gap here is called a win") == 2
    assert "(order of the means; spread unknown)" in md
    assert "**Best:** e1 64x4 (1.3000, n = 1), the lowest mean; with the seed spread unknown this is not a win." in md
    assert "**The two rankings differ:**" in md and "neither order is established" in md


def test_one_seed_configurations_borrow_the_measured_spread(tmp_path):
    """n = 1 configurations borrow the pooled sd of the repeated ones, at the same scale or, where
    none was repeated there, at another scale; the headline says so."""
    root = _study(tmp_path)
    run(root, "e1-s42", "e1", tok=1.30, val=1.50, seed=42)
    run(root, "e1-s43", "e1", tok=1.32, val=1.54, seed=43)          # val sd 0.0283, tok sd 0.0141
    run(root, "e88", "e88", tok=1.40, val=1.60)
    run(root, "m2", "mamba2", tok=1.41, val=1.62, slow=True)        # 0.02 behind e88: inside 0.0283
    run(root, "big-e1", "e1", tok=1.20, val=1.40, params=2_000_000)
    run(root, "big-m2", "mamba2", tok=1.25, val=1.45, params=2_000_000)   # 0.05: beyond 0.0283
    rep, md = _md(root)
    small, big = build_headline(rep)
    sd = statistics.stdev([1.50, 1.54])
    assert small.time.pooled == pytest.approx(sd) and big.time.pooled == pytest.approx(sd)
    assert small.time.gap_text(2) == f"tie (gap 0.0200 < seed sd {sd:.4f}, borrowed)"
    assert big.time.gap_text(1) == f"+0.0500 (≥ seed sd {sd:.4f}, borrowed)"
    assert f"borrow the pooled seed sd {sd:.4f} measured for e1 64x4 (n = 2) at this point" in md
    assert "e1 64x4 at ~500K (at that group's equal time point: this group has no repeated configuration)" in md
    # pooling: two repeated configurations give the root of the dof-weighted mean variance
    run(root, "e88-s43", "e88", tok=1.40, val=1.64, seed=43)
    rk = build_headline(Report(root, metric="val_bpb"))[0].time
    assert rk.pooled == pytest.approx(((statistics.variance([1.50, 1.54]) + statistics.variance([1.60, 1.64])) / 2)
                                      ** 0.5)


KERNELS = {"e1": ("elmanlab persistent Elman CUDA kernel (tanh)", "elman"),
           "mamba2": ("mamba_ssm Triton SSD", "ssd")}


def _ran(model, path=None, fast=True, graph=True, **more):
    path = path or KERNELS[model][0]
    op = KERNELS.get(model, ("", model))[1]
    return {"kernel": {"family": model, "path": path, "fast": fast},
            "implementations": {op: {"path": path, "fast": fast, "reason": "test"}}, "cuda_graph": graph,
            "device": "cuda", "allow_reference": not fast, "nonfinite_steps": 0,
            "source": {"commit": "0123456789abcdef", "dirty": False}, **more}


def test_different_implementations_are_never_ranked_silently(tmp_path):
    root = _study(tmp_path)
    run(root, "m2-fast", "mamba2", tok=1.30, val=1.50, slow=True, **_ran("mamba2"))
    run(root, "m2-ref", "mamba2", tok=1.31, val=1.70, seed=43, slow=True,
        **_ran("mamba2", path="reference", fast=False))
    run(root, "e1-a", "e1", tok=1.35, val=1.55, **_ran("e1", nonfinite_steps=8))
    run(root, "e1-b", "e1", tok=1.36, val=1.56, seed=43, **_ran("e1", graph=False))
    rep, md = _md(root)
    head = md.split("## Ranked runs")[0]
    assert "**Not like-for-like.**" in head
    assert "**mamba2** ran 2 different implementations: `ssd: mamba_ssm Triton SSD` (m2-fast); " \
           "`ssd: reference` (m2-ref)." in head
    assert "**mamba2** ran its plain-PyTorch reference on the GPU in m2-ref (allowed with --allow-reference)" in head
    assert "**CUDA graphs** replayed the steps of e1-a, m2-fast, m2-ref but not of e1-b" in head
    assert "**Non-finite steps skipped** (the loss or a gradient was not finite; the update was dropped): " \
           "e1-a (8)." in head
    assert "Code: version not recorded; commit 0123456789 (4 runs)." in head
    # both rankings are marked: the kernel mix affects both, graphs and the reference equal time only
    tok = head.split("### ~500K, equal tokens")[1].split("\n")[0]
    tim = head.split("### ~500K, equal time")[1].split("\n")[0]
    assert tok.endswith("— not like-for-like (mamba2 ran 2 implementations)")
    assert tim.endswith("— not like-for-like (mamba2 ran 2 implementations; graphs used by some runs only; "
                        "mamba2 ran its reference)")
    # runs that ran differently are not pooled as seeds of one configuration
    (g,) = build_headline(rep)
    assert sorted(c.label for c in g.tokens.configs) == [
        "e1 64x4 [eager]", "e1 64x4 [graphs]", "mamba2 64x4 [mamba_ssm Triton SSD]", "mamba2 64x4 [reference]"]
    assert all(c.n == 1 for c in g.tokens.configs)
    # the ranked table marks every run of the mix and shows what ran
    ranked = md.split("## Ranked runs")[1].split("\n## ")[0]
    line = next(ln for ln in ranked.splitlines() if "| m2-ref †" in ln)
    assert "| 0 | reference | yes |" in line
    line = next(ln for ln in ranked.splitlines() if "| e1-a †" in ln)
    assert "| 8 | elmanlab persistent Elman CUDA kernel (tanh) | yes |" in line
    rows = {r["run"]: r for r in csv.DictReader(io.StringIO(rep.csv_text()))}
    assert rows["m2-ref"]["kernel_path"] == "reference" and rows["m2-ref"]["kernel_fast"] == "False"
    assert rows["m2-ref"]["allow_reference"] == "True" and rows["m2-ref"]["implementations"] == "ssd: reference"
    assert rows["e1-a"]["nonfinite_steps"] == "8" and rows["e1-b"]["cuda_graph"] == "False"
    assert rows["e1-a"]["commit"] == "0123456789abcdef" and rows["e1-a"]["dirty"] == "False"
    assert {r["like_for_like"] for r in rows.values()} == {"no"}


def test_like_for_like_runs_and_mixes_across_scales(tmp_path):
    """The same implementation everywhere: no warning, like_for_like yes. A family whose path differs
    only between scales is reported at the top, but no ranking mixes it."""
    root = _study(tmp_path)
    run(root, "e1", "e1", tok=1.35, val=1.55, **_ran("e1"))
    run(root, "m2", "mamba2", tok=1.30, val=1.50, slow=True, **_ran("mamba2"))
    rep, md = _md(root)
    assert "Not like-for-like" not in md and "†" not in md
    assert {r["like_for_like"] for r in csv.DictReader(io.StringIO(rep.csv_text()))} == {"yes"}
    run(root, "e1-big", "e1", tok=1.2, val=1.4, params=2_000_000, **_ran("e1", path="cuDNN tanh RNN"))
    run(root, "m2-big", "mamba2", tok=1.2, val=1.4, params=2_000_000, slow=True, **_ran("mamba2"))
    rep, md = _md(root)
    assert "**e1** ran 2 different implementations" in md
    assert "They are at different scales: no ranking mixes them, the scaling tables do." in md
    assert "not like-for-like (" not in md and not rep.unlike()


def test_old_records_say_what_they_do_not_know(tmp_path):
    """Records without kernel, cuda_graph or source: "-" in the table, empty in results.csv, and a
    note that the report cannot check the comparison."""
    root = _study(tmp_path)
    run(root, "a", "e1", tok=1.30, val=1.52)
    run(root, "b", "mamba2", tok=1.30, val=1.50, slow=True, nonfinite_steps=3)
    rep, md = _md(root)
    assert "**What ran is not recorded:**" in md
    assert "The records do not say which elmanlab version or commit made them." in md
    assert "b (3)" in md
    line = next(ln for ln in md.splitlines() if ln.startswith("| 1 | b |"))
    assert "| 3 | - | - |" in line
    rows = {r["run"]: r for r in csv.DictReader(io.StringIO(rep.csv_text()))}
    assert rows["a"]["kernel_path"] == rows["a"]["cuda_graph"] == rows["a"]["like_for_like"] == ""
    assert rows["a"]["nonfinite_steps"] == ""


def test_one_configuration_and_ranking_by_training_loss(tmp_path):
    """Two seeds of one configuration: nothing to rank. --metric loss_last100 ranks equal time by the
    last-100 loss."""
    root = _study(tmp_path)
    run(root, "a", "e1", tok=1.30, val=1.52)
    run(root, "b", "e1", tok=1.31, val=1.50, seed=43)
    _, md = _md(root)
    assert "One configuration (a, b): nothing to rank." in md
    run(root, "c", "e88", tok=1.20, val=1.60)
    _, md = _md(root, metric="loss_last100")
    assert "Ranked by loss last-100 (nats/byte) at the end of training" in md
    assert "val bpb is scored only at the end" not in md


def test_ties_between_neighbours_do_not_chain_into_a_win():
    """A ≈ B and B ≈ C need not mean A ≈ C: Order compares neighbours, Best compares with the first."""
    from elmanlab.report.headline import Config, Ranking
    a = Config("a", ["a1", "a2"], [0.99, 1.01])                     # sd 0.0141
    b, c = Config("b", ["b"], [1.012]), Config("c", ["c"], [1.024])
    rk = Ranking("time", 120.0, True, "val bpb", [a, b, c], [], pooled=0.0141, pooled_from="a")
    assert rk.order() == "a 1.0000 ≈ b 1.0120 ≈ c 1.0240"
    assert [x.label for x in rk.best()] == ["a", "b"]
    assert rk.best_text() == "a (1.0000, n = 2), tied with b (within the seed spread of it)."
