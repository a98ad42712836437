"""The on-disk run contract, torch-free: what a run folder and a study folder hold, and how to read them.

A run folder (the ``--out`` of ``elmanlab train``)::

    config.json          format, model, train settings, data description: rebuilds the model and the run
    metrics.jsonl        one line per logged step
    summary.json         written at the end (also for a failed run: status + error)
    model.safetensors    the final weights (Schedule-Free's evaluation weights)
    best.safetensors     with --keep-best: the weights of the best held-out score (summary: best_val_step)
    tensorboard/, wandb/ with --tensorboard / --wandb: the trackers' files
    checkpoints/step_XXXXXXXX/{model.safetensors, state.pt}   the newest two, with --checkpoint-every

A study folder (the ``--out`` of ``elmanlab study``) holds one run folder per job, ``study.json``
(the expanded jobs and their status), ``logs/`` (one log per job), ``report.md``, ``results.csv``
and ``plots/``. Every reader of runs (train's resume, evaluate, generate, study, report) goes
through the functions here.
"""
from __future__ import annotations

import json
import math
import os
import re
import tempfile
from pathlib import Path

from elmanlab.errors import ElmanlabError

RUN_FORMAT = "elmanlab-run-v1"
CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.jsonl"
WEIGHTS_FILE = "model.safetensors"
BEST_WEIGHTS_FILE = "best.safetensors"
WEIGHT_CHOICES = ("final", "best")  # what `eval` and `generate --weights` can load
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_STATE = "state.pt"
RUN_FILES = (CONFIG_FILE, SUMMARY_FILE, METRICS_FILE, WEIGHTS_FILE, BEST_WEIGHTS_FILE, CHECKPOINT_DIR)

STATE_FILE = "study.json"           # a study folder's state: the expanded jobs and their status
LOCK_FILE = ".study.lock"           # one `elmanlab study` process per study folder
LOG_DIR = "logs"                    # one log per job
PLOTS_DIR = "plots"
GPU_JOBS_ENV = "ELMANLAB_GPU_JOBS"  # set by a study running several jobs per GPU; each run records it (gpu_jobs)
ASIDE = re.compile(r"\.(failed|interrupted)-\d+$")     # run folders a study moved aside (RUN.failed-1)


# ---------------------------------------------------------------- JSON

def read_json(path: str | os.PathLike) -> dict:
    """The JSON in ``path``; a one-line error when it is missing or unreadable."""
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, json.JSONDecodeError) as e:
        raise ElmanlabError(f"cannot read {path}: {e}") from None


def read_json_or_none(path: str | os.PathLike):
    """The JSON in ``path``, or None when it is missing or unreadable (e.g. being written)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------- run folders

def is_run_dir(path: str | os.PathLike) -> bool:
    conf = read_json_or_none(Path(path) / CONFIG_FILE)
    return isinstance(conf, dict) and conf.get("format") == RUN_FORMAT


def load_run_config(run_dir: str | os.PathLike) -> dict:
    """config.json of a run folder; a one-line error naming the fix when ``run_dir`` is not one."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise ElmanlabError(f"{run_dir} does not exist; give the --out folder of `elmanlab train`")
    if not is_run_dir(run_dir):
        raise ElmanlabError(f"{run_dir} is not a run folder (no elmanlab config.json); "
                            f"give the --out folder of `elmanlab train`")
    return read_json(run_dir / CONFIG_FILE)


def read_summary(run_dir: str | os.PathLike) -> dict | None:
    """summary.json of a run folder, or None when it has none (yet) or it is unreadable."""
    s = read_json_or_none(Path(run_dir) / SUMMARY_FILE)
    return s if isinstance(s, dict) else None


