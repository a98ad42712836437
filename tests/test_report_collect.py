"""Collecting run records (elmanlab.report.collect): runs known only from the study's study.json, and
which train settings make up a run's configuration (the identity settings of elmanlab.config)."""
from __future__ import annotations

import csv
import functools
import io
import json

import pytest

from elmanlab.config import identity_settings
from elmanlab.report import Report, collect_runs, write_report
from test_report import make_run


def test_study_state_failures_without_summary(tmp_path):
    root = tmp_path / "st"
    root.mkdir()
    make_run(root, "e1-200K-s42", "e1", 200_728, 88, 4)
    state = {"name": "tiny", "baseline": "e1", "jobs": [
        {"id": "e1-200K-s42", "run_dir": "e1-200K-s42", "model": "e1", "params": "200K", "status": "completed",
         "options": {}, "train": {"steps": 300, "seed": 42}, "size": {"params": 200_728, "dim": 88, "depth": 4}},
        {"id": "e42-200K-s42", "run_dir": "e42-200K-s42", "model": "e42", "params": "200K", "status": "failed",
         "error": "CUDA out of memory. Tried to allocate 2.00 GiB", "options": {}, "train": {"steps": 300},
         "size": {"params": 198_864, "dim": 144, "depth": 2}},
        {"id": "e33-200K-s42", "run_dir": "e33-200K-s42", "model": "e33", "params": "200K", "status": "pending",
         "options": {}, "train": {"steps": 300}, "size": {"params": 197_248, "dim": 128, "depth": 2}}]}
    (root / "study.json").write_text(json.dumps(state))
    res = write_report(root)
    md = res["markdown"]
    assert md.startswith("# Study report: tiny")
    fail = md.split("## Failed and unfinished runs")[1]
    assert "e42-200K-s42" in fail and "CUDA out of memory" in fail and "| failed |" in fail
    assert "e33-200K-s42" in fail and "| pending |" in fail
    assert "1 completed, 1 failed, 1 not run" in md


def _with_settings(run_dir, **settings):
    """Give a run's config.json a full train block as `elmanlab train` writes it, with ``settings``."""
    cfg = json.loads((run_dir / "config.json").read_text())
    cfg["train"] = {"out": str(run_dir), "data": "/data/train.txt", "val_data": None, "steps": 300, "minutes": None,
                    "batch_size": 4, "seq_len": 64, "lr": 3e-4, "weight_decay": 0.1, "warmup_steps": 0,
                    "beta1": 0.9, "beta2": 0.999, "grad_clip": None, "max_nonfinite": 10,
                    "seed": cfg["train"]["seed"], "device": "auto", "compile": False, "cuda_graph": False,
                    "checkpoint_every": 0, "log_every": 10, "eval_bytes": 262_144, "progress": True, **settings}
    (run_dir / "config.json").write_text(json.dumps(cfg))


def test_a_runs_configuration_is_its_identity_settings(tmp_path):
    """A run's train settings are the identity settings: paths, device, logging, cuda_graph and
    max_nonfinite are not part of it, eval_bytes is. Seeds pool over the rest; only identity
    settings count as swept."""
    root = tmp_path / "ident"
    root.mkdir()
    make_run(root, "a", "e1", 500_000, 100, 4, final=1.50)
    _with_settings(root / "a", cuda_graph=True, device="cuda:0", log_every=5, max_nonfinite=3)
    make_run(root, "b", "e1", 500_000, 100, 4, final=1.52, seed=43)
    _with_settings(root / "b")
    make_run(root, "c", "e1", 500_000, 100, 4, final=1.51)
    _with_settings(root / "c", eval_bytes=1_000_000)
    runs = {r.id: r for r in collect_runs(root)[0]}
    null = {"minutes", "grad_clip"}       # None in config.json: not recorded
    assert set(runs["a"].train) == set(identity_settings()) - null
    assert runs["a"].train["eval_bytes"] == 262_144 and "cuda_graph" not in runs["a"].train
    # a and b differ in seed and in non-identity settings only: one configuration; c is another
    assert runs["a"].config_key() == runs["b"].config_key() != runs["c"].config_key()
    rep = Report(root)
    assert {k for k, _, _ in rep.swept_keys()} == {"eval_bytes"}
    md = rep.markdown([])
    assert "### Best loss by eval_bytes" in md and "## Mean and spread over seeds" in md
    cols = next(csv.reader(io.StringIO(rep.csv_text())))
    train_cols = {c[len("train_"):] for c in cols if c.startswith("train_")}
    assert train_cols == set(identity_settings()) - null


