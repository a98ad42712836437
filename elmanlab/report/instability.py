"""What a run's training lines say about its stability: loss spikes, blow-ups in the first steps, and a
loss that rose late, and gradient bursts. Each function reads the training lines of metrics.jsonl (``runs.read_metrics``:
``step``, ``loss`` = the mean loss since the line before, and since 2026-12-07 ``loss_max``, the line's
highest step loss, and ``grad_norm_max``, its largest step gradient norm); ``report.collect.Run`` exposes them as methods, and the report names what they find
in its notes, results.csv and a prediction's verdict.
"""
from __future__ import annotations

import math
import statistics

# A loss spike: a training line whose mean is SPIKE_NATS or more above the median of the SPIKE_WINDOW
# lines before it, past step SPIKE_AFTER (before, the loss falls too fast to judge). Over the 66 completed runs
# committed by 2026-12-07 (benchmarks/spike_scan.py) the largest such rise of a run without a visible spike was 0.161 nats
# (E1 400M seed 43 at step 1,350; 0.124 over the first 50); the three spikes rose 0.45-0.73 (E1 400M at step 830, E1 100M
# seed 43 at 940, E33 100M at 370).
SPIKE_NATS, SPIKE_WINDOW, SPIKE_AFTER = 0.25, 10, 100
# A blow-up in the first steps (up to SPIKE_AFTER, where a spike is not judged): a step's loss (``loss_max``,
# recorded since 2026-12-07) of BLOWUP_NATS or more, twice the loss of a uniform guess over bytes (ln 256).
# A fresh model starts near ln 256 (5.7-6.4 at widths 912-3584 on the CPU, benchmarks/results/first-update);
# on 2026-12-07 E1 400M reached 20.3 (seed 43, then ~100 steps near the unigram loss) and 16.3 (the fixed
# spectral norm, recovered by step 30) in its first ten steps, the reference's own E1 at most 6.0.
BLOWUP_NATS = 2 * math.log(256)
# A late rise: the run's final last-100 loss LATE_RISE_NATS or more above the lowest last-100 loss at a
# training line of its second half (from step LATE_FROM on), a slow loss of ground that no single line
# spikes. Over the 53 completed runs committed by 2026-12-07 whose lines give it (benchmarks/spike_scan.py) the
# largest such rise was 0.009 nats (windows that overlap the last) but for one run, E1 expansion 2.0 at 400M:
# 0.051 (best 1.2940 at step 1,260, then lines of 1.26-1.45 to the end; its largest line rise, 0.145, is no spike).
LATE_RISE_NATS, LATE_FROM = 0.03, 200
# A gradient burst: a training line past step SPIKE_AFTER whose largest step gradient norm (``grad_norm_max``,
# recorded since 2026-12-07) reached BURST_GRAD_NORM. In the 400M runs of 2026-12-07 a calm line's stays
# at 1-3; every lab-default E1 run that records it had at least one burst (11-325: E1 expansion 2.0's two
# seeds 325 and 53, before their late rises), none of the four E1 runs with W_h's spectral norm fixed.
BURST_GRAD_NORM = 10.0


def _finite_lines(lines: list[dict]) -> list[dict]:
    return sorted((m for m in lines if isinstance(m.get("loss"), (int, float)) and math.isfinite(m["loss"])),
                  key=lambda m: m["step"])


def _loss_lines(lines: list[dict]) -> list[dict]:
    return sorted((m for m in lines if isinstance(m.get("loss"), (int, float))), key=lambda m: m["step"])


def last100_at(lines: list[dict], step: int) -> float | None:
    """The mean training loss of steps step-99..step, as a run stopped at ``step`` would have recorded its
    last-100 loss: each line is the mean over the steps since the line before, so the lines must start a
    line at step-100 and end one at step. None where they do not."""
    return _last100_sorted(_loss_lines(lines), step)


def _last100_sorted(lines: list[dict], step: int) -> float | None:
    start, prev, total, n = max(0, step - 100), 0, 0.0, 0
    for m in lines:
        s = int(m["step"])
        if s > step:
            break
        if prev >= start:
            total += float(m["loss"]) * (s - prev)
            n += s - prev
        prev = s
    return total / n if n == step - start and prev == step and math.isfinite(total) else None


