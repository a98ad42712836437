"""Which pending job a free slot starts next, under ``--stop-after`` and ``--finish-by`` (and which
jobs ``--only`` selects, in the order of its patterns).

``--finish-by`` is for a study split over sessions of fixed length, where a run still in flight when
the session ends is lost: a job starts only if it is expected to end in time, and a shorter job later
in the queue takes the time a longer one would overrun. The expectation comes from the wall times of
the runs of the same family already finished in the study's folder (this session's or earlier ones'),
converted to the job's sharing of the GPU (below): the nearest size's wall time scaled by the tokens and by the
parameters to a power (fitted over the family's sizes when it has two, else ``DEFAULT_EXPONENT``),
times ``SAFETY``. A job whose family has no finished run is expected to take what the slowest of the
finished families would take at its size and tokens, plus ``FIRST_RUN_S`` for its kernels' first
compilation and tuning (Mamba2's and GDN's first process on a fresh machine spends 2-5 minutes in
Triton's autotuning; the margin at the session's end takes the rest). The lab's families differ in speed by
up to ~8x at one size and the E-series are the slowest: a study that queues them first (as
scaling-small does) over-estimates the faster families, where one whose fast families finish first would
under-estimate the E-series. Before any run has finished
it has no expectation and starts only before ``--stop-after`` (or, without it, before ``--finish-by``).

Sharing: runs that share a GPU (``--jobs-per-gpu``) do not run their kernels side by side; without CUDA
MPS the GPU time-slices between processes, and sharing only fills the gaps one process leaves (start-up,
compilation, evaluation, the host's share of a step). A finished run's wall time is therefore taken as
``gpu_jobs`` times what it would take alone (its record's ``gpu_jobs``, the jobs its GPU ran at once;
a record without one is taken to have shared as the job to come will), and a job's expectation is that
times the jobs it will share with (``sharing``: 1 for a job that runs alone, ``--solo-above``). This
is an assumption, not yet measured side by side: it over-estimates a small run that moves from sharing
to running alone, and should be close for the large runs ``--solo-above`` is for, whose steps keep the
GPU busy (CUDA graphs, no host gaps).

The deadline can move while the study runs: a file ``finish-at`` in the study's folder holding a Unix
time (``echo $(( $(date +%s) + 900 )) > DIR/finish-at``) replaces ``--finish-by`` for every run started
after it is written, for a session whose end is known only once it has begun.
"""
from __future__ import annotations

import fnmatch
import math
from pathlib import Path

DEFAULT_EXPONENT = 0.7      # wall time ~ params^0.7 at equal tokens: the lab's E1/Mamba2 H200 tokens/s, 20M-400M
EXPONENT_RANGE = (0.2, 1.2)
SAFETY = 1.15               # expected = scaled wall time x this
FIRST_RUN_S = 120           # + this when scaled from another model's runs (its first compilation, tuning)
TIME_BUDGET_EXTRA_S = 120   # a `minutes` budget: + start-up, graph capture, the final evaluation
FINISH_AT_FILE = "finish-at"


def job_tokens(rec: dict) -> int | None:
    """Training tokens of a job record (steps x batch x length), None for a time budget."""
    from elmanlab.config import TrainConfig
    t = rec.get("train") or {}
    if t.get("steps") is None:
        return None
    return int(t["steps"]) * int(t.get("batch_size", TrainConfig.batch_size)) * \
        int(t.get("seq_len", TrainConfig.seq_len))


def _params(rec: dict) -> float | None:
    p = (rec.get("size") or {}).get("params")
    return float(p) if p else None


