"""A Trainer's state across evaluation, checkpoints and resume, kept bit for bit.

Schedule-Free keeps two weight sequences: the optimizer's ``train()`` mode holds the gradient point
y in the parameters, ``eval()`` the average x. Evaluation and checkpointing switch to ``eval()`` and
back (``eval_weights``; a pure-bf16 run evaluates y instead, ``evaluation_point``), and the exact train-mode values are restored afterwards, so a run with
checkpoints follows bit for bit the same trajectory as one without. A checkpoint's ``state.pt``
(``save``) holds y, the optimizer, the data position (step, tokens, fingerprint), the counters and
timers, the held-out history and the RNG states (its ``model.safetensors``: x), so a resumed run
(``restore``) ends in exactly the same state as an uninterrupted one. The folders and files on disk
are :mod:`elmanlab.checkpoint`'s.
"""
from __future__ import annotations

import contextlib
import time

import torch

from elmanlab import checkpoint
from elmanlab.errors import ElmanlabError
from elmanlab.runs import BEST_WEIGHTS_FILE, RUN_FORMAT


def evaluation_point(precision: str) -> str:
    """Which weights a run's held-out scores, checkpoints and final weights use: Schedule-Free's average
    "x", or, in pure bf16 (``precision: bf16``), the weights being trained "y". In bf16 a late step of y
    (lr x (1 - beta1) x the Adam direction, ~3e-5, and its pull towards z, shrinking as 1/t) is below
    half a bf16 spacing of most weights, so y stalls while z moves on; x, formed from them as
    y - (1 - beta1) / beta1 (z - y), is then y displaced away from z ever further (a 400M minGRU scored
    14.4 bits/byte with x at a training loss of 1.86 nats/byte, docs/results/reference-400m). ekg/elman's
    pure-bf16 tables report the training loss, taken at y."""
    return "y" if precision == "bf16" else "x"


def to_eval_weights(model: torch.nn.Module, optimizer, precision: str) -> None:
    """Put the evaluation weights (``evaluation_point``) in the parameters, in evaluation mode."""
    if evaluation_point(precision) == "x":
        optimizer.eval()
    model.eval()


@contextlib.contextmanager
def eval_weights(model: torch.nn.Module, optimizer, precision: str):
    """Switch the parameters to the evaluation weights (Schedule-Free's x; pure bf16: y as it is) and
    restore the exact train point y afterwards."""
    switch = evaluation_point(precision) == "x"
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()} if switch else None
    to_eval_weights(model, optimizer, precision)
    try:
        yield
    finally:
        model.train()
        if switch:
            optimizer.train()
            with torch.no_grad():
                for k, v in model.state_dict().items():
                    v.copy_(saved[k])


def save(tr) -> None:
    """Write a checkpoint of the trainer ``tr`` at its step (rank 0 only); timed as checkpoint_s."""
    if not tr.is_main:
        return
    t0 = time.perf_counter()
    state = {
        "format": RUN_FORMAT, "step": tr.step, "tokens": tr.tokens, "fingerprint": tr.fingerprint,
        "losses": list(tr.losses), "final_loss": tr.final_loss,
        "nonfinite_total": tr.nonfinite_total, "nonfinite_run": tr.nonfinite_run,
        "warm_steps": tr.warm_steps, "timers": dict(tr.timers, wall_s=tr._wall()),
        "interval": dict(tr.interval),
        "model_train": {k: v.detach().to("cpu").clone() for k, v in tr.model.state_dict().items()},
        "optimizer": tr.optimizer.state_dict(),
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if tr.device.type == "cuda" else [],
        "validation": tr.validator.state_dict(),
    }
    best = tr.out / BEST_WEIGHTS_FILE
    extra = [best] if tr.cfg.keep_best and best.is_file() else []
    if checkpoint.write_checkpoint(tr.out, tr.step, state, tr.model, tr.eval_weights, extra):
        tr.timers["checkpoint_s"] += time.perf_counter() - t0


def restore(tr, run_dir) -> None:
    """Load the newest checkpoint of ``run_dir`` into the freshly set-up trainer ``tr`` (rank 0 first
    clears half-written checkpoints, and puts back the best weights as of that checkpoint)."""
    if tr.is_main:
        checkpoint.remove_partial_checkpoints(run_dir)
    path, st = checkpoint.read_checkpoint(run_dir)
    try:
        tr.optimizer.load_state_dict(st["optimizer"])
        with torch.no_grad():
            own = tr.model.state_dict()
            for k, v in st["model_train"].items():
                own[k].copy_(v)
        tr.step, tr.tokens, tr.fingerprint = st["step"], st["tokens"], st["fingerprint"]
        tr.losses.extend(st["losses"])
        tr.final_loss = st["final_loss"]
        tr.nonfinite_total, tr.nonfinite_run = st["nonfinite_total"], st["nonfinite_run"]
        tr.warm_steps = st["warm_steps"]
        tr.timers.update(st["timers"])
        tr.interval.update(st["interval"])
        tr.validator.load_state_dict(st.get("validation"))
    except (RuntimeError, KeyError, ValueError) as e:  # edited config.json, or a foreign state.pt
        raise ElmanlabError(f"checkpoint {path} does not match the run's config.json "
                            f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    tr.prior_wall = tr.timers["wall_s"]
    if tr.is_main:        # the best weights as of the checkpoint (a later best is made again, identically)
        checkpoint.restore_file(path.parent, run_dir, BEST_WEIGHTS_FILE)
    torch.set_rng_state(st["rng_cpu"])
    if tr.device.type == "cuda" and st["rng_cuda"]:
        with contextlib.suppress(Exception):
            torch.cuda.set_rng_state_all(st["rng_cuda"])