def line_rises(lines: list[dict]) -> list[dict]:
    """Each training line past step SPIKE_AFTER with SPIKE_WINDOW lines before it: its step, mean loss, the
    median of those lines, the rise above it, and its highest step loss where recorded (``loss_max``)."""
    lines = _finite_lines(lines)
    out = []
    for i in range(SPIKE_WINDOW, len(lines)):
        m = lines[i]
        if m["step"] <= SPIKE_AFTER:
            continue
        before = statistics.median(x["loss"] for x in lines[i - SPIKE_WINDOW:i])
        out.append({"step": int(m["step"]), "loss": float(m["loss"]), "median_before": before,
                    "rise": m["loss"] - before, "line": i,
                    "loss_max": m.get("loss_max") if isinstance(m.get("loss_max"), (int, float)) else None})
    return out


def loss_spikes(lines: list[dict]) -> list[dict]:
    """The loss spikes (lines that rose SPIKE_NATS or more, ``line_rises``), one per event: the line that
    rose most among lines that rose within SPIKE_WINDOW lines of each other."""
    events: list[dict] = []
    last = None
    for ev in line_rises(lines):
        if ev["rise"] < SPIKE_NATS:
            continue
        if last is not None and ev["line"] - last <= SPIKE_WINDOW:
            if ev["rise"] > events[-1]["rise"]:
                events[-1] = ev
        else:
            events.append(ev)
        last = ev["line"]
    return events


def early_blowup(lines: list[dict]) -> dict | None:
    """The line of the first SPIKE_AFTER steps with the highest step loss, where that reached BLOWUP_NATS
    (its step and ``loss_max``); None otherwise, and for records without ``loss_max``."""
    hits = [m for m in lines if isinstance(m.get("step"), (int, float)) and m["step"] <= SPIKE_AFTER
            and isinstance(m.get("loss_max"), (int, float)) and m["loss_max"] >= BLOWUP_NATS]
    if not hits:
        return None
    m = max(hits, key=lambda m: m["loss_max"])
    return {"step": int(m["step"]), "loss_max": float(m["loss_max"]), "loss": float(m["loss"])}


def loss_rise_late(lines: list[dict]) -> dict | None:
    """The final last-100 loss against the lowest last-100 loss at a training line of the run's second half
    (from step LATE_FROM, before the last line): that line's step and loss, the final loss and the rise
    (negative when the run ended at its best). None where the lines do not give both."""
    lines = _loss_lines(lines)                  # sorted once for every step's last-100 loss below
    steps = sorted({int(m["step"]) for m in lines})
    if not steps:
        return None
    end = steps[-1]
    final = _last100_sorted(lines, end)
    earlier = [(s, _last100_sorted(lines, s)) for s in steps if max(LATE_FROM, end // 2) <= s < end]
    earlier = [(s, v) for s, v in earlier if v is not None]
    if final is None or not earlier:
        return None
    step, best = min(earlier, key=lambda x: x[1])
    return {"best_step": step, "best": best, "final": final, "rise": final - best}


def late_rise(lines: list[dict]) -> dict | None:
    """``loss_rise_late`` where the rise reached LATE_RISE_NATS, else None."""
    ev = loss_rise_late(lines)
    return ev if ev is not None and ev["rise"] >= LATE_RISE_NATS else None


def gradient_bursts(lines: list[dict]) -> list[dict] | None:
    """The training lines past step SPIKE_AFTER whose ``grad_norm_max`` reached BURST_GRAD_NORM (each
    line's step and grad_norm_max), in step order; None for a record without ``grad_norm_max`` past
    SPIKE_AFTER (not recorded, where [] means none)."""
    rec = [m for m in lines if isinstance(m.get("step"), (int, float)) and m["step"] > SPIKE_AFTER
           and isinstance(m.get("grad_norm_max"), (int, float))]
    if not rec:
        return None
    return [{"step": int(m["step"]), "grad_norm_max": float(m["grad_norm_max"])}
            for m in sorted(rec, key=lambda m: m["step"])
            if not math.isfinite(m["grad_norm_max"]) or m["grad_norm_max"] >= BURST_GRAD_NORM]