def _scaled_s(rec: dict, runs: list[dict], sharing: int = 1) -> float | None:
    """The nearest size's seconds per token among ``runs`` (one model's finished runs), scaled to
    ``rec``'s tokens and parameters (params^exponent) and from each run's sharing of its GPU to
    ``sharing``, x SAFETY; None without such runs."""
    tokens, n = job_tokens(rec), _params(rec)
    same = [(r["wall_s"] / job_tokens(r) * sharing / (r.get("gpu_jobs") or sharing), _params(r)) for r in runs
            if r.get("wall_s") and job_tokens(r) and _params(r)]
    if not tokens or not n or not same:
        return None
    exponent = DEFAULT_EXPONENT
    if len({p for _, p in same}) >= 2:            # least squares of log(s per token) on log(params)
        xs = [math.log(p) for _, p in same]
        ys = [math.log(s) for s, _ in same]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        exponent = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
        exponent = min(max(exponent, EXPONENT_RANGE[0]), EXPONENT_RANGE[1])
    per_token, p_ref = min(same, key=lambda sp: abs(math.log(sp[1] / n)))
    return per_token * tokens * (n / p_ref) ** exponent * SAFETY


def expected_wall_s(rec: dict, finished: list[dict], other_models: bool = False,
                    sharing: int = 1) -> float | None:
    """Seconds the job ``rec`` is expected to take sharing its GPU with ``sharing`` - 1 others, from the
    ``finished`` job records (status completed, with ``wall_s``) of its model; None when none is of its
    model. ``other_models``: then the most any finished model would take at its size, +
    ``FIRST_RUN_S`` (None when none has finished)."""
    t = rec.get("train") or {}
    if t.get("minutes") is not None:
        return 60 * float(t["minutes"]) * SAFETY + TIME_BUDGET_EXTRA_S
    by_model: dict = {}
    for r in finished:
        if r.get("status") == "completed":
            by_model.setdefault(r.get("model"), []).append(r)
    if rec.get("model") in by_model or not other_models:
        return _scaled_s(rec, by_model.get(rec.get("model"), []), sharing)
    ests = [e for e in (_scaled_s(rec, runs, sharing) for runs in by_model.values()) if e is not None]
    return max(ests) + FIRST_RUN_S if ests else None


def only_selects(only: list[str] | None, name: str) -> bool:
    """Whether ``--only``'s shell patterns select the job named ``name`` (every job without --only)."""
    return only is None or any(fnmatch.fnmatchcase(name, p) for p in only)


def only_rank(only: list[str] | None, name: str) -> int:
    """Where the job named ``name`` comes in ``--only``'s order: the index of the first pattern it
    matches (the selected jobs start pattern by pattern, each pattern's in queue order); 0 without
    --only."""
    if not only:
        return 0
    return next((i for i, p in enumerate(only) if fnmatch.fnmatchcase(name, p)), len(only))


def read_finish_at(folder) -> float | None:
    """The Unix time in ``folder/finish-at``, or None when there is no such file (or it holds no number)."""
    try:
        return float(Path(folder, FINISH_AT_FILE).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def next_job(todo: list[dict], finished: list[dict], elapsed_s: float, stop_after_s: float | None,
             finish_by_s: float | None, sharing=None) -> tuple[dict | None, list[tuple[dict, float]]]:
    """The first job of ``todo`` (in queue order) that may start ``elapsed_s`` seconds into the
    study, or None; and the jobs passed over as expected to end after ``finish_by_s`` (with their
    expected seconds). Without ``finish_by_s``: the first job, unless ``stop_after_s`` has passed.
    ``sharing(job)``: the jobs its GPU will run at once with it (default 1)."""
    if not todo:
        return None, []
    before_stop = stop_after_s is None or elapsed_s < stop_after_s
    if finish_by_s is None:
        return (todo[0] if before_stop else None), []
    passed = []
    for rec in todo:
        est = expected_wall_s(rec, finished, other_models=True, sharing=sharing(rec) if sharing else 1)
        if est is None:
            if before_stop and elapsed_s < finish_by_s:
                return rec, passed
        elif elapsed_s + est <= finish_by_s:
            rec["expected_s"] = round(est)
            return rec, passed
        else:
            passed.append((rec, est))
    return None, passed
