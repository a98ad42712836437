"""The training loop: the Trainer (one step, the loop, budgets, precision), run_training, resume_training.

Python API::

    from elmanlab.config import TrainConfig
    from elmanlab.sizing import model_config
    from elmanlab.train import Trainer, run_training, resume_training
    summary = run_training(TrainConfig(model=model_config("e1", params="1M"), out="runs/x", steps=100))
    summary = resume_training("runs/x", steps=200)        # continue (or extend) a run

    trainer = Trainer(cfg)              # set up: data, model, optimizer (and, resuming, the checkpoint)
    loss, grad_norm = trainer.train_step()        # one optimizer step on the next batch
    summary = trainer.run()             # the whole run: config.json, the loop, metrics, summary.json

The run folder and its files are described in :mod:`elmanlab.runs`; checkpoints in
:mod:`elmanlab.checkpoint`.

Precision (``precision``): bf16 autocast on CUDA with fp32 master weights (the layers keep
recurrent state in fp32), plain fp32 on CPU; or ``bf16``: the model cast to bf16 (its gradients and
Schedule-Free's state follow), no autocast. Budgets: ``steps`` or ``minutes`` of training time; the first step of a
process (compilation, autotuning, allocator warm-up; with ``cuda_graph`` also the second, the
capture) is timed apart as ``warmup_s`` and not charged to the budget or to ``tokens_per_s``.
Checkpointing and evaluation are timed apart too.

CUDA graphs (``cuda_graph``, one process on CUDA): after one eager step, forward + backward + the
gradient norm are captured once as a CUDA graph (``GraphedStep``) and replayed every step; the
optimizer step stays eager (Schedule-Free's step reads Python-side schedule values), and so do
the non-finite guard and clipping. Same arithmetic and the same kernels, launched at once instead
of one by one from Python: it helps steps bound by launch overhead (small batches, many kernels).

Schedule-Free keeps two weight sequences (train-mode y, the average x): evaluation and checkpoints
use x (pure bf16: y, `train_state.evaluation_point`) and restore y exactly, so checkpoints and resuming change nothing (:mod:`elmanlab.train_state`).

Data parallel: under ``torchrun`` the model is wrapped in DDP (:mod:`elmanlab.parallel`);
``batch_size`` is the global batch, each rank trains on its rows of it, and only rank 0 writes.

The Trainer owns the step, the loop and the budget; its parts, one module each:
:mod:`elmanlab.records` (config.json, metrics.jsonl, the final weights, summary.json),
:mod:`elmanlab.train_state` (Schedule-Free's weight switch; what a checkpoint holds of the trainer),
:mod:`elmanlab.interrupt` (the graceful stop on SIGINT/SIGUSR1), :mod:`elmanlab.progress` (the
terminal), :mod:`elmanlab.parallel` (DDP), :mod:`elmanlab.step` (the optimizer, the CUDA-graph
capture), :mod:`elmanlab.validation` (held-out scores while training).
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch

from elmanlab import checkpoint, parallel, records, train_state
from elmanlab.config import TrainConfig, resumable_settings
from elmanlab.data import fingerprint_update
from elmanlab.errors import ElmanlabError
from elmanlab.hardware import autocast, dist_info, resolve_device
from elmanlab.interrupt import GracefulStop
from elmanlab.metrics import MetricsLog, check_trackers
from elmanlab.ops import implementations_used, reset_implementations_used
from elmanlab.progress import Progress
from elmanlab.records import gpu_jobs
from elmanlab.runs import BEST_WEIGHTS_FILE, SUMMARY_FILE, check_new_run_dir, load_run_config, run_status
from elmanlab.step import GraphedStep, check_fast_path, graph_choice, grad_norm, make_optimizer
from elmanlab.validation import Validator

__all__ = ["Trainer", "run_training", "resume_training", "gpu_jobs"]

# ---------------------------------------------------------------- the trainer

class Trainer:
    """One training run: ``Trainer(cfg)`` sets it up (data, model, optimizer; with ``resume_dir`` the
    newest checkpoint of that run folder), ``train_step()`` takes one optimizer step on the next batch
    of the seeded stream, ``run()`` trains to the budget and writes the run folder."""

    def __init__(self, cfg: TrainConfig, resume_dir: Path | None = None):
        self.cfg = cfg
        self.resume_dir = None if resume_dir is None else Path(resume_dir)
        self.world, self.rank, self.local_rank = dist_info()
        self.is_main = self.rank == 0
        self.t_start = time.perf_counter()
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    # -- setup -------------------------------------------------------------------------------
    def _setup(self) -> None:
        from elmanlab.data import BatchSampler, fingerprint_start, make_split
        from elmanlab.lm import LM
        cfg = self.cfg
        cfg.validate(self.world)
        if self.is_main:
            check_trackers(cfg.tensorboard, cfg.wandb)
        self.device = resolve_device(cfg.device, self.local_rank)
        if cfg.cuda_graph and self.device.type != "cuda":
            raise ElmanlabError(f"--cuda-graph needs a CUDA device, not {self.device}: drop --cuda-graph "
                                "(with --resume: --no-cuda-graph)")
        self.use_graph, self.graph_note = graph_choice(cfg, self.device, self.world)
        if cfg.cuda_graph is None and self.graph_note and self.device.type == "cuda" and self.is_main:
            sys.stderr.write(f"note: CUDA graphs off: {self.graph_note}\n")
        self.reference_note = check_fast_path(cfg, self.device)
        reset_implementations_used()                        # what this process's steps run, from here
        self.paths_checked = False
        # data paths are stored absolute so that eval, generate and resume work from any folder
        if cfg.data is not None:
            cfg.data = str(Path(cfg.data).expanduser().resolve())
        if cfg.val_data is not None:
            cfg.val_data = str(Path(cfg.val_data).expanduser().resolve())
        self.split = make_split(cfg.data, cfg.val_data, cfg.seq_len, progress=cfg.progress and self.is_main)
        self.sampler = BatchSampler(self.split.train_bytes, cfg.seq_len, cfg.batch_size, cfg.seed)
        self.out = Path(cfg.out).expanduser()
        if self.resume_dir is None and self.is_main:
            check_new_run_dir(self.out)

        if self.world > 1:
            parallel.init(self.device)
        if self.device.type == "cpu":
            torch.set_flush_denormal(True)     # subnormal floats (saturated tanh) are ~100x slower on x86
        torch.manual_seed(cfg.seed)
        self.model = LM(cfg.model, dropout=cfg.dropout).to(self.device)
        if cfg.precision == "bf16":                         # weights, gradients and optimizer state in bf16
            self.model.to(torch.bfloat16)
        self.model.train()
        if self.device.type == "cuda":
            # after the first CUDA allocation: on torch 2.11 resetting before the context exists fails
            # with "Invalid device argument"
            torch.cuda.reset_peak_memory_stats(self.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.n_params = sum(p.numel() for p in self.model.parameters())
        self.optimizer = make_optimizer(self.model, cfg)
        self.optimizer.train()
        self.fwd = self.model
        self.graphed: GraphedStep | None = None
        self.graph_warm = False                             # the eager step before the capture ran
        if self.use_graph:
            self.graph_stream = torch.cuda.Stream(self.device)
        if cfg.compile:
            self.fwd = torch.compile(self.fwd)
        if self.world > 1:
            self.fwd = parallel.wrap(self.fwd, self.device)
        self.b_local = cfg.batch_size // self.world
        self.rows = slice(self.rank * self.b_local, (self.rank + 1) * self.b_local)
        self.validator = Validator(cfg, self.split.val, self.b_local * self.world, self.device, self.is_main)
        self.metrics: MetricsLog | None = None

        # progress state (all restored on resume)
        self.step = 0
        self.tokens = 0
        self.fingerprint = fingerprint_start(self.split.train_bytes, cfg.seq_len)
        self.losses = deque(maxlen=100)
        self.final_loss = None
        self.nonfinite_total = 0
        self.nonfinite_run = 0
        self.interrupt = GracefulStop()                     # set by the first SIGINT (elmanlab.interrupt)
        self.between_steps = True                           # False while a step is half applied
        self.timers = {"train_s": 0.0, "warmup_s": 0.0, "checkpoint_s": 0.0, "eval_s": 0.0, "wall_s": 0.0}
        self.interval = records.new_interval()
        self.last_grad_norm = None
        self.warm_steps = 0                                 # steps timed as warm-up (warm_up_steps per process)
        self.prior_wall = 0.0                               # wall-clock of the run before this process
        if self.resume_dir is not None:
            train_state.restore(self, self.resume_dir)

    # -- one step ----------------------------------------------------------------------------
    def batch(self, step: int | None = None) -> tuple[torch.Tensor, np.ndarray]:
        """This rank's rows of the batch of ``step`` (default: the next step), on the device:
        (x [B, T+1] bytes as int64, the window offsets)."""
        win, offsets = self.sampler.batch(self.split.train, self.step if step is None else step, self.rows)
        return torch.from_numpy(win).to(self.device, non_blocking=True).long(), offsets

    def loss_and_grads(self, x: torch.Tensor) -> torch.Tensor:
        """Forward and backward of the batch ``x`` [B, T+1]: [loss, gradient norm] on the device,
        without a host synchronisation (so that it can be captured in a CUDA graph)."""
        with autocast(self.device, cache=not self.use_graph, model=self.model):
            _, loss = self.fwd(x[:, :-1], x[:, 1:])
        loss.backward()
        gn = grad_norm(self.params).to(loss.device)
        return torch.stack([loss.detach().float(), gn.float()])

    def train_step(self) -> tuple[float, float]:
        """One optimizer step on the next batch (a non-finite loss or gradient is skipped and counted);
        advances ``step``, ``tokens`` and the data fingerprint. Returns (loss, gradient norm)."""
        cfg = self.cfg
        x, offsets = self.batch()
        if self.graphed is not None:
            stats = self.graphed(x)
        elif self.use_graph and self.graph_warm:            # warmed up on the graph's stream: capture
            self.graphed = GraphedStep(self.loss_and_grads, x, self.graph_stream)
            stats = self.graphed(x)
        elif self.use_graph:                                # the eager warm-up, on the graph's stream
            self.graph_stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self.graph_stream):
                stats = self.loss_and_grads(x)
            torch.cuda.current_stream(self.device).wait_stream(self.graph_stream)
            # its gradients, made on the graph's stream, are used and freed on the default one: the
            # capture (next step) synchronises the device before the graph's stream allocates again
            self.graph_warm = True
        else:
            stats = self.loss_and_grads(x)
        if self.world > 1:
            stats = parallel.mean_loss(stats, self.world)
        loss_v, gn_v = stats.tolist()
        if math.isfinite(loss_v) and math.isfinite(gn_v):
            if cfg.grad_clip is not None:
                if hasattr(torch.nn.utils, "clip_grads_with_norm_"):       # the norm is already known
                    torch.nn.utils.clip_grads_with_norm_(self.params, cfg.grad_clip, stats[1])
                else:
                    torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
            self.optimizer.step()
            self.nonfinite_run = 0
        else:
            self.nonfinite_total += 1
            self.nonfinite_run += 1
        if self.graphed is None:        # a graph rewrites its gradient tensors in place: keep them
            self.optimizer.zero_grad(set_to_none=True)
        self.fingerprint = fingerprint_update(self.fingerprint, offsets)
        self.step += 1
        self.tokens += cfg.batch_size * cfg.seq_len
        if not self.paths_checked:                          # the first step of this process ran
            self.paths_checked = True
            self._check_kernel()
        return loss_v, gn_v

    def kernel(self) -> dict:
        """The implementation the family's op actually ran in this process (read from the op):
        {"family", "path", "fast"}; path None before the first step."""
        fam = self.cfg.model.family
        ran = implementations_used().get(fam.op) or {}
        return {"family": fam.name, "path": ran.get("path"), "fast": ran.get("fast")}

    def _check_kernel(self) -> None:
        """After this process's first step: on CUDA, what the ops recorded must be their fast paths (the
        family's op and the helpers it calls, as the prediction before step 1 said), else one error."""
        if self.device.type != "cuda" or self.cfg.allow_reference:
            return
        k = self.kernel()
        fix = "see `elmanlab doctor`, or add --allow-reference to train on it (slow, recorded)"
        if k["fast"] is False:
            raise ElmanlabError(f"{k['family']} ran its plain-PyTorch reference on the GPU ({k['path']}); {fix}")
        slow = [op for op, r in implementations_used().items() if not r["fast"]]
        if slow:
            raise ElmanlabError(f"{k['family']} ran the plain-PyTorch reference of {', '.join(slow)} on the GPU; {fix}")

    # -- weights and checkpoints (elmanlab.train_state) ------------------------------------------
    def eval_weights(self):
        """Context: Schedule-Free's x (eval) in the parameters, then exactly the train point y again; in
        pure bf16 the train point y itself (``train_state.evaluation_point``)."""
        return train_state.eval_weights(self.model, self.optimizer, self.cfg.precision)

    def save_checkpoint(self) -> None:
        """A checkpoint at this step (rank 0)."""
        train_state.save(self)

    def _wall(self) -> float:
        return self.prior_wall + (time.perf_counter() - self.t_start)

    # -- records (elmanlab.records) --------------------------------------------------------------
    def run_config(self) -> dict:
        """config.json: everything that rebuilds the model and the run (also the trackers' config)."""
        return records.run_config(self)

    def write_config(self) -> None:
        records.write_config(self)

    def summary(self, status: str, error: str | None = None) -> dict:
        return records.summary(self, status, error)

    # -- held-out evaluation -----------------------------------------------------------------
    def validate(self) -> dict | None:
        """Score the held-out bytes now with the evaluation weights (timed apart from training) and log
        it; with --keep-best, write best.safetensors when the score is the best so far. None on the
        ranks that do not write."""
        if not self.validator.enabled:
            return None
        t0 = time.perf_counter()
        with self.eval_weights():
            point, is_best = self.validator.score(self.model, self.step, self.tokens, self.timers["train_s"])
            if is_best and self.cfg.keep_best:
                checkpoint.save_weights(self.model, self.out, BEST_WEIGHTS_FILE)
        if self.cfg.eval_train_weights:
            self.validator.score_train_weights(self.model, point)
        self.timers["eval_s"] += time.perf_counter() - t0
        if self.metrics is not None:
            self.metrics.write(point)
        return point

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6 x parameters, plus attention's for families that attend."""
        from elmanlab.sizing import train_flops_per_token
        return train_flops_per_token(self.cfg.model, self.cfg.seq_len)

    def epochs(self) -> float:
        """Passes over the training split so far (tokens trained / training bytes)."""
        return self.tokens / self.split.train_bytes

    # -- the loop ----------------------------------------------------------------------------
    def _budget_done(self) -> bool:
        if self.cfg.steps is not None:
            return self.step >= self.cfg.steps
        return self.timers["train_s"] >= 60.0 * self.cfg.minutes

    @property
    def warm_up_steps(self) -> int:
        """Steps of a process timed apart as warm-up: the first (compilation, autotuning), and with
        --cuda-graph also the second (the capture)."""
        return 2 if self.use_graph else 1

    def _stop_flag(self) -> bool:
        """Agree across ranks on whether a time budget is spent (rank 0 decides)."""
        done = self._budget_done()
        if self.world > 1 and self.cfg.minutes is not None:
            done = parallel.rank0_says(done, self.is_main, self.device)
        return done

    def _loop(self) -> str:
        """Train to the budget; returns the run's status (completed, stopped_nonfinite)."""
        cfg = self.cfg
        tokens_per_step = cfg.batch_size * cfg.seq_len
        progress = Progress(self)                           # the bar and the epochs warning
        status = "completed"
        progress.check_epochs()
        warm_left = self.warm_up_steps                     # this process's steps timed apart
        self.interrupt.install(self.world)
        try:
            while not self._stop_flag():
                if self.interrupt.requested:
                    status = "interrupted"
                    break
                t0 = time.perf_counter()
                self.between_steps = False
                loss_v, gn_v = self.train_step()
                if warm_left and self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                dt = time.perf_counter() - t0
                self.last_grad_norm = gn_v if math.isfinite(gn_v) else None
                records.add_step(self.interval, loss_v, gn_v)
                if math.isfinite(loss_v):
                    self.losses.append(loss_v)
                    self.final_loss = loss_v
                if warm_left:                               # compile / autotune / capture: timed apart
                    self.timers["warmup_s"] += dt
                    self.warm_steps += 1
                    warm_left -= 1
                else:
                    self.timers["train_s"] += dt
                    self.interval["tokens"] += tokens_per_step
                    self.interval["time"] += dt
                self.between_steps = True
                progress.update(loss_v)
                done_now = self._budget_done()
                if self.step % cfg.log_every == 0 or done_now:
                    records.log_training(self)
                if self.cfg.minutes is not None:
                    progress.check_epochs()
                if self.validator.due(self.step, self.timers["train_s"]) or (
                        done_now and self.validator.enabled and self.validator.last_at(self.step) is None):
                    self.validate()             # at the end of the budget: the final score (before the checkpoint)
                    progress.show(loss_v)
                if self.nonfinite_run >= cfg.max_nonfinite:
                    status = "stopped_nonfinite"
                    if self.interval["loss_n"] or self.interval["time"]:
                        records.log_training(self)
                    break
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
        finally:
            progress.close()
            self.interrupt.uninstall()                      # kept after a stop request: it absorbs the repeat
        if self.interval["time"] or self.interval["loss_n"]:
            records.log_training(self)
        if status == "interrupted":                         # between two steps: a consistent state
            self.save_checkpoint()
            raise KeyboardInterrupt
        if cfg.checkpoint_every and status == "completed":
            self.save_checkpoint()                          # the end point, so the run can be extended
        return status

    def tokens_per_s(self) -> float | None:
        timed_steps = self.step - self.warm_steps
        if self.timers["train_s"] <= 0 or timed_steps <= 0:
            return None
        return timed_steps * self.cfg.batch_size * self.cfg.seq_len / self.timers["train_s"]

    # -- the end -----------------------------------------------------------------------------
    def close(self) -> None:
        """Release what the run holds: the metrics file, CPU float mode, the process group."""
        if getattr(self, "metrics", None) is not None:
            self.metrics.close()
            self.metrics = None
        torch.set_flush_denormal(False)                    # the default; set only for the loop on CPU
        if self.world > 1:
            parallel.close()

    def run(self) -> dict:
        """Train to the budget and write the run folder; returns the summary (also summary.json).
        A crash after the start is recorded in summary.json and raised as one ElmanlabError line; an
        interrupt saves a checkpoint between two steps (with --checkpoint-every) and propagates."""
        started = False
        try:
            records.write_config(self)
            self.metrics = records.open_metrics(self)
            started = True
            return records.finish(self, self._loop())
        except ElmanlabError as e:
            if started:
                records.fail(self, str(e))
            raise
        except KeyboardInterrupt:
            # (after an interrupt's own checkpoint this returns at once: that step's checkpoint exists)
            if started and self.cfg.checkpoint_every and self.between_steps:
                with contextlib.suppress(Exception):
                    self.save_checkpoint()
            raise
        except Exception as e:  # noqa: BLE001 - a crash mid-run is recorded, then reported in one line
            if not started:
                raise
            msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
            records.fail(self, f"step {self.step}: {msg}")
            if os.environ.get("ELMANLAB_DEBUG"):
                raise
            raise ElmanlabError(f"training failed at step {self.step}: {msg} "
                                f"(recorded in {self.out / SUMMARY_FILE})") from e
        finally:
            self.close()


