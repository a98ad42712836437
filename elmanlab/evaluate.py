"""Held-out loss in nats/byte and bits/byte, deterministic.

The bytes scored: the first ``eval_bytes`` (default 262,144 = 256 KiB) bytes of the validation
stream (the run's ``--val-data`` file, else the held-out tail of its training file, else the file
given to ``elmanlab eval --data``), cut into consecutive windows of ``seq_len + 1`` bytes that
overlap by one byte, so every byte after the first of each window is predicted exactly once. Each
window starts from a zero recurrent state, like training. With n bytes available,
``W = (min(n, eval_bytes) - 1) // seq_len`` windows score ``W * seq_len`` bytes (``val_bytes``).
The windows are always the same, the model runs in eval mode (Schedule-Free's averaged weights),
and the same precision as training (bf16 autocast on CUDA, fp32 on CPU); the sum of negative
log-likelihoods is accumulated in float64.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from elmanlab.config import DEFAULT_EVAL_BYTES
from elmanlab.errors import ElmanlabError
from elmanlab.hardware import autocast

LN2 = math.log(2.0)
VAL_FIELDS = ("val_loss", "val_bpb", "val_bytes")        # what a summary records of a held-out score


def val_fields(res: dict) -> dict:
    """The summary.json fields of an evaluation result."""
    return {k: res[k] for k in VAL_FIELDS}


@torch.no_grad()
def evaluate_bytes(model, data: np.ndarray, seq_len: int, eval_bytes: int = DEFAULT_EVAL_BYTES,
                   batch_size: int = 16, device: torch.device | None = None) -> dict:
    """Score the first ``eval_bytes`` bytes of ``data``; returns val_loss (nats/byte), val_bpb, val_bytes."""
    if eval_bytes < seq_len + 1:
        raise ElmanlabError(f"--eval-bytes {eval_bytes} is less than one window of seq_len {seq_len} + 1")
    n = min(int(eval_bytes), len(data))
    windows = (n - 1) // seq_len
    if windows < 1:
        raise ElmanlabError(f"the validation data has {len(data):,} bytes, fewer than one window of "
                            f"seq_len {seq_len} + 1; give a longer file")
    device = device or next(model.parameters()).device
    arr = np.asarray(data[: windows * seq_len + 1], dtype=np.uint8)
    flat = torch.from_numpy(arr.copy())
    idx = torch.arange(windows)[:, None] * seq_len + torch.arange(seq_len + 1)[None, :]
    was_training = model.training
    model.eval()
    total = 0.0
    try:
        for i in range(0, windows, max(1, batch_size)):
            x = flat[idx[i:i + batch_size]].to(device).long()
            inp, tgt = x[:, :-1], x[:, 1:]
            with autocast(device, model=model):
                logits, _ = model(inp)
            nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tgt.reshape(-1), reduction="sum")
            total += float(nll.double().item())
    finally:
        model.train(was_training)
    count = windows * seq_len
    loss = total / count
    return {"val_loss": loss, "val_bpb": loss / LN2, "val_bytes": count}


def evaluate_run(run_dir: str, data: str | None = None, eval_bytes: int = DEFAULT_EVAL_BYTES,
                 device: str = "auto", batch_size: int | None = None, progress: bool = True,
                 update_summary: bool = True, weights: str = "final") -> dict:
    """Evaluate a run folder's final (or newest checkpoint) weights, or with ``weights="best"`` those
    of its best held-out score (``--keep-best``).

    Without ``data`` the run's own validation stream is scored and, when the run has a
    summary.json, its val_loss / val_bpb / val_bytes are updated (atomically; final weights only).
    """
    from elmanlab.checkpoint import load_model
    from elmanlab.data import open_bytes, validation_bytes
    from elmanlab.fsutil import atomic_write_json
    from elmanlab.hardware import resolve_device
    from elmanlab.runs import SUMMARY_FILE, read_json, weights_path
    if eval_bytes is None or eval_bytes < 1:
        raise ElmanlabError(f"--bytes must be positive, got {eval_bytes}")
    run = Path(run_dir).expanduser()
    dev = resolve_device(device)
    model, conf = load_model(run, dev, weights)
    tc = conf["train"]
    seq_len = int(tc["seq_len"])
    if data is None:
        vals = validation_bytes(tc.get("data"), tc.get("val_data"), progress=progress)
        source = tc.get("val_data") or f"held-out tail of {conf['data']['data']}"
    else:
        vals = open_bytes(data, progress=progress)
        source = str(Path(data).expanduser())
    t0 = time.perf_counter()
    res = evaluate_bytes(model, vals, seq_len, eval_bytes, batch_size or int(tc.get("batch_size", 16)), dev)
    res.update({"run": str(run), "source": source, "seq_len": seq_len, "weights": str(weights_path(run, weights)),
                "eval_s": time.perf_counter() - t0})
    if data is None and update_summary and weights == "final" and (run / SUMMARY_FILE).is_file():
        s = read_json(run / SUMMARY_FILE)
        s.update(val_fields(res))
        atomic_write_json(run / SUMMARY_FILE, s)
    return res
