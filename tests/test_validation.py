"""Held-out loss during training (--eval-every, --keep-best), dropout, the epoch warning, and the
trackers (TensorBoard, offline W&B), on tiny CPU runs."""
import json
import sys
import types

import numpy as np
import pytest
import torch

from elmanlab.checkpoint import load_model
from elmanlab.config import ModelConfig, TrainConfig
from elmanlab.data import embedded_corpus_path, open_bytes
from elmanlab.errors import ElmanlabError
from elmanlab.evaluate import evaluate_run
from elmanlab.lm import LM
from elmanlab.runs import read_metrics, read_val_metrics
from elmanlab.train import resume_training, run_training
from elmanlab.validation import schedule

from test_train import cli


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    p = d / "text.txt"
    p.write_bytes(np.asarray(open_bytes(embedded_corpus_path(), progress=False)[:200_000]).tobytes())
    return p


def cfg(text_file, out, **kw) -> TrainConfig:
    base = dict(model=ModelConfig("e1", 32, 2), out=str(out), data=str(text_file), steps=30, batch_size=4,
                seq_len=32, lr=3e-3, device="cpu", progress=False, eval_bytes=2048, log_every=5)
    base.update(kw)
    return TrainConfig(**base)


def test_schedule_defaults_to_ten_evaluations_over_the_budget(text_file, tmp_path):
    # 30 steps of 4 x 32 bytes: evaluations of 96 bytes cost at most a quarter of what training reads
    assert schedule(cfg(text_file, tmp_path, steps=30, eval_bytes=96)) == {"steps": 3}
    assert schedule(cfg(text_file, tmp_path, steps=35, eval_bytes=96)) == {"steps": 4}
    # fewer where ten would cost more: 3,840 training bytes, 192-byte evaluations -> 5 of them
    assert schedule(cfg(text_file, tmp_path, steps=30, eval_bytes=192)) == {"steps": 6}
    # a short run (the README's demo: 614,400 bytes, 262,144-byte evaluations): only at the end
    assert schedule(cfg(text_file, tmp_path, steps=300, batch_size=16, seq_len=128, eval_bytes=262_144)) is None
    # the seeds' 400M runs (1,500 steps of 16 x 512) and a --minutes budget: ten
    assert schedule(cfg(text_file, tmp_path, steps=1500, batch_size=16, seq_len=512, eval_bytes=262_144)) == {"steps": 150}
    assert schedule(cfg(text_file, tmp_path, steps=None, minutes=2.0)) == {"seconds": 12.0}
    assert schedule(cfg(text_file, tmp_path, eval_every=7)) == {"steps": 7}
    assert schedule(cfg(text_file, tmp_path, eval_every=0)) is None
    assert schedule(cfg(text_file, tmp_path, eval_bytes=0)) is None


def test_eval_every_logs_the_curve_and_keeps_the_best_weights(text_file, tmp_path):
    out = tmp_path / "run"
    s = run_training(cfg(text_file, out, steps=24, eval_every=5, keep_best=True))
    val = read_val_metrics(out)
    # every 5 steps, and the final score after the last step
    assert [v["step"] for v in val] == [5, 10, 15, 20, 24] and s["val_evals"] == 5
    assert all(v["val_bytes"] == s["val_bytes"] and v["eval_s"] > 0 for v in val)
    assert [v["tokens"] for v in val] == [v["step"] * 4 * 32 for v in val]
    assert val[-1]["val_loss"] == s["val_loss"]
    best = min(val, key=lambda v: v["val_loss"])
    assert s["best_val_step"] == best["step"] and s["best_val_loss"] == best["val_loss"]
    # the training lines are unchanged by the evaluations between them
    assert [m["step"] for m in read_metrics(out)] == [5, 10, 15, 20, 24]
    # evaluation is timed apart from the training clock
    assert s["eval_s"] >= sum(v["eval_s"] for v in val) * 0.9 and s["train_s"] < s["wall_s"] - s["eval_s"] + 1e-6
    # the best weights reproduce the best score; eval --weights best scores them, the summary keeps the final
    assert (out / "best.safetensors").is_file()
    r = evaluate_run(str(out), eval_bytes=2048, device="cpu", progress=False, weights="best")
    assert r["val_loss"] == pytest.approx(s["best_val_loss"], rel=1e-6) and r["weights"].endswith("best.safetensors")
    assert json.loads((out / "summary.json").read_text())["val_loss"] == s["val_loss"]
    final, _ = load_model(out, "cpu")
    bestm, _ = load_model(out, "cpu", "best")
    same = all(torch.equal(a, b) for a, b in zip(final.state_dict().values(), bestm.state_dict().values()))
    assert same == (best["step"] == 24)
    # the CLI: eval and generate choose the weights; progress shows the score
    r = cli("eval", out, "--weights", "best", "--bytes", 2048, "--device", "cpu", "--json")
    assert json.loads(r.stdout)["val_loss"] == pytest.approx(s["best_val_loss"], rel=1e-6)
    r = cli("generate", out, "--weights", "best", "--max-bytes", 20, "--device", "cpu", "--temperature", 0)
    assert r.returncode == 0 and len(r.stdout) > 0


