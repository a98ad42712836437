"""Held-out loss while training: when to score, the history, the best score and the best weights.

The schedule (``--eval-every``): every N steps; by default ``AUTO_EVALS`` evaluations spread over
the budget (every ``steps / AUTO_EVALS`` steps, or with ``--minutes`` every ``minutes /
AUTO_EVALS`` of training time), fewer for a step budget where they would score more than
``AUTO_EVAL_SHARE`` of the bytes training reads (a short run is scored only at the end); 0: only
the final evaluation. Each evaluation scores the first
``--eval-bytes`` held-out bytes with the evaluation weights (Schedule-Free's average, dropout off)
exactly as ``elmanlab eval`` does (:func:`elmanlab.evaluate.evaluate_bytes`), so the last point of
the curve is the final score; with ``--eval-train-weights`` also with the weights being trained (y).
The history and the best point travel in checkpoints, so a resumed run keeps its curve; with
``--keep-best`` the best weights are written to ``best.safetensors`` whenever the score improves.
"""
from __future__ import annotations

import math
import time

import torch

from elmanlab.config import AUTO_EVAL_SHARE, AUTO_EVALS, TrainConfig
from elmanlab.evaluate import evaluate_bytes, val_fields



def schedule(cfg: TrainConfig) -> dict | None:
    """{"steps": N} or {"seconds": S} between evaluations during training; None: only at the end."""
    if cfg.eval_bytes == 0 or cfg.eval_every == 0:
        return None
    if cfg.eval_every is not None:
        return {"steps": int(cfg.eval_every)}
    if cfg.steps is not None:
        n = min(AUTO_EVALS, int(AUTO_EVAL_SHARE * cfg.steps * cfg.batch_size * cfg.seq_len / cfg.eval_bytes))
        return {"steps": max(1, math.ceil(cfg.steps / n))} if n >= 2 else None
    return {"seconds": 60.0 * cfg.minutes / AUTO_EVALS}


def score_as_trained(model, data, seq_len: int, eval_bytes: int, batch_size: int, device) -> dict:
    """``evaluate_bytes`` of ``model``'s weights as they are (Schedule-Free's y while training), dropout
    off, the model back in training mode afterwards."""
    model.eval()
    try:
        return evaluate_bytes(model, data, seq_len, eval_bytes, batch_size, device)
    finally:
        model.train()


class Validator:
    """The held-out evaluations of one run (``enabled`` False on the ranks that do not write)."""

    def __init__(self, cfg: TrainConfig, val_bytes, batch_size: int, device: torch.device, enabled: bool):
        self.cfg = cfg
        self.data = val_bytes
        self.batch_size = batch_size
        self.device = device
        self.enabled = enabled and cfg.eval_bytes > 0
        self.every = schedule(cfg)
        self.history: list[dict] = []          # one point per evaluation: step, tokens, elapsed, val_*, eval_s
        self.next_s = self.every["seconds"] if self.every and "seconds" in self.every else None

    def due(self, step: int, train_s: float) -> bool:
        """Is an evaluation due after ``step`` (the training clock at ``train_s``)?"""
        if not self.enabled or self.every is None or (self.history and self.history[-1]["step"] == step):
            return False
        if "steps" in self.every:
            return step % self.every["steps"] == 0
        return train_s >= self.next_s

    def score(self, model, step: int, tokens: int, train_s: float) -> tuple[dict, bool]:
        """Score ``model`` (already holding the evaluation weights, in eval mode); returns the point
        and whether it is the best so far."""
        t0 = time.perf_counter()
        res = evaluate_bytes(model, self.data, self.cfg.seq_len, self.cfg.eval_bytes, self.batch_size, self.device)
        point = {"step": step, "tokens": tokens, "elapsed": round(train_s, 4),
                 **val_fields(res), "eval_s": round(time.perf_counter() - t0, 4)}
        best = self.best()
        self.history.append(point)
        if self.next_s is not None:
            while self.next_s <= train_s:
                self.next_s += self.every["seconds"]
        return point, best is None or point["val_loss"] < best["val_loss"]

    def score_train_weights(self, model, point: dict) -> None:
        """Add the score of ``model``'s weights as they are (Schedule-Free's y, dropout off) to ``point``
        as val_loss_y / val_bpb_y (``--eval-train-weights``)."""
        t0 = time.perf_counter()
        res = score_as_trained(model, self.data, self.cfg.seq_len, self.cfg.eval_bytes, self.batch_size, self.device)
        point.update(val_loss_y=res["val_loss"], val_bpb_y=res["val_bpb"])
        point["eval_s"] = round(point["eval_s"] + time.perf_counter() - t0, 4)

    def last_at(self, step: int) -> dict | None:
        """The evaluation made after ``step``, if there was one."""
        return self.history[-1] if self.history and self.history[-1]["step"] == step else None

    def best(self) -> dict | None:
        """The point with the lowest held-out loss (the earliest of equal ones)."""
        return min(self.history, key=lambda p: p["val_loss"]) if self.history else None

    def summary_fields(self) -> dict:
        best = self.best()
        out = {"eval_every": self.every, "val_evals": len(self.history)}
        if best is not None:
            out.update(best_val_loss=best["val_loss"], best_val_bpb=best["val_bpb"], best_val_step=best["step"],
                       best_val_tokens=best["tokens"])
        return out

    def state_dict(self) -> dict:
        return {"history": [dict(p) for p in self.history], "next_s": self.next_s}

    def load_state_dict(self, st: dict | None) -> None:
        if not st:
            return
        self.history = [dict(p) for p in st.get("history", [])]
        if self.next_s is not None and st.get("next_s") is not None:
            self.next_s = float(st["next_s"])
