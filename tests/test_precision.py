"""Train setting ``precision: bf16`` (ekg/elman's `.bfloat16()` runs): the model, its gradients and
Schedule-Free's state in bf16, no autocast; recorded; scored, sampled and resumed as it trained.
(CPU, tiny models; on CUDA the fast kernels take bf16 weights: tests/test_train_gpu.py.)"""
import json

import pytest
import torch

from elmanlab.checkpoint import load_model
from elmanlab.config import ModelConfig, TrainConfig
from elmanlab.errors import ElmanlabError
from elmanlab.evaluate import evaluate_run
from elmanlab.generate import generate
from elmanlab.hardware import autocast, is_pure_bf16, uses_autocast
from elmanlab.layers import FAMILIES
from elmanlab.train import Trainer, resume_training, run_training
from test_train import cfg, text_file, tiny  # noqa: F401 - text_file is a fixture


def _norm_gains(model):
    return torch.cat([m.weight.detach().float().flatten() for m in model.modules()
                      if isinstance(m, (torch.nn.RMSNorm, torch.nn.LayerNorm))])


@pytest.mark.parametrize("model", FAMILIES)
def test_every_family_trains_in_pure_bf16(text_file, tmp_path, model):
    c = cfg(text_file, tmp_path / model, steps=4, eval_bytes=0, precision="bf16", lr=3e-4)
    c.model = ModelConfig(model, 64, 2, {"head_dim": 16}) if model == "transformer" else tiny(model)
    tr = Trainer(c)
    assert is_pure_bf16(tr.model) and all(p.dtype == torch.bfloat16 for p in tr.model.parameters())
    losses = [tr.train_step()[0] for _ in range(4)]
    assert all(torch.isfinite(torch.tensor(losses)))
    # Schedule-Free's state follows the parameters' dtype: the reference's bf16 optimizer
    for st in tr.optimizer.state.values():
        assert all(v.dtype == torch.bfloat16 for k, v in st.items() if torch.is_tensor(v) and v.ndim > 0), model
    # a norm gain of 1.0 never moves in bf16: a step of ~lr = 3e-4 is below half its bf16 spacing (2^-9)
    assert torch.equal(_norm_gains(tr.model), torch.ones_like(_norm_gains(tr.model)))


def test_fp32_master_weights_do_move_the_gains(text_file, tmp_path):
    """The same run with the default precision: the gains move (what pure bf16 loses)."""
    tr = Trainer(cfg(text_file, tmp_path / "fp32", steps=4, eval_bytes=0, lr=3e-4))
    for _ in range(4):
        tr.train_step()
    assert not is_pure_bf16(tr.model) and (_norm_gains(tr.model) - 1).abs().max() > 5e-4