def run_training(cfg: TrainConfig) -> dict:
    """Train one model from scratch into ``cfg.out``; returns the summary dict (also summary.json)."""
    return Trainer(cfg).run()


def resume_training(run_dir: str | os.PathLike, **changes) -> dict:
    """Continue a run from its newest checkpoint to its budget, or to a new one (``steps=`` or
    ``minutes=``). Only the settings ``--resume`` may change are accepted (``config.resumable_settings``:
    how the run continues, not what it computes); a value of None leaves the run's own setting."""
    allowed = resumable_settings()
    unknown = sorted(set(changes) - set(allowed))
    if unknown:
        raise ElmanlabError(f"a resumed run takes {', '.join(unknown)} from its config.json; "
                            f"only {', '.join(allowed)} can change")
    run_dir = Path(run_dir).expanduser()
    conf = load_run_config(run_dir)
    tc = dict(conf["train"], model=conf["model"], out=str(run_dir))
    steps, minutes = changes.pop("steps", None), changes.pop("minutes", None)
    if steps is not None or minutes is not None:
        tc["steps"], tc["minutes"] = steps, minutes
    tc.update({k: v for k, v in changes.items() if v is not None})
    cfg = TrainConfig.from_dict(tc)
    status, _, done = run_status(run_dir)
    if status == "completed" and (
            (cfg.steps is not None and done.get("steps", 0) >= cfg.steps)
            or (cfg.minutes is not None and steps is None and minutes is None)):
        return done                                        # nothing left to do
    return Trainer(cfg, resume_dir=run_dir).run()