def run_status(run_dir: str | os.PathLike) -> tuple[str, str | None, dict | None]:
    """(status, reason, summary) of a run folder: ``absent`` (no summary.json), ``completed``,
    ``failed``, ``stopped_nonfinite`` (or any other status a summary records)."""
    s = read_summary(run_dir)
    if s is None:
        return "absent", None, None
    st = s.get("status") or "completed"
    return st, (s.get("error") or (None if st == "completed" else st)), s


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints, oldest first (a checkpoint folder appears only once fully written)."""
    d = Path(run_dir) / CHECKPOINT_DIR
    if not d.is_dir():
        return []
    out = [c for c in d.iterdir() if re.fullmatch(r"step_\d{8,}", c.name)
           and (c / WEIGHTS_FILE).is_file() and (c / CHECKPOINT_STATE).is_file()]
    return sorted(out, key=lambda c: int(c.name[5:]))


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def has_checkpoint(run_dir: str | os.PathLike) -> bool:
    """Whether ``elmanlab train --resume`` can continue this folder."""
    return is_run_dir(run_dir) and bool(list_checkpoints(run_dir))


def weights_path(run_dir: str | os.PathLike, which: str = "final") -> Path:
    """The final weights, else the newest checkpoint's; ``which="best"``: the best held-out score's
    (a run trained with --keep-best)."""
    run_dir = Path(run_dir)
    if which not in WEIGHT_CHOICES:
        raise ElmanlabError(f"--weights must be one of {', '.join(WEIGHT_CHOICES)}, got {which!r}")
    if which == "best":
        if (run_dir / BEST_WEIGHTS_FILE).is_file():
            return run_dir / BEST_WEIGHTS_FILE
        raise ElmanlabError(f"{run_dir} has no {BEST_WEIGHTS_FILE}: best weights are kept by runs trained with "
                            f"--keep-best (and a held-out evaluation); use --weights final")
    if (run_dir / WEIGHTS_FILE).is_file():
        return run_dir / WEIGHTS_FILE
    ckpts = list_checkpoints(run_dir)
    if ckpts:
        return ckpts[-1] / WEIGHTS_FILE
    raise ElmanlabError(f"{run_dir} has no weights yet (no model.safetensors and no checkpoint); "
                        f"let the run finish or train with --checkpoint-every N")


def _metric_lines(run_dir: str | os.PathLike, value: str) -> list[dict]:
    """The lines of metrics.jsonl with a finite ``value`` and numeric step and tokens, by step (a torn
    last line is ignored)."""
    rows = []
    try:
        with open(Path(run_dir) / METRICS_FILE) as f:
            for line in f:
                try:
                    r = json.loads(line)
                except ValueError:
                    continue
                if isinstance(r, dict) and all(isinstance(r.get(k), (int, float)) for k in ("step", value, "tokens")) \
                        and math.isfinite(r[value]):
                    rows.append(r)
    except OSError:
        return []
    rows.sort(key=lambda r: r["step"])
    return rows


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The training lines of metrics.jsonl (finite loss, step and tokens), by step."""
    return _metric_lines(run_dir, "loss")


def read_val_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The held-out lines of metrics.jsonl (finite val_loss, step and tokens), by step."""
    return _metric_lines(run_dir, "val_loss")


def check_new_run_dir(out: str | os.PathLike) -> Path:
    """Create ``out`` for a new run: an error when it is a file, already holds a run or is not writable."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ElmanlabError(f"--out {out} is a file; give a folder")
    if out.is_dir():
        clash = [f for f in RUN_FILES if (out / f).exists()]
        if clash:
            raise ElmanlabError(f"--out {out} already holds a run ({', '.join(clash)}); continue it with "
                                f"`elmanlab train --resume {out}` or choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out, prefix=".write-test.")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise ElmanlabError(f"cannot write to --out {out}: {e.strerror or e}; choose a writable folder") from None
    return out


# ---------------------------------------------------------------- study folders

def read_state(out: str | os.PathLike) -> dict | None:
    """A study folder's study.json, None when there is none; an error when it is not a state file."""
    p = Path(out) / STATE_FILE
    if not p.exists():
        return None
    st = read_json_or_none(p)
    if not isinstance(st, dict) or "jobs" not in st:
        raise ElmanlabError(f"{p} is not a study state file (unreadable JSON); move it away or use another --out")
    return st


def read_state_or_none(out: str | os.PathLike) -> dict | None:
    """study.json when it is a readable state file, else None (for readers such as the report)."""
    st = read_json_or_none(Path(out) / STATE_FILE)
    return st if isinstance(st, dict) and isinstance(st.get("jobs"), list) else None