def test_runs_outside_a_study_group_by_similar_size(tmp_path):
    """config.json's params is each run's own count, not a target: runs of a plain folder of similar
    size form one scale (and so one headline group), not one scale per run."""
    root = tmp_path / "loose"
    root.mkdir()
    for rid, model, params in (("a", "e1", 200_728), ("b", "mingru", 199_464)):
        make_run(root, rid, model, params, 88, 4)
        cfg = json.loads((root / rid / "config.json").read_text())
        (root / rid / "config.json").write_text(json.dumps({**cfg, "params": params}))
    runs = collect_runs(root)[0]
    assert {r.scale for r in runs} == {"~200K"} and {r.target for r in runs} == {None}
    assert len(Report(root).iso_tables()) == 1


def test_runs_that_differ_only_in_the_wrapper_are_not_pooled(tmp_path):
    """A tied head, LayerNorm or another MLP width makes another configuration (not another seed),
    named in the label; records without `norm` (older ones) read as RMSNorm."""
    root = tmp_path / "wrap"
    root.mkdir()
    make_run(root, "plain", "e1", 500_000, 100, 4, final=1.50)
    make_run(root, "plain43", "e1", 500_000, 100, 4, final=1.51, seed=43)
    make_run(root, "tied", "e1", 500_000, 100, 4, final=1.52)
    make_run(root, "layer", "e1", 500_000, 100, 4, final=1.53)
    make_run(root, "rms", "e1", 500_000, 100, 4, final=1.54, seed=44)
    for rid, change in (("tied", {"tie_embeddings": True}), ("layer", {"norm": "layer"}), ("rms", {"norm": "rms"})):
        for name in ("config.json", "summary.json"):
            path = root / rid / name
            d = json.loads(path.read_text())
            (d["model"] if name == "config.json" else d["config"]).update(change)
            path.write_text(json.dumps(d))
    runs = {r.id: r for r in collect_runs(root)[0]}
    keys = {rid: r.config_key() for rid, r in runs.items()}
    assert keys["plain"] == keys["plain43"] == keys["rms"]
    assert len({keys["plain"], keys["tied"], keys["layer"]}) == 3
    assert runs["tied"].label().endswith("tied") and runs["layer"].label().endswith("layernorm")
    assert runs["plain"].label() == "100x4"


def test_a_pending_job_pools_with_the_finished_runs_of_its_configuration(tmp_path):
    """A pending job's record lists what its study file set; a finished run's records every option and
    setting. The two of one configuration have one key (else the report shows a finished configuration
    beside a 'not run' line of itself); another option or training setting is still another key."""
    from elmanlab.report.collect import Run
    done = Run(id="e1-s42", path=tmp_path, status="completed", model="e1", dim=64, depth=2,
               options={"expansion": 1.0, "spectral_norm": False, "w_h_scale": 0.9, "init": "default",
                        "spectral_mode": "bound"},
               train={"seed": 42, "steps": 30, "lr": 3e-4, "warmup_steps": 0, "precision": "autocast"})
    pending = Run(id="e1-s43", path=tmp_path, status="pending", model="e1", dim=64, depth=2, options={},
                  train={"seed": 43, "steps": 30, "lr": 3e-4})
    assert done.config_key() == pending.config_key()
    for other in (Run(id="x", path=tmp_path, status="pending", model="e1", dim=64, depth=2,
                      options={"spectral_norm": True}, train={"seed": 43, "steps": 30, "lr": 3e-4}),
                  Run(id="y", path=tmp_path, status="pending", model="e1", dim=64, depth=2, options={},
                      train={"seed": 43, "steps": 30, "lr": 3e-4, "grad_clip": 1.0}),
                  Run(id="z", path=tmp_path, status="pending", model="e1", dim=64, depth=2, options={},
                      train={"seed": 43, "steps": 30, "lr": 3e-4, "warmup_steps": 200})):
        assert other.config_key() != done.config_key()