def test_bf16_run_is_recorded_scored_and_resumed_as_it_trained(text_file, tmp_path):
    full = run_training(cfg(text_file, tmp_path / "full", steps=12, checkpoint_every=6, precision="bf16"))
    assert full["precision"] == "bf16" and full["status"] == "completed"
    assert json.loads((tmp_path / "full" / "config.json").read_text())["train"]["precision"] == "bf16"
    # `elmanlab eval` loads the weights into a bf16 model and scores them as the final evaluation did
    model, conf = load_model(tmp_path / "full", "cpu")
    assert is_pure_bf16(model)
    res = evaluate_run(str(tmp_path / "full"), eval_bytes=4096, device="cpu", progress=False, update_summary=False)
    assert res["val_loss"] == pytest.approx(full["val_loss"], rel=1e-6)
    assert len(generate(model, b"The ", max_bytes=8, seed=1)) == 8
    # exact resume: 6 steps, then 6 more, equal the 12 in one go
    run_training(cfg(text_file, tmp_path / "part", steps=6, checkpoint_every=6, precision="bf16"))
    done = resume_training(tmp_path / "part", steps=12)
    assert done["final_loss"] == full["final_loss"] and done["precision"] == "bf16"
    a, b = (load_model(tmp_path / run, "cpu")[0].state_dict() for run in ("part", "full"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)       # the same bf16 weights


def test_precision_setting_is_checked_and_autocast_stays_off_for_bf16_models():
    with pytest.raises(ElmanlabError, match="--precision must be one of autocast, bf16, got 'fp16'"):
        TrainConfig(model=tiny(), out="x", steps=1, precision="fp16").validate()
    m = torch.nn.Linear(4, 4)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert uses_autocast(cuda) and uses_autocast(cuda, m) and not is_pure_bf16(m)
    assert not uses_autocast(cuda, m.to(torch.bfloat16)) and is_pure_bf16(m)
    assert not uses_autocast(cpu) and not autocast(cpu)._enabled


def test_weight_decay_on_all_decays_every_parameter(text_file, tmp_path):
    """weight_decay_on: all (ekg/elman's AdamWScheduleFree(model.parameters(), weight_decay=0.1)) puts
    the norm gains and biases in the decayed group; the default keeps them out; recorded."""
    def groups(on):
        tr = Trainer(cfg(text_file, tmp_path / on, steps=1, eval_bytes=0, weight_decay_on=on))
        return [(g["weight_decay"], {p.ndim for p in g["params"]}) for g in tr.optimizer.param_groups]
    assert groups("matrices") == [(0.1, {2}), (0.0, {1})] and groups("all") == [(0.1, {1, 2})]
    with pytest.raises(ElmanlabError, match="--weight-decay-on must be one of matrices, all, got 'norms'"):
        TrainConfig(model=tiny(), out="x", steps=1, weight_decay_on="norms").validate()
    s = run_training(cfg(text_file, tmp_path / "rec", steps=2, eval_bytes=0, weight_decay_on="all"))
    assert s["weight_decay_on"] == "all" and s["precision"] == "autocast"


def test_schedule_free_average_cannot_be_formed_in_bf16():
    """Why a pure-bf16 run is scored with y: a weight of 0.02 under noisy gradients whose mean favours
    growing it. y's own steps (lr x (1 - beta1) x the Adam direction, ~3e-5, and the pull towards z,
    (z - y) / step) fall below half a bf16 spacing (6.1e-5) and round away, so y stalls (it covers
    less than half of fp32's y travel) while z moves on; Schedule-Free's average, formed from them as
    x = y - (1 - beta1) / beta1 (z - y), is then y displaced away from z by more than in fp32."""
    from schedulefree import AdamWScheduleFree

    def run(dtype):
        torch.manual_seed(0)
        w = torch.nn.Parameter(torch.full((256,), 0.02, dtype=dtype))
        opt = AdamWScheduleFree([w], lr=3e-4, weight_decay=0.0)
        opt.train()
        for _ in range(1000):
            w.grad = (torch.randn(256) - 0.3).to(dtype)      # the loss falls as w grows, noisily
            opt.step()
        y, z = w.detach().float().mean().item(), opt.state[w]["z"].float().mean().item()
        opt.eval()
        return y, z, w.detach().float().mean().item()
    y16, z16, x16 = run(torch.bfloat16)
    y32, z32, x32 = run(torch.float32)
    assert abs(z16 - z32) < 0.2 * (z32 - 0.02)                         # z moves in both
    assert y16 - 0.02 < 0.5 * (y32 - 0.02)                             # y stalls in bf16
    assert (y16 - x16) > 1.5 * (y32 - x32) > 0                         # x further behind y


def test_bf16_runs_score_and_save_the_weights_being_trained(text_file, tmp_path):
    """precision bf16: the held-out score and model.safetensors use y (summary.json says eval_weights
    "y"); the default precision uses Schedule-Free's average x (eval_weights "x"), which differs from y."""
    from elmanlab.checkpoint import load_model as load
    for precision, point in (("bf16", "y"), ("autocast", "x")):
        s = Trainer(cfg(text_file, tmp_path / precision, steps=8, eval_every=4, precision=precision)).run()
        assert s["eval_weights"] == point and s["val_evals"] == 2
        tr = Trainer(cfg(text_file, tmp_path / f"{precision}-y", steps=8, eval_bytes=0, precision=precision))
        for _ in range(8):                                  # the same steps, never evaluated: y
            tr.train_step()
        y = tr.model.state_dict()
        saved = load(tmp_path / precision, "cpu")[0].state_dict()
        same = all(torch.equal(saved[k].to(y[k].dtype), y[k]) for k in y)
        assert same == (point == "y"), precision
    with pytest.raises(ElmanlabError, match="--eval-train-weights with --precision bf16"):
        TrainConfig(model=tiny(), out="x", steps=1, precision="bf16", eval_train_weights=True).validate()
