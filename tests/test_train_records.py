"""What a run records about how it ran (issue: comparisons a reviewer can trust): CUDA graphs on
by default where they apply, no silent reference on the GPU, the kernel and the code that ran."""
import json
import subprocess

import pytest
import torch

import elmanlab
from elmanlab import records
from elmanlab.config import TrainConfig
from elmanlab.errors import ElmanlabError
from elmanlab.hardware import source_info
from elmanlab.layers import E1
from elmanlab.runs import read_metrics
from elmanlab.step import check_fast_path, graph_choice as _graph_choice
from elmanlab.train import Trainer, run_training
from test_train import cfg, text_file, tiny  # noqa: F401,F811  (text_file is a fixture)

CUDA, CPU = torch.device("cuda", 0), torch.device("cpu")


@pytest.mark.parametrize("asked,device,world,compile_,want", [
    (None, CUDA, 1, False, (True, None)),
    (None, CPU, 1, False, (False, "on the CPU")),
    (None, CUDA, 1, True, (False, "--compile is on")),
    (None, CUDA, 2, False, (False, "2 processes (torchrun)")),
    (False, CUDA, 1, False, (False, "--no-cuda-graph")),
    (True, CUDA, 1, False, (True, None)),
])
def test_cuda_graph_is_on_by_default_where_it_applies(asked, device, world, compile_, want):
    c = TrainConfig(model=tiny(), out="x", steps=1, cuda_graph=asked, compile=compile_)
    assert _graph_choice(c, device, world) == want


def test_a_gpu_run_stops_before_step_1_without_its_fast_path(monkeypatch):
    info = {"path": "reference", "fast": False, "reason": "no nvcc", "fix": "install the CUDA toolkit"}
    monkeypatch.setattr(E1, "backend_info", classmethod(lambda cls, dim, opts: dict(info)))
    c = TrainConfig(model=tiny(), out="x", steps=1)
    with pytest.raises(ElmanlabError) as e:
        check_fast_path(c, CUDA)
    msg = str(e.value)
    assert "e1 has no fast path" in msg and "no nvcc" in msg and "install the CUDA toolkit" in msg
    assert "--allow-reference" in msg and "\n" not in msg
    c.allow_reference = True
    assert check_fast_path(c, CUDA) == "no nvcc"
    assert check_fast_path(TrainConfig(model=tiny(), out="x", steps=1), CPU) is None   # CPU: the reference is the path
    monkeypatch.setattr(E1, "backend_info", classmethod(lambda cls, dim, opts: {**info, "fast": True}))
    assert check_fast_path(TrainConfig(model=tiny(), out="x", steps=1), CUDA) is None


def test_the_kernel_that_ran_is_read_from_the_op(text_file, tmp_path):  # noqa: F811
    tr = Trainer(cfg(text_file, tmp_path / "r", steps=2))
    assert tr.kernel()["path"] is None                        # nothing ran yet
    tr.train_step()
    k = tr.kernel()
    assert k["family"] == "e1" and k["fast"] is False and "reference" in k["path"]
    tr.device = CUDA                                          # as if that had been a GPU step
    with pytest.raises(ElmanlabError, match="e1 ran its plain-PyTorch reference on the GPU.*--allow-reference"):
        tr._check_kernel()
    from elmanlab.ops._dispatch import record, reset_implementations_used
    reset_implementations_used()                             # the family's op fast, a helper not
    record("elman", "a fast kernel", True)
    record("short_conv", "reference", False)
    with pytest.raises(ElmanlabError, match="e1 ran the plain-PyTorch reference of short_conv on the GPU"):
        tr._check_kernel()
    tr.cfg.allow_reference = True
    tr._check_kernel()
    tr.close()


def test_summary_records_what_ran_and_the_code(text_file, tmp_path):  # noqa: F811
    s = run_training(cfg(text_file, tmp_path / "r", steps=3, eval_bytes=0))
    assert s["cuda_graph"] is False and s["cuda_graph_off"] == "on the CPU"
    assert s["allow_reference"] is False and s["reference_reason"] is None
    assert s["kernel"]["family"] == "e1" and s["kernel"]["fast"] is False
    assert "elman" in s["implementations"]
    assert s["versions"]["elmanlab"] == elmanlab.__version__
    assert s["source"] == source_info()
    git = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                         cwd=elmanlab.__path__[0])
    if git.returncode == 0:
        assert s["source"]["commit"] == git.stdout.strip() and isinstance(s["source"]["dirty"], bool)
    conf = json.loads((tmp_path / "r" / "config.json").read_text())
    assert conf["train"]["cuda_graph"] is None               # auto: decided on the machine that runs it


def test_source_from_the_environment_wins_over_git(monkeypatch):
    """A copied tree (a device machine's) may carry a git history that is not the code's: the
    environment's commit, when given, is the record's."""
    monkeypatch.setenv("ELMANLAB_SOURCE_COMMIT", "abc123")
    monkeypatch.setenv("ELMANLAB_SOURCE_DIRTY", "1")
    assert source_info() == {"commit": "abc123", "dirty": True, "from": "environment"}
    monkeypatch.delenv("ELMANLAB_SOURCE_COMMIT")
    monkeypatch.setenv("PATH", "")                            # no git to ask either
    assert source_info() == {"commit": None, "dirty": None, "from": None}


