"""What a run logs as it goes: ``metrics.jsonl`` always, and on request TensorBoard event files
(``--tensorboard``, in RUN/tensorboard) and an offline Weights & Biases run (``--wandb``, in RUN/wandb).

metrics.jsonl has two kinds of line, both keyed by ``step``::

    training    {"step", "loss", "tokens", "elapsed", "tokens_per_s", "lr", "grad_norm", "loss_max",
                 "grad_norm_max"} (and "w_h_norm_max" for the Elman family)
    held-out    {"step", "tokens", "elapsed", "val_loss", "val_bpb", "val_bytes", "eval_s"}
                (with --eval-train-weights also "val_loss_y", "val_bpb_y": the weights being trained)

``loss`` is the mean training loss (nats/byte) since the previous training line, ``grad_norm`` the
gradient norm of the line's last step, ``loss_max`` and ``grad_norm_max`` the highest of the line's steps
(a one-step spike that the mean spreads over ten steps; lines written before 2026-12-07 lack them),
``w_h_norm_max`` the largest spectral norm of a layer's recurrent weight W_h at the line's step (the
parameter, before a spectral norm rescales it: ``LM.recurrence_norm_max``; since 2026-12-07), ``elapsed`` the
training clock in seconds (warm-up, checkpoints and evaluation not counted). Readers:
``runs.read_metrics`` (training lines) and ``runs.read_val_metrics`` (held-out lines).

Resuming, the lines past the checkpoint's step are dropped (they are written again, identically, as
the run continues); TensorBoard's writer purges its events past that step the same way.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

from elmanlab.errors import ElmanlabError
from elmanlab.fsutil import atomic_write_text
from elmanlab.runs import METRICS_FILE

TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"
# metrics.jsonl key -> the scalar's tag in TensorBoard and W&B
TAGS = {"loss": "train/loss", "lr": "train/lr", "grad_norm": "train/grad_norm", "tokens_per_s": "train/tokens_per_s",
        "val_loss": "val/loss", "val_bpb": "val/bpb"}


def check_trackers(tensorboard: bool, wandb: bool) -> None:
    """One-line errors, before a run starts, when a requested tracker's package is missing."""
    if tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ElmanlabError("--tensorboard needs the tensorboard package: pip install tensorboard "
                            "(or drop --tensorboard)")
    if wandb and importlib.util.find_spec("wandb") is None:
        raise ElmanlabError("--wandb needs the wandb package: pip install wandb (or drop --wandb)")


class MetricsLog:
    """Appends the run's lines to metrics.jsonl and mirrors the scalars to the requested trackers.

    ``resume_step``: continuing a run from the checkpoint of this step (lines past it are dropped);
    None for a new run. ``config``: the run's config.json (shown as text in TensorBoard, the W&B
    run's config)."""

    def __init__(self, out: Path, resume_step: int | None, config: dict, tensorboard: bool = False,
                 wandb: bool = False):
        self.out = Path(out)
        path = self.out / METRICS_FILE
        if resume_step is not None and path.exists():
            keep = []
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue            # a line cut short by a kill
                if isinstance(rec, dict) and rec.get("step", 0) <= resume_step:
                    keep.append(line)
            atomic_write_text(path, "".join(x + "\n" for x in keep))
        self.fh = open(path, "a")
        self.tb = None
        self.wb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(log_dir=str(self.out / TENSORBOARD_DIR),
                                    purge_step=None if resume_step is None else resume_step + 1)
            if resume_step is None:
                self.tb.add_text("config", "```\n" + json.dumps(config, indent=2, default=str) + "\n```", 0)
        if wandb:
            import wandb as _wandb
            run_id = "elmanlab-" + hashlib.sha1(str(self.out.resolve()).encode()).hexdigest()[:12]
            (self.out / WANDB_DIR).mkdir(exist_ok=True)
            self.wb = _wandb.init(project="elmanlab", name=self.out.name, id=run_id, resume="allow",
                                  dir=str(self.out / WANDB_DIR), mode="offline", config=config)

    def write(self, rec: dict) -> None:
        """One line of metrics.jsonl (flushed at once), and its scalars to the trackers."""
        self.fh.write(json.dumps(rec) + "\n")
        self.fh.flush()
        scalars = {TAGS[k]: float(v) for k, v in rec.items()
                   if k in TAGS and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if not scalars:
            return
        if self.tb is not None:
            for tag, v in scalars.items():
                self.tb.add_scalar(tag, v, rec["step"])
            self.tb.flush()
        if self.wb is not None:
            self.wb.log(dict(scalars, tokens=rec.get("tokens")), step=rec["step"])

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.wb is not None:
            self.wb.finish()
            self.wb = None