def _edit_lines(root, rid, change):
    """Apply ``change`` to every training line of run ``rid``'s metrics.jsonl."""
    p = root / rid / "metrics.jsonl"
    rows = [json.loads(x) for x in p.read_text().splitlines()]
    for r in rows:
        change(r)
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_loss_spikes_are_found_in_the_training_lines_and_reported(tmp_path):
    """A line 0.7 nats above the lines before it (E1 400M's at step 830, on the GPU) is a spike, shown at
    the report's top and in results.csv (the rise is from the median of the ten lines before, which the
    still-falling curve puts above the line's own trend); lines that rise together are one event; a line 0.12 above (the
    largest rise of a committed run without a spike) is not, nor is the fast fall of the first steps."""
    make_run(tmp_path, "calm", "e1", 1000, 16, 2, steps=600)
    make_run(tmp_path, "spiky", "e1", 1000, 16, 2, steps=600, seed=43)
    make_run(tmp_path, "noisy", "e1", 1000, 16, 2, steps=600, seed=44)

    edit = functools.partial(_edit_lines, tmp_path)

    def spike(r):
        if r["step"] in (300, 310):
            r["loss"] += 0.7 if r["step"] == 300 else 0.3
            r["loss_max"] = r["loss"] + 5.0
        if r["step"] == 500:
            r["loss"] += 0.5
    edit("spiky", spike)
    edit("noisy", lambda r: r.update(loss=r["loss"] + 0.12) if r["step"] == 400 else None)
    runs = {r.id: r for r in collect_runs(tmp_path)[0]}
    assert runs["calm"].loss_spikes() == [] and runs["noisy"].loss_spikes() == []
    evs = runs["spiky"].loss_spikes()
    assert [e["step"] for e in evs] == [300, 500]
    assert 0.45 < evs[0]["rise"] < 0.7 and evs[0]["loss_max"] == pytest.approx(evs[0]["loss"] + 5.0)
    assert evs[1]["loss_max"] is None
    write_report(tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "**Loss spikes**" in text and "spiky at step 300" in text and "spiky at step 500" in text
    assert "calm at step" not in text and "noisy at step" not in text
    rows = {r["run"]: r for r in csv.DictReader(io.StringIO((tmp_path / "results.csv").read_text()))}
    assert rows["spiky"]["loss_spike_steps"] == "300 500" and rows["calm"]["loss_spike_steps"] == ""



def test_blow_ups_in_the_first_steps_are_found_and_reported(tmp_path):
    """E1 400M seed 43 reached a step loss of 20.3 in its first ten steps (then ~100 steps near the unigram
    loss): a step loss of 2 ln 256 or more by step 100 is a blow-up, in the report's notes and results.csv,
    the worst line named; a start at 6.4 (a wide model's initial loss) is not, nor a record without
    loss_max, nor a high step loss after step 100 (the spike check's ground)."""
    for rid in ("blown", "calm", "old", "late"):
        make_run(tmp_path, rid, "e1", 1000, 16, 2, steps=300)

    edit = functools.partial(_edit_lines, tmp_path)

    edit("blown", lambda r: r.update(loss_max={10: 20.3, 20: 11.5}.get(r["step"], r["loss"] + 0.2)))
    edit("calm", lambda r: r.update(loss_max=6.4 if r["step"] == 10 else r["loss"] + 0.2))
    edit("late", lambda r: r.update(loss_max=15.0 if r["step"] == 110 else r["loss"] + 0.2))
    runs = {r.id: r for r in collect_runs(tmp_path)[0]}
    assert runs["blown"].early_blowup() == {"step": 10, "loss_max": 20.3, "loss": pytest.approx(runs["blown"].metrics()[0]["loss"])}
    assert all(runs[k].early_blowup() is None for k in ("calm", "old", "late"))
    write_report(tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "**Blow-ups in the first steps**" in text and "blown (highest step loss 20.3 in the line ending at step 10)" in text
    assert not any(f"{k} (highest" in text for k in ("calm", "old", "late"))
    rows = {r["run"]: r for r in csv.DictReader(io.StringIO((tmp_path / "results.csv").read_text()))}
    assert float(rows["blown"]["early_blowup_loss"]) == pytest.approx(20.3) and rows["calm"]["early_blowup_loss"] == ""

def test_a_pending_job_keeps_its_wrapper(tmp_path):
    """A pending job of the reference's wrapper (tied head, LayerNorm) is labelled and keyed with it, as its
    finished run will be; before, the report's table named it as if it ran this lab's wrapper."""
    root = tmp_path / "st"
    root.mkdir()
    make_run(root, "e1-s42", "e1", 200_728, 88, 4)
    job = {"model": "e1", "params": None, "status": "pending", "options": {"init": "reference"},
           "train": {"steps": 300, "seed": 42}, "size": {"params": 200_000, "dim": 88, "depth": 4}}
    state = {"name": "w", "baseline": "e1", "jobs": [
        {**job, "id": "ref", "run_dir": "ref", "tie_embeddings": True, "norm": "layer", "mlp_ratio": 0.0},
        {**job, "id": "lab", "run_dir": "lab"}]}
    (root / "study.json").write_text(json.dumps(state))
    runs = {r.id: r for r in collect_runs(root)[0]}
    assert runs["ref"].nondefault_wrapper() == {"tied": True, "norm": "layer"}
    assert runs["ref"].label() == "88x4 init=reference tied layernorm"
    assert runs["lab"].nondefault_wrapper() == {} and runs["ref"].config_key() != runs["lab"].config_key()


def test_held_out_scores_of_pure_bf16_runs_scored_with_the_average_are_left_out(tmp_path):
    """A pure-bf16 run recorded before eval_weights was scored with Schedule-Free's average formed in bf16
    (the 400M minGRU: 14.38 bits/byte at a training loss of 1.86): its val_* values are left out and a note
    says why; a pure-bf16 run scored with y, and a run in the default precision, keep theirs."""
    for rid in ("old-bf16", "new-bf16", "autocast"):
        make_run(tmp_path, rid, "mingru", 1000, 16, 2, steps=300, val_bpb=14.38 if rid == "old-bf16" else 2.3)
        p = tmp_path / rid / "summary.json"
        summ = json.loads(p.read_text())
        summ["precision"] = "autocast" if rid == "autocast" else "bf16"
        if rid != "old-bf16":
            summ["eval_weights"] = "x" if rid == "autocast" else "y"
        p.write_text(json.dumps(summ))
        with open(tmp_path / rid / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": 300, "tokens": 300 * 256, "val_loss": 1.6, "val_bpb": summ["val_bpb"]}) + "\n")
    runs = {r.id: r for r in collect_runs(tmp_path)[0]}
    assert runs["old-bf16"].get("val_bpb") is None and runs["old-bf16"].val_metrics() == []
    assert runs["old-bf16"].loss is not None                              # the training loss stands
    assert runs["new-bf16"].get("val_bpb") == 2.3 and runs["autocast"].get("val_bpb") == 2.3
    assert runs["new-bf16"].val_metrics() and not runs["new-bf16"].heldout_unreadable()
    write_report(tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "**Held-out scores left out**" in text and "old-bf16" in text.split("**Held-out scores left out**")[1]
    assert "14.38" not in text
    rows = {r["run"]: r for r in csv.DictReader(io.StringIO((tmp_path / "results.csv").read_text()))}
    assert rows["old-bf16"]["val_bpb"] == "" and float(rows["new-bf16"]["val_bpb"]) == 2.3


def test_a_late_rise_is_found_and_reported(tmp_path):
    """E1 expansion 2.0 at 400M stalled from step ~1,000 and ended 0.051 nats above its best last-100 loss
    (step 1,260) with no line that spiked: a final last-100 loss LATE_RISE_NATS or more above its lowest at a
    line of the run's second half is a late rise, in the report's notes, results.csv and a prediction's
    verdict; one high line near the end (0.02 on the last-100 loss) is not, nor a run that ends at its best."""
    from elmanlab.report.instability import LATE_RISE_NATS
    from elmanlab.report.predicted import _spike_note
    for rid in ("stalled", "flat", "falling", "one-line"):
        make_run(tmp_path, rid, "e1", 1000, 16, 2, steps=600, start=5.0 if rid == "falling" else 1.5)
    edit = functools.partial(_edit_lines, tmp_path)
    edit("stalled", lambda r: r.update(loss=r["loss"] + 0.0005 * max(0, r["step"] - 400)))
    edit("one-line", lambda r: r.update(loss=r["loss"] + 0.2) if r["step"] == 590 else None)
    runs = {r.id: r for r in collect_runs(tmp_path)[0]}
    ev = runs["stalled"].late_rise()
    assert ev["best_step"] <= 410 and ev["best"] == pytest.approx(1.5, abs=1e-3)
    assert ev["final"] == pytest.approx(1.5 + 0.0005 * 155, abs=1e-6) and ev["rise"] > LATE_RISE_NATS
    assert runs["one-line"].loss_rise_late()["rise"] == pytest.approx(0.02, abs=1e-6)
    assert runs["flat"].loss_rise_late()["rise"] == pytest.approx(0.0, abs=1e-9)
    assert runs["falling"].loss_rise_late()["rise"] < 0
    assert all(runs[k].late_rise() is None for k in ("flat", "falling", "one-line"))
    assert all(runs[k].loss_spikes() == [] for k in runs)        # none of them is a spike
    write_report(tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "**Loss rose late**" in text and "stalled (1.5775 at the end against 1.5000 at step" in text
    assert not any(f"{k} (1." in text for k in ("flat", "falling", "one-line"))
    rows = {r["run"]: r for r in csv.DictReader(io.StringIO((tmp_path / "results.csv").read_text()))}
    assert float(rows["stalled"]["late_rise_nats"]) == pytest.approx(ev["rise"])
    assert rows["flat"]["late_rise_nats"] == rows["one-line"]["late_rise_nats"] == ""
    assert _spike_note([runs["stalled"], runs["flat"]]) == (
        f"; stalled's loss rose late (1.5775 at the end against 1.5000 at step {ev['best_step']})")


def test_gradient_bursts_are_counted_past_step_100_and_reported(tmp_path):
    """E1 expansion 2.0 at 400M had a step gradient norm of 325 late in the run before its late rise, where
    a calm line's stays at 1-3: a line past step 100 whose grad_norm_max reaches BURST_GRAD_NORM is a burst,
    counted in results.csv; a burst in the first 100 steps is a blow-up's business, not counted; a record
    without grad_norm_max says nothing (empty), not zero."""
    from elmanlab.report.instability import BURST_GRAD_NORM, SPIKE_AFTER
    for rid in ("bursty", "calm", "old"):
        make_run(tmp_path, rid, "e1", 1000, 16, 2, steps=600)
    edit = functools.partial(_edit_lines, tmp_path)
    big = {20: 80.0, 300: 325.0, 450: BURST_GRAD_NORM, 460: BURST_GRAD_NORM - 0.01}
    edit("bursty", lambda r: r.update(grad_norm_max=big.get(r["step"], 2.0)))
    edit("calm", lambda r: r.update(grad_norm_max=80.0 if r["step"] <= SPIKE_AFTER else 2.5))
    runs = {r.id: r for r in collect_runs(tmp_path)[0]}
    assert runs["bursty"].gradient_bursts() == [{"step": 300, "grad_norm_max": 325.0},
                                                {"step": 450, "grad_norm_max": BURST_GRAD_NORM}]
    assert runs["calm"].gradient_bursts() == [] and runs["old"].gradient_bursts() is None
    write_report(tmp_path)
    rows = {r["run"]: r for r in csv.DictReader(io.StringIO((tmp_path / "results.csv").read_text()))}
    assert (rows["bursty"]["grad_bursts"], float(rows["bursty"]["grad_burst_max"])) == ("2", 325.0)
    assert (rows["calm"]["grad_bursts"], rows["calm"]["grad_burst_max"]) == ("0", "")
    assert rows["old"]["grad_bursts"] == rows["old"]["grad_burst_max"] == ""