def test_checkpoints_keep_the_history_and_the_best_weights(text_file, tmp_path):
    """Exact resume keeps the validation history: a run extended from its checkpoint ends with the
    same curve, the same best and the same best weights as one trained straight through."""
    full = run_training(cfg(text_file, tmp_path / "full", steps=30, eval_every=4, keep_best=True))
    part = run_training(cfg(text_file, tmp_path / "part", steps=20, eval_every=4, keep_best=True,
                            checkpoint_every=10))
    assert part["val_evals"] == 5                              # 4, 8, 12, 16, 20
    ck = tmp_path / "part" / "checkpoints" / "step_00000020"
    assert (ck / "best.safetensors").is_file()
    done = resume_training(tmp_path / "part", steps=30)
    a, b = read_val_metrics(tmp_path / "part"), read_val_metrics(tmp_path / "full")
    assert [v["step"] for v in a] == [v["step"] for v in b] == [4, 8, 12, 16, 20, 24, 28, 30]
    assert [v["val_loss"] for v in a] == [v["val_loss"] for v in b]
    assert done["val_evals"] == full["val_evals"] == 8
    assert (done["best_val_step"], done["best_val_loss"]) == (full["best_val_step"], full["best_val_loss"])
    from safetensors.torch import load_file
    wa = load_file(str(tmp_path / "part" / "best.safetensors"))
    wb = load_file(str(tmp_path / "full" / "best.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wb)


def test_a_best_file_written_after_the_checkpoint_is_rolled_back(text_file, tmp_path):
    run_training(cfg(text_file, tmp_path / "r", steps=20, eval_every=4, keep_best=True, checkpoint_every=8))
    ck = tmp_path / "r" / "checkpoints"
    import shutil
    shutil.rmtree(ck / "step_00000020")                        # as if killed after step 16's checkpoint
    (tmp_path / "r" / "summary.json").unlink()
    (tmp_path / "r" / "best.safetensors").write_bytes(b"written after the checkpoint")
    kept = (ck / "step_00000016" / "best.safetensors").read_bytes()
    from elmanlab.train import Trainer
    t = Trainer(TrainConfig.from_dict(dict(json.loads((tmp_path / "r" / "config.json").read_text())["train"],
                                           model=ModelConfig("e1", 32, 2), out=str(tmp_path / "r"))),
                resume_dir=tmp_path / "r")
    try:
        assert t.step == 16 and [p["step"] for p in t.validator.history] == [4, 8, 12, 16]
        assert (tmp_path / "r" / "best.safetensors").read_bytes() == kept
    finally:
        t.close()


def test_eval_every_zero_scores_only_at_the_end(text_file, tmp_path):
    s = run_training(cfg(text_file, tmp_path / "r", steps=12, eval_every=0))
    assert [v["step"] for v in read_val_metrics(tmp_path / "r")] == [12]
    assert s["val_evals"] == 1 and s["best_val_step"] == 12 and s["eval_every"] is None
    s = run_training(cfg(text_file, tmp_path / "n", steps=12, eval_bytes=0))
    assert read_val_metrics(tmp_path / "n") == [] and s["val_evals"] == 0 and "val_loss" not in s


def test_minutes_budget_evaluates_on_the_training_clock(text_file, tmp_path):
    s = run_training(cfg(text_file, tmp_path / "r", steps=None, minutes=0.04, eval_bytes=1024))
    val = read_val_metrics(tmp_path / "r")
    assert s["eval_every"] == {"seconds": pytest.approx(0.24)} and 3 <= len(val) <= 11
    # one evaluation per interval of training time it reaches (the last one is the final score)
    slots = [int(v["elapsed"] // 0.24) for v in val[:-1]]
    assert all(k >= 1 for k in slots) and slots == sorted(set(slots))


def test_eval_train_weights_scores_the_weights_being_trained_too(text_file, tmp_path):
    """--eval-train-weights adds val_loss_y / val_bpb_y to every evaluation and the summary: the score of the
    weights being trained (Schedule-Free's y), which the checkpoint holds, beside the usual score of the
    average x, which the final weights hold. The extra evaluation changes nothing else in the run."""
    from elmanlab.checkpoint import read_checkpoint
    from elmanlab.data import make_split
    from elmanlab.evaluate import evaluate_bytes
    on = run_training(cfg(text_file, tmp_path / "on", steps=20, eval_every=10, checkpoint_every=20,
                          eval_train_weights=True))
    off = run_training(cfg(text_file, tmp_path / "off", steps=20, eval_every=10))
    val = read_val_metrics(tmp_path / "on")
    assert [v["step"] for v in val] == [10, 20] and all("val_loss_y" in v and "val_bpb_y" in v for v in val)
    assert on["val_loss_y"] == val[-1]["val_loss_y"] and on["val_bpb_y"] == val[-1]["val_bpb_y"]
    assert abs(on["val_loss_y"] - on["val_loss"]) > 1e-4          # x and y differ after 20 steps at lr 3e-3
    # y is what the checkpoint trains on; x what the final weights hold
    _, st = read_checkpoint(tmp_path / "on")
    lm = LM(ModelConfig("e1", 32, 2))
    lm.load_state_dict(st["model_train"])
    data = make_split(str(text_file), None, 32, progress=False).val
    y = evaluate_bytes(lm.eval(), data, 32, 2048, 4, torch.device("cpu"))
    assert y["val_loss"] == pytest.approx(on["val_loss_y"], rel=1e-6)
    x = evaluate_run(str(tmp_path / "on"), eval_bytes=2048, device="cpu", progress=False)
    assert x["val_loss"] == pytest.approx(on["val_loss"], rel=1e-6)
    # the same run without the flag: the same training and the same x scores, no y
    assert [m["loss"] for m in read_metrics(tmp_path / "on")] == [m["loss"] for m in read_metrics(tmp_path / "off")]
    assert [v["val_loss"] for v in val] == [v["val_loss"] for v in read_val_metrics(tmp_path / "off")]
    assert "val_loss_y" not in off and all("val_loss_y" not in v for v in read_val_metrics(tmp_path / "off"))
    # the report shows the y score beside the x score where a run has it, and the CSV carries it
    from elmanlab.report import Report
    res = Report(tmp_path).write()
    assert "val bpb (y)" in res["markdown"] and "`--eval-train-weights`" in res["markdown"]
    import csv
    rows = {r["run"]: r for r in csv.DictReader((tmp_path / "results.csv").open())}
    assert float(rows["on"]["val_bpb_y"]) == pytest.approx(on["val_bpb_y"], rel=1e-5) and rows["off"]["val_bpb_y"] == ""


def test_bad_validation_settings_are_one_line_errors(text_file, tmp_path):
    for kw, text in ((dict(eval_every=-1), "--eval-every"), (dict(eval_every=5, eval_bytes=0), "--eval-bytes 0"),
                     (dict(keep_best=True, eval_bytes=0), "--keep-best"), (dict(dropout=1.0), "--dropout"),
                     (dict(eval_train_weights=True, eval_bytes=0), "--eval-train-weights"),
                     (dict(dropout=-0.1), "--dropout")):
        with pytest.raises(ElmanlabError, match=text):
            cfg(text_file, tmp_path / "x", **kw).validate()
    r = cli("train", "e1", "--params", "100k", "--steps", 2, "--eval-every", -3, "--out", tmp_path / "y", check=False)
    assert r.returncode != 0 and "Traceback" not in r.stderr and "--eval-every" in r.stderr
    run_training(cfg(text_file, tmp_path / "nobest", steps=4))
    r = cli("eval", tmp_path / "nobest", "--weights", "best", "--device", "cpu", check=False)
    assert r.returncode != 0 and "Traceback" not in r.stderr and "--keep-best" in r.stderr


def test_dropout_changes_training_not_evaluation(text_file, tmp_path):
    plain = run_training(cfg(text_file, tmp_path / "p", steps=10, eval_every=0))
    dropped = run_training(cfg(text_file, tmp_path / "d", steps=10, eval_every=0, dropout=0.2))
    assert dropped["dropout"] == 0.2 and plain["dropout"] == 0.0
    assert dropped["final_loss"] != plain["final_loss"]
    conf = json.loads((tmp_path / "d" / "config.json").read_text())
    assert conf["train"]["dropout"] == 0.2
    # the same weights give the same outputs with and without dropout in eval mode, and differ in training
    torch.manual_seed(0)
    a = LM(ModelConfig("e1", 32, 2), dropout=0.5)
    b = LM(ModelConfig("e1", 32, 2))
    b.load_state_dict(a.state_dict())
    x = torch.randint(0, 256, (2, 16))
    a.eval()
    b.eval()
    assert torch.equal(a(x)[0], b(x)[0])
    a.train()
    assert not torch.equal(a(x)[0], b(x)[0])
    with pytest.raises(ElmanlabError, match="dropout"):
        LM(ModelConfig("e1", 32, 2), dropout=1.5)


def test_a_budget_of_many_epochs_warns_and_the_summary_counts_them(tmp_path, capsys):
    small = tmp_path / "small.txt"
    small.write_bytes(np.asarray(open_bytes(embedded_corpus_path(), progress=False)[:3000]).tobytes())
    s = run_training(cfg(small, tmp_path / "r", steps=100, eval_bytes=0))
    err = capsys.readouterr().err
    assert "warning: 100 steps" in err and "--dropout" in err
    assert s["epochs"] == pytest.approx(100 * 4 * 32 / s["train_bytes"]) and s["epochs"] > 4
    run_training(cfg(small, tmp_path / "q", steps=5, eval_bytes=0))
    assert "warning" not in capsys.readouterr().err


def test_tensorboard_events_hold_the_scalars_and_the_config(text_file, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out = tmp_path / "r"
    run_training(cfg(text_file, out, steps=10, eval_every=5, tensorboard=True))
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "val/loss", "val/bpb"} <= tags
    assert [e.step for e in acc.Scalars("val/loss")] == [5, 10]
    want = [v["val_loss"] for v in read_val_metrics(out)]
    assert np.allclose([e.value for e in acc.Scalars("val/loss")], want, rtol=1e-6)
    assert "config/text_summary" in acc.Tags()["tensors"]


def test_wandb_logs_offline_the_same_scalars(text_file, tmp_path, monkeypatch):
    """A stand-in wandb module records what elmanlab asks of it: an offline run in RUN/wandb with the
    config, and the scalars by step."""
    calls = {"init": None, "log": [], "finished": False}

    class FakeRun:
        def log(self, data, step):
            calls["log"].append((step, data))

        def finish(self):
            calls["finished"] = True

    def init(**kw):
        calls["init"] = kw
        return FakeRun()

    fake = types.ModuleType("wandb")
    fake.init = init
    fake.__spec__ = types.SimpleNamespace(name="wandb", loader=None, origin="fake", submodule_search_locations=None)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    import importlib.util
    real_find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: fake.__spec__ if n == "wandb" else real_find(n, *a))
    out = tmp_path / "r"
    run_training(cfg(text_file, out, steps=10, eval_every=5, wandb=True))
    kw = calls["init"]
    assert kw["mode"] == "offline" and kw["dir"] == str(out / "wandb") and kw["config"]["model"]["model"] == "e1"
    steps = {s for s, d in calls["log"] if "val/loss" in d}
    assert steps == {5, 10} and calls["finished"]
    assert any("train/loss" in d for _, d in calls["log"])


def test_a_missing_tracker_package_stops_before_the_run(text_file, tmp_path, monkeypatch):
    import importlib.util
    real_find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda n, *a: None if n in ("tensorboard", "wandb") else real_find(n, *a))
    for flag, pkg in (("tensorboard", "tensorboard"), ("wandb", "wandb")):
        with pytest.raises(ElmanlabError, match=f"pip install {pkg}"):
            run_training(cfg(text_file, tmp_path / flag, steps=3, **{flag: True}))
        assert not (tmp_path / flag / "metrics.jsonl").exists()


def test_report_plots_the_validation_curves_and_ranks_by_the_best(text_file, tmp_path):
    root = tmp_path / "study"
    for model in ("e1", "e33"):
        run_training(cfg(text_file, root / model, model=ModelConfig(model, 32, 2), steps=20, eval_every=5))
    from elmanlab.report import Report, write_report
    res = write_report(root, None)
    names = sorted(p.name for p in res["plots"])
    assert "val_vs_tokens.png" in names and "val_vs_time.png" in names
    md = (root / "report.md").read_text()
    assert "best val bpb" in md
    csv_head = (root / "results.csv").read_text().splitlines()[0].split(",")
    assert {"best_val_bpb", "best_val_step", "epochs"} <= set(csv_head)
    rep = Report(root, metric="best_val_bpb")
    want = sorted((json.loads((root / m / "summary.json").read_text())["best_val_bpb"], m) for m in ("e1", "e33"))
    assert [r.id for r in rep.ranked()] == [m for _, m in want]
    assert [len(r.val_metrics()) for r in rep.ranked()] == [4, 4]
