"""What comes before a study's queue runs: which GPUs (``--gpus``), whether the output folder may be
used (``check_out_dir``), the lock that keeps one ``elmanlab study`` process per folder
(:class:`StudyLock`), and the dry run's table of jobs (``plan_table``).
"""
from __future__ import annotations

import os
import re
import socket
from pathlib import Path

from elmanlab.errors import ElmanlabError
from elmanlab.runs import LOCK_FILE, STATE_FILE, read_state
from elmanlab.study.job import job_status
from elmanlab.study.spec import Study


# ---------------------------------------------------------------- GPUs and the output folder

def _visible_gpus() -> int:
    try:
        import torch
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - no usable CUDA means no GPUs
        return 0


def parse_gpus(text: str | None, count: int | None = None) -> list[str] | None:
    """``--gpus`` -> the CUDA_VISIBLE_DEVICES value of each slot, or None for CPU.

    None / "auto": every visible GPU, CPU when there is none; "cpu": CPU; "0,1": those GPUs
    (indices into the GPUs this process sees, mapped through CUDA_VISIBLE_DEVICES when set).
    """
    count = _visible_gpus() if count is None else count
    parent = os.environ.get("CUDA_VISIBLE_DEVICES")
    physical = [s.strip() for s in parent.split(",") if s.strip()] if parent else None

    def phys(i: int) -> str:
        return physical[i] if physical and i < len(physical) else str(i)

    if text is None or text.strip().lower() == "auto":
        return [phys(i) for i in range(count)] or None
    if text.strip().lower() in ("cpu", "none", ""):
        return None
    idx = []
    for part in text.split(","):
        part = part.strip()
        if not re.fullmatch(r"[0-9]+", part):
            raise ElmanlabError(f"--gpus takes GPU indices such as 0,1 (or cpu), got {text!r}")
        i = int(part)
        if i >= count:
            have = f"GPUs 0-{count - 1}" if count > 1 else ("GPU 0" if count == 1 else "no GPU")
            raise ElmanlabError(f"GPU {i} does not exist: this machine has {have}; "
                                f"fix --gpus{' or use --gpus cpu' if count == 0 else ''}")
        if i in idx:
            raise ElmanlabError(f"GPU {i} is listed twice in --gpus {text}")
        idx.append(i)
    return [phys(i) for i in idx]


def check_out_dir(out: Path, study: Study) -> dict | None:
    """The existing state when ``out`` holds this study; an error when it holds something else."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ElmanlabError(f"--out {out} is a file; give a folder")
    st = read_state(out) if out.exists() else None
    if st is not None:
        if st.get("name") != study.name:
            raise ElmanlabError(f"{out} holds another study ({st.get('name')!r}, not {study.name!r}); "
                                f"use another --out")
        return st
    if out.exists() and any(p for p in out.iterdir() if p.name != LOCK_FILE):
        raise ElmanlabError(f"{out} is not empty and holds no study ({STATE_FILE}); use an empty or new --out")
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StudyLock:
    """One ``elmanlab study`` process per output folder."""

    def __init__(self, out: Path):
        self.path = Path(out) / LOCK_FILE
        self.held = False

    def __enter__(self):
        me = f"{os.getpid()} {socket.gethostname()}\n"
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    pid_s, host = (self.path.read_text().split() + ["", ""])[:2]
                    pid = int(pid_s)
                except (OSError, ValueError):
                    pid, host = -1, ""
                if host == socket.gethostname() and pid > 0 and _pid_alive(pid):
                    raise ElmanlabError(f"another `elmanlab study` (pid {pid}) is running in {self.path.parent}; "
                                        f"wait for it or stop it")
                if host and host != socket.gethostname():
                    raise ElmanlabError(f"{self.path} says a study runs on host {host}; if it does not, "
                                        f"delete that file")
                self.path.unlink(missing_ok=True)   # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                f.write(me)
            self.held = True
            return self
        raise ElmanlabError(f"cannot take the study lock {self.path}")

    def __exit__(self, *exc):
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


# ---------------------------------------------------------------- dry run

def _state_cell(size: dict):
    """The state per layer as the plan shows it: the count, or for a KV cache (``state_grows``) the
    count per byte of context, e.g. '2.05K/byte'."""
    st = size.get("state_per_layer")
    if st is None or not size.get("state_grows"):
        return st
    from elmanlab.sizing import format_count
    return f"{format_count(st)}/byte"


def plan_table(study: Study, out: Path | None = None) -> list[dict]:
    """Rows for ``--dry-run``: every job with its size and whether it is already done."""
    from elmanlab.sizing import format_count
    rows = []
    for i, j in enumerate(study.jobs, 1):
        status = "to run"
        if out is not None:
            status = {"completed": "done", "failed": "failed"}.get(job_status(out, j, None)[0], "to run")
        target = j.params or "-"
        rows.append({"#": i, "run": j.id, "wave": j.wave or "", "model": j.model, "target": target,
                     "params": j.size.get("params"), "params_h": format_count(j.size.get("params", 0)),
                     "dim": j.size.get("dim"), "depth": j.size.get("depth"),
                     "heads": j.size.get("n_heads"), "d_inner": j.size.get("d_inner"),
                     "state/layer": _state_cell(j.size), "budget": j.budget,
                     "seed": j.train.get("seed"), "status": status})
    return rows