def test_each_training_line_records_its_highest_step_loss_and_gradient_norm(text_file, tmp_path):  # noqa: F811
    """A one-step spike that a line's mean spreads over its steps shows in loss_max (found on the GPU: E1
    400M's line at step 830 had mean 2.02 between lines near 1.31; which step and how high was lost).
    With one step a line the maxima are that step's own values; with five they bound the line's mean
    and its last step's norm, and the line at step 10 holds steps 6-10 only."""
    run_training(cfg(text_file, tmp_path / "one", steps=10, eval_bytes=0, log_every=1))
    ones = [m for m in read_metrics(tmp_path / "one")]
    assert len(ones) == 10 and all(m["loss_max"] == m["loss"] and m["grad_norm_max"] == m["grad_norm"] for m in ones)
    run_training(cfg(text_file, tmp_path / "five", steps=10, eval_bytes=0, log_every=5))
    fives = read_metrics(tmp_path / "five")
    assert [m["step"] for m in fives] == [5, 10]
    for m, steps in zip(fives, (ones[:5], ones[5:])):
        assert m["loss_max"] == pytest.approx(max(s["loss"] for s in steps), rel=1e-6)
        assert m["grad_norm_max"] == pytest.approx(max(s["grad_norm"] for s in steps), rel=1e-6)
        assert m["loss_max"] > m["loss"]                       # the loss falls over the first steps


def test_a_lines_counters_skip_a_nonfinite_step():
    iv = records.new_interval()
    records.add_step(iv, 2.0, float("nan"))
    records.add_step(iv, float("inf"), 5.0)
    records.add_step(iv, 1.0, 3.0)
    assert (iv["loss_sum"], iv["loss_n"], iv["loss_max"], iv["grad_norm_max"]) == (3.0, 2, 2.0, 5.0)


def test_the_recurrence_norm_is_the_largest_spectral_norm_of_w_h():
    """LM.recurrence_norm_max: the largest ||W_h||_2 over the layers, of the parameter (before a spectral
    norm rescales it); None for a family without a recurrent matrix. Checked against an SVD."""
    from elmanlab.lm import LM
    from elmanlab.sizing import model_config
    torch.manual_seed(0)
    lm = LM(model_config("e1", dim=48, depth=3))
    with torch.no_grad():
        for i, blk in enumerate(lm.blocks):          # the top singular value apart, as training makes it
            u = torch.nn.functional.normalize(torch.randn(blk.layer.W_h.shape[0]), dim=0)
            blk.layer.W_h.add_((0.5 + 0.3 * i) * torch.outer(u, u))
    true = max(torch.linalg.matrix_norm(b.layer.W_h.float(), ord=2).item() for b in lm.blocks)
    assert lm.recurrence_norm_max() == pytest.approx(true, rel=1e-4)
    fresh = LM(model_config("e1", dim=48, depth=2))   # orthogonal x 0.9: every singular value 0.9
    assert fresh.recurrence_norm_max() == pytest.approx(0.9, rel=1e-4)
    sn = LM(model_config("e1", dim=48, depth=2, options={"spectral_norm": True, "spectral_mode": "fixed"}))
    with torch.no_grad():
        sn.blocks[1].layer.W_h_param.weight.mul_(3.0)
    assert sn.recurrence_norm_max() == pytest.approx(2.7, rel=1e-4)   # the parameter, not the 0.99 it becomes
    assert LM(model_config("e42", dim=48, depth=2)).recurrence_norm_max() is not None
    assert LM(model_config("mamba2", dim=64, depth=2)).recurrence_norm_max() is None


def test_training_lines_record_the_recurrence_norm_for_the_elman_family(text_file, tmp_path):  # noqa: F811
    run_training(cfg(text_file, tmp_path / "e1", steps=10, eval_bytes=0, log_every=5))
    lines = read_metrics(tmp_path / "e1")
    assert [m["step"] for m in lines] == [5, 10]
    assert all(0.5 < m["w_h_norm_max"] < 5.0 for m in lines) and lines[0]["w_h_norm_max"] != lines[1]["w_h_norm_max"]
    run_training(cfg(text_file, tmp_path / "gru", model="mingru", steps=5, eval_bytes=0, log_every=5))
    assert all("w_h_norm_max" not in m for m in read_metrics(tmp_path / "gru"))


def test_the_recurrence_norm_of_a_wide_w_h_comes_from_power_iteration(monkeypatch):
    """Above EXACT_NORM_MAX the norm is power iteration's; here it matches the SVD of the same weights."""
    from elmanlab import lm as lm_mod
    from elmanlab.sizing import model_config
    torch.manual_seed(1)
    lm = lm_mod.LM(model_config("e1", dim=48, depth=2))
    with torch.no_grad():
        for blk in lm.blocks:
            u = torch.nn.functional.normalize(torch.randn(blk.layer.W_h.shape[0]), dim=0)
            blk.layer.W_h.add_(0.6 * torch.outer(u, u))
    exact = lm.recurrence_norm_max()
    monkeypatch.setattr(lm_mod, "EXACT_NORM_MAX", 8)
    assert lm.recurrence_norm_max() == pytest.approx(exact, rel=1e-4)
