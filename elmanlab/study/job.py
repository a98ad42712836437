"""One job of a study: a training run named by its id, what defines it (its identity), the
``elmanlab train`` arguments that run it, and where it stands in a study folder.

Used by the study file's expansion (spec, best_of) and by the queue (runner) alike, so that a run's
identity and its status are decided in one place.
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from elmanlab.config import BUDGET_SETTINGS, default_mlp_ratio, field_type, identity_settings, train_settings
from elmanlab.runs import run_status


@dataclass
class Job:
    id: str
    where: str                   # where in the study file it came from (for messages)
    wave: str | None
    model: str
    params: str | None           # the target as written (normalised), or None with dim
    dim: int | None
    depth: int | None
    mlp_ratio: float             # resolved (the family's default when the file gives none)
    tie_embeddings: bool
    options: dict
    train: dict                  # train settings (config.train_settings() keys), as given
    size: dict = field(default_factory=dict)   # the solved size (sizing.report)
    norm: str = "rms"            # the wrapper's norms (ModelConfig.norm)

    def identity(self) -> dict:
        """What defines the run: model, size, options and the train settings that define a run
        (``config.identity_settings()``: no paths, devices, logging or checkpointing). ``norm`` is
        named only where it is not the default, so identities recorded before it existed still match."""
        keys = identity_settings()
        out = {"model": self.model, "params": self.params, "dim": self.dim, "depth": self.depth,
               "mlp_ratio": self.mlp_ratio, "tie_embeddings": self.tie_embeddings,
               "options": dict(self.options),
               "train": {k: v for k, v in self.train.items() if k in keys}}
        if self.norm != "rms":
            out["norm"] = self.norm
        return out

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def budget(self) -> str:
        if "minutes" in self.train:
            return f"{fmt(self.train['minutes'])} min"
        if "steps" in self.train:
            return f"{fmt(self.train['steps'])} steps"
        return "-"

    def argv(self, run_dir: str | os.PathLike) -> list[str]:
        """The ``elmanlab train`` arguments (without the interpreter) for this job: a bool setting
        or option as ``--x`` / ``--no-x``, any other as ``--x value``."""
        settings = train_settings()
        args = ["train", self.model]
        if self.params is not None:
            args += ["--params", str(self.params)]
        if self.dim is not None:
            args += ["--dim", str(self.dim)]
        if self.depth is not None:
            args += ["--depth", str(self.depth)]
        if self.mlp_ratio != default_mlp_ratio(self.model):
            r = float(self.mlp_ratio)
            args += ["--mlp-ratio", fmt(r) if float(fmt(r)) == r else repr(r)]
        if self.tie_embeddings:
            args += ["--tie-embeddings"]
        if self.norm != "rms":
            args += ["--norm", self.norm]
        for k, v in self.options.items():
            args += _flag(k, v, isinstance(v, bool))
        for k, v in self.train.items():
            args += _flag(k, v, field_type(settings[k]) is bool)
        return args + ["--out", str(run_dir)]


def _flag(key: str, value, is_bool: bool) -> list[str]:
    name = key.replace("_", "-")
    if is_bool:
        return [f"--{name}" if value else f"--no-{name}"]
    return [f"--{name}", fmt(value)]


def fmt(v) -> str:
    """A value as it appears in job ids, messages and train arguments."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def safe_id(text: str) -> str:
    """A job id usable as a folder name."""
    return re.sub(r"[^A-Za-z0-9_.=+,-]", "_", str(text))


def merge_train(base: dict, over: dict) -> dict:
    """Later settings win; setting one budget (steps or minutes) drops the other."""
    out = dict(base)
    for k in BUDGET_SETTINGS:
        if k in over:
            for other in BUDGET_SETTINGS:
                out.pop(other, None)
    out.update(over)
    return out


# ---------------------------------------------------------------- a job in a study folder

def same_run(recorded: dict | None, job: Job) -> bool:
    """Whether an identity recorded in study.json (a record's ``spec_identity``) is this job's.

    Compared on the settings that define a run now, so that a record written when more train
    settings counted (log_every, checkpoint_every, ...) still matches and the study resumes."""
    if not isinstance(recorded, dict):
        return False
    keys = identity_settings()
    train = recorded.get("train") or {}
    return {**recorded, "train": {k: v for k, v in train.items() if k in keys}} == job.identity()


def job_status(out, job: Job, record: dict | None, retry_failed: bool = False
               ) -> tuple[str, str | None, dict | None]:
    """(status, reason, summary) of a job in the study folder ``out``: ``completed``, ``failed``
    or ``pending`` (still to run).

    The run folder's summary.json decides; a run that failed before writing one is known from its
    study.json ``record`` when that record is of the same run. With ``retry_failed`` a failed run
    is pending: it is about to run again."""
    st, reason, summ = run_status(Path(out) / job.id)
    if st == "completed":
        return "completed", reason, summ
    if st != "absent":
        failed = ("failed", reason, summ)
    elif record is not None and record.get("status") == "failed" and same_run(record.get("spec_identity"), job):
        failed = ("failed", record.get("error"), None)
    else:
        return "pending", None, None
    return ("pending", None, None) if retry_failed else failed
