"""A training run's records, as a Trainer writes them into its run folder: ``config.json`` before
the first step, the training lines of ``metrics.jsonl`` as it goes, at the end the final weights
(``model.safetensors``, Schedule-Free's average) and ``summary.json`` (also, with status failed and
the error, after a crash). Functions of a Trainer; only rank 0 writes. The files' contract and
their readers are :mod:`elmanlab.runs`; the metrics lines and the trackers :mod:`elmanlab.metrics`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import time

import numpy as np

from elmanlab import checkpoint, train_state
from elmanlab.fsutil import atomic_write_json
from elmanlab.hardware import peak_bf16_flops, peak_memory_gb, source_info, versions
from elmanlab.metrics import MetricsLog
from elmanlab.ops import implementations_used
from elmanlab.runs import CONFIG_FILE, GPU_JOBS_ENV, RUN_FORMAT, SUMMARY_FILE


def gpu_jobs() -> int:
    """Jobs sharing this run's GPU, as a study's --jobs-per-gpu says (1: the GPU was this run's alone)."""
    raw = os.environ.get(GPU_JOBS_ENV, "1")
    return int(raw) if raw.isdigit() and int(raw) >= 1 else 1


def run_config(tr) -> dict:
    """config.json: everything that rebuilds the model and the run (also the trackers' config)."""
    return {"format": RUN_FORMAT, "model": tr.cfg.model.to_dict(), "params": tr.n_params,
            "train": {k: v for k, v in tr.cfg.to_dict().items() if k != "model"},
            "data": tr.split.describe(), "world_size": tr.world}


def write_config(tr) -> None:
    if tr.is_main:
        atomic_write_json(tr.out / CONFIG_FILE, run_config(tr))


def open_metrics(tr) -> MetricsLog | None:
    """metrics.jsonl for appending (resuming, the lines past the checkpoint's step are dropped), and the
    requested trackers; None on the ranks that do not write."""
    if not tr.is_main:
        return None
    return MetricsLog(tr.out, None if tr.resume_dir is None else tr.step, run_config(tr),
                      tensorboard=tr.cfg.tensorboard, wandb=tr.cfg.wandb)


def new_interval() -> dict:
    """The counters of one training line: the summed loss and its steps, the highest step loss and
    gradient norm (a spike inside a line shows though the mean hides it), tokens and time (timed steps)."""
    return {"loss_sum": 0.0, "loss_n": 0, "loss_max": None, "grad_norm_max": None, "tokens": 0, "time": 0.0}


def add_step(iv: dict, loss: float, grad_norm: float) -> None:
    """Count one step's finite loss and gradient norm into the line's counters ``iv``."""
    if np.isfinite(loss):
        iv["loss_sum"] += loss
        iv["loss_n"] += 1
        iv["loss_max"] = loss if iv["loss_max"] is None else max(iv["loss_max"], loss)
    if np.isfinite(grad_norm):
        iv["grad_norm_max"] = grad_norm if iv["grad_norm_max"] is None else max(iv["grad_norm_max"], grad_norm)


def log_training(tr) -> None:
    """A training line for the steps since the last one (their mean loss and speed, the highest step
    loss and gradient norm); starts the next."""
    iv = tr.interval
    rec = {"step": tr.step,
           "loss": iv["loss_sum"] / iv["loss_n"] if iv["loss_n"] else None,
           "tokens": tr.tokens, "elapsed": round(tr.timers["train_s"], 4),
           "tokens_per_s": round(iv["tokens"] / iv["time"], 2) if iv["time"] > 0 else None,
           "lr": float(tr.optimizer.param_groups[0].get("scheduled_lr", tr.cfg.lr)),
           "grad_norm": tr.last_grad_norm,
           "loss_max": iv.get("loss_max"), "grad_norm_max": iv.get("grad_norm_max")}
    if tr.metrics is not None:
        w = tr.model.recurrence_norm_max()
        if w is not None:
            rec["w_h_norm_max"] = w
        tr.metrics.write(rec)
    tr.interval = new_interval()


def summary(tr, status: str, error: str | None = None) -> dict:
    """summary.json of the run as it stands (with ``error`` for a failed run)."""
    cfg = tr.cfg
    tps = tr.tokens_per_s()
    peak = peak_bf16_flops(tr.device) if tr.device.type == "cuda" else None
    losses = list(tr.losses)
    s = {
        "model": cfg.model.model, "params": tr.n_params, "dim": cfg.model.dim, "depth": cfg.model.depth,
        "steps": tr.step, "tokens": tr.tokens,
        "loss_last100": float(np.mean(losses)) if losses else None,
        "final_loss": tr.final_loss,
        "tokens_per_s": tps,
        "mfu": (tr.flops_per_token() * tps / (peak * tr.world)) if (peak and tps) else None,
        "flops_per_token": tr.flops_per_token(),
        "peak_memory_gb": peak_memory_gb(tr.device),
        "wall_s": tr._wall(),
        "train_s": tr.timers["train_s"], "warmup_s": tr.timers["warmup_s"],
        "checkpoint_s": tr.timers["checkpoint_s"], "eval_s": tr.timers["eval_s"],
        "data_fingerprint": tr.fingerprint,
        "world_size": tr.world, "device": tr.device.type, "gpu_jobs": gpu_jobs(), "versions": versions(tr.device),
        "status": status,
        "config": cfg.model.to_dict(), "options": dataclasses.asdict(cfg.model.options),
        "seed": cfg.seed, "batch_size": cfg.batch_size, "seq_len": cfg.seq_len, "lr": cfg.lr,
        "weight_decay": cfg.weight_decay, "warmup_steps": cfg.warmup_steps, "grad_clip": cfg.grad_clip,
        "precision": cfg.precision, "eval_weights": train_state.evaluation_point(cfg.precision),
        "weight_decay_on": cfg.weight_decay_on,
        "budget": cfg.budget, "nonfinite_steps": tr.nonfinite_total, "dropout": cfg.dropout, "keep_best": cfg.keep_best,
        "epochs": tr.epochs(), "train_bytes": tr.split.train_bytes, **tr.validator.summary_fields(),
        "compile": cfg.compile, "cuda_graph": tr.use_graph, "cuda_graph_off": tr.graph_note,
        "allow_reference": cfg.allow_reference, "reference_reason": tr.reference_note,
        "kernel": tr.kernel(), "implementations": implementations_used(), "source": source_info(),
        "data": tr.split.data_path, "val_data": tr.split.val_path,
        "run_dir": str(tr.out),
    }
    if error is not None:
        s["error"] = error
    return s


def finish(tr, status: str) -> dict:
    """The end of a run that ran its loop: the final weights, the held-out score (a completed run) and
    summary.json; returns the summary."""
    from elmanlab.evaluate import val_fields
    extra = {}
    if tr.is_main:
        if tr.cfg.eval_bytes > 0 and status == "completed":
            # the loop scores the last step; a run that had no step left to take is scored here
            point = tr.validator.last_at(tr.step) or tr.validate()
            extra = val_fields(point)
            extra.update({k: point[k] for k in ("val_loss_y", "val_bpb_y") if k in point})
        t0 = time.perf_counter()
        # final weights: Schedule-Free's average x (pure bf16: the weights as trained, y)
        train_state.to_eval_weights(tr.model, tr.optimizer, tr.cfg.precision)
        checkpoint.save_weights(tr.model, tr.out)
        tr.timers["eval_s"] += time.perf_counter() - t0
    s = summary(tr, status)
    s.update(extra)
    if tr.is_main:
        atomic_write_json(tr.out / SUMMARY_FILE, s)
    return s


def fail(tr, message: str) -> None:
    """Record a run that failed after it started (summary.json with status failed and the error)."""
    if not tr.is_main or not tr.out.is_dir():
        return
    with contextlib.suppress(OSError):
        atomic_write_json(tr.out / SUMMARY_FILE, summary(tr, "failed", message))
