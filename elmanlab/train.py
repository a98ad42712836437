"""The training loop: Schedule-Free AdamW, precision, budgets, metrics, checkpoints, resume, DDP.

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

Precision: bf16 autocast on CUDA with fp32 master weights (the layers keep recurrent state in
fp32), plain fp32 on CPU. Budgets: ``steps`` or ``minutes`` of training time; the first step of a
process (compilation, autotuning, allocator warm-up; with ``cuda_graph`` also the second, the
capture) is timed apart as ``warmup_s`` and not charged to the budget or to ``tokens_per_s``.
Checkpointing and evaluation are timed apart too.

CUDA graphs (``cuda_graph``, one process on CUDA): after one eager step, forward + backward + the
gradient norm are captured once as a CUDA graph (``GraphedStep``) and replayed every step; the
optimizer step stays eager (Schedule-Free's step reads Python-side schedule values), and so do
the non-finite guard and clipping. Same arithmetic and the same kernels, launched at once instead
of one by one from Python: it helps steps bound by launch overhead (small batches, many kernels).

Schedule-Free keeps two weight sequences: the optimizer's ``train()`` mode holds the gradient
point y in the parameters, ``eval()`` the average x. Evaluation and checkpointing switch to
``eval()`` and back, and the exact train-mode values are restored afterwards, so a run with
checkpoints follows bit for bit the same trajectory as one without, and a resumed run (which
restores y, the optimizer state, the data position and the RNG) ends in exactly the same state
as an uninterrupted one.

Data parallel: under ``torchrun`` (``WORLD_SIZE`` > 1) the model is wrapped in DDP (NCCL on GPU,
gloo on CPU); ``batch_size`` is the global batch and rank r trains on rows
``[r * B / W, (r + 1) * B / W)`` of the same global batch. Only rank 0 writes.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import sys
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch

from elmanlab import checkpoint
from elmanlab.config import TrainConfig, resumable_settings
from elmanlab.data import fingerprint_update
from elmanlab.errors import ElmanlabError
from elmanlab.fsutil import atomic_write_json
from elmanlab.hardware import (autocast, dist_info, peak_bf16_flops, peak_memory_gb, resolve_device, source_info,
                               versions)
from elmanlab.ops import implementations_used, reset_implementations_used
from elmanlab.metrics import MetricsLog, check_trackers
from elmanlab.runs import (BEST_WEIGHTS_FILE, CONFIG_FILE, GPU_JOBS_ENV, RUN_FORMAT, SUMMARY_FILE, check_new_run_dir, load_run_config,
                           run_status)
from elmanlab.step import GraphedStep, check_fast_path, graph_choice, grad_norm, make_optimizer
from elmanlab.validation import Validator

EPOCHS_WARN = 4         # a budget that covers the training split more often than this gets a warning


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
        self.epoch_warned = False
        self.out = Path(cfg.out).expanduser()
        if self.resume_dir is None and self.is_main:
            check_new_run_dir(self.out)

        if self.world > 1:
            import torch.distributed as dist
            if not dist.is_initialized():
                backend = "nccl" if self.device.type == "cuda" else "gloo"
                if self.device.type == "cuda":
                    torch.cuda.set_device(self.device)
                dist.init_process_group(backend)
        if self.device.type == "cpu":
            torch.set_flush_denormal(True)     # subnormal floats (saturated tanh) are ~100x slower on x86
        torch.manual_seed(cfg.seed)
        self.model = LM(cfg.model, dropout=cfg.dropout).to(self.device)
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
            from torch.nn.parallel import DistributedDataParallel as DDP
            self.fwd = DDP(self.fwd, device_ids=[self.device.index] if self.device.type == "cuda" else None)
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
        self.stop = {"requested": False, "at": 0.0}         # set by the first SIGINT (see _catch_sigint)
        self.between_steps = True                           # False while a step is half applied
        self.timers = {"train_s": 0.0, "warmup_s": 0.0, "checkpoint_s": 0.0, "eval_s": 0.0, "wall_s": 0.0}
        self.interval = {"loss_sum": 0.0, "loss_n": 0, "tokens": 0, "time": 0.0}
        self.last_grad_norm = None
        self.warm_steps = 0                                 # steps timed as warm-up (warm_up_steps per process)
        self.prior_wall = 0.0                               # wall-clock of the run before this process
        if self.resume_dir is not None:
            self._restore()

    # -- one step ----------------------------------------------------------------------------
    def batch(self, step: int | None = None) -> tuple[torch.Tensor, np.ndarray]:
        """This rank's rows of the batch of ``step`` (default: the next step), on the device:
        (x [B, T+1] bytes as int64, the window offsets)."""
        win, offsets = self.sampler.batch(self.split.train, self.step if step is None else step, self.rows)
        return torch.from_numpy(win).to(self.device, non_blocking=True).long(), offsets

    def loss_and_grads(self, x: torch.Tensor) -> torch.Tensor:
        """Forward and backward of the batch ``x`` [B, T+1]: [loss, gradient norm] on the device,
        without a host synchronisation (so that it can be captured in a CUDA graph)."""
        with autocast(self.device, cache=not self.use_graph):
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
            import torch.distributed as dist
            loss_t = stats[:1].clone()
            dist.all_reduce(loss_t)
            stats = torch.cat([loss_t / self.world, stats[1:]])
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

    # -- checkpoints -------------------------------------------------------------------------
    @contextlib.contextmanager
    def eval_weights(self):
        """Switch the parameters to Schedule-Free's x (eval) and restore the exact train point y."""
        saved = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.optimizer.eval()
        self.model.eval()
        try:
            yield
        finally:
            self.optimizer.train()
            self.model.train()
            with torch.no_grad():
                for k, v in self.model.state_dict().items():
                    v.copy_(saved[k])

    def save_checkpoint(self) -> None:
        if not self.is_main:
            return
        t0 = time.perf_counter()
        state = {
            "format": RUN_FORMAT, "step": self.step, "tokens": self.tokens, "fingerprint": self.fingerprint,
            "losses": list(self.losses), "final_loss": self.final_loss,
            "nonfinite_total": self.nonfinite_total, "nonfinite_run": self.nonfinite_run,
            "warm_steps": self.warm_steps, "timers": dict(self.timers, wall_s=self._wall()),
            "interval": dict(self.interval),
            "model_train": {k: v.detach().to("cpu").clone() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            "validation": self.validator.state_dict(),
        }
        best = self.out / BEST_WEIGHTS_FILE
        extra = [best] if self.cfg.keep_best and best.is_file() else []
        if checkpoint.write_checkpoint(self.out, self.step, state, self.model, self.eval_weights, extra):
            self.timers["checkpoint_s"] += time.perf_counter() - t0

    def _restore(self) -> None:
        if self.is_main:
            checkpoint.remove_partial_checkpoints(self.resume_dir)
        path, st = checkpoint.read_checkpoint(self.resume_dir)
        try:
            self.optimizer.load_state_dict(st["optimizer"])
            with torch.no_grad():
                own = self.model.state_dict()
                for k, v in st["model_train"].items():
                    own[k].copy_(v)
            self.step, self.tokens, self.fingerprint = st["step"], st["tokens"], st["fingerprint"]
            self.losses.extend(st["losses"])
            self.final_loss = st["final_loss"]
            self.nonfinite_total, self.nonfinite_run = st["nonfinite_total"], st["nonfinite_run"]
            self.warm_steps = st["warm_steps"]
            self.timers.update(st["timers"])
            self.interval.update(st["interval"])
            self.validator.load_state_dict(st.get("validation"))
        except (RuntimeError, KeyError, ValueError) as e:  # edited config.json, or a foreign state.pt
            raise ElmanlabError(f"checkpoint {path} does not match the run's config.json "
                                f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
        self.prior_wall = self.timers["wall_s"]
        if self.is_main:        # the best weights as of the checkpoint (a later best is made again, identically)
            checkpoint.restore_file(path.parent, self.resume_dir, BEST_WEIGHTS_FILE)
        torch.set_rng_state(st["rng_cpu"])
        if self.device.type == "cuda" and st["rng_cuda"]:
            with contextlib.suppress(Exception):
                torch.cuda.set_rng_state_all(st["rng_cuda"])

    def _wall(self) -> float:
        return self.prior_wall + (time.perf_counter() - self.t_start)

    # -- records -----------------------------------------------------------------------------
    def run_config(self) -> dict:
        """config.json: everything that rebuilds the model and the run (also the trackers' config)."""
        return {"format": RUN_FORMAT, "model": self.cfg.model.to_dict(), "params": self.n_params,
                "train": {k: v for k, v in self.cfg.to_dict().items() if k != "model"},
                "data": self.split.describe(), "world_size": self.world}

    def write_config(self) -> None:
        if self.is_main:
            atomic_write_json(self.out / CONFIG_FILE, self.run_config())

    def _open_metrics(self) -> None:
        """metrics.jsonl for appending (resuming, the lines past the checkpoint's step are dropped), and the
        requested trackers."""
        if not self.is_main:
            return
        self.metrics = MetricsLog(self.out, None if self.resume_dir is None else self.step, self.run_config(),
                                  tensorboard=self.cfg.tensorboard, wandb=self.cfg.wandb)

    def _log(self) -> None:
        iv = self.interval
        rec = {"step": self.step,
               "loss": iv["loss_sum"] / iv["loss_n"] if iv["loss_n"] else None,
               "tokens": self.tokens, "elapsed": round(self.timers["train_s"], 4),
               "tokens_per_s": round(iv["tokens"] / iv["time"], 2) if iv["time"] > 0 else None,
               "lr": float(self.optimizer.param_groups[0].get("scheduled_lr", self.cfg.lr)),
               "grad_norm": self.last_grad_norm}
        if self.metrics is not None:
            self.metrics.write(rec)
        self.interval = {"loss_sum": 0.0, "loss_n": 0, "tokens": 0, "time": 0.0}

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
        self.timers["eval_s"] += time.perf_counter() - t0
        if self.metrics is not None:
            self.metrics.write(point)
        return point

    def _check_epochs(self) -> None:
        """Warn once when the budget covers the training split more than EPOCHS_WARN times."""
        if self.epoch_warned or not self.is_main:
            return
        per_step = self.cfg.batch_size * self.cfg.seq_len
        planned = self.cfg.steps * per_step if self.cfg.steps is not None else self.tokens
        epochs = planned / self.split.train_bytes
        if epochs > EPOCHS_WARN:
            self.epoch_warned = True
            what = f"{self.cfg.steps:,} steps" if self.cfg.steps is not None else "the steps so far"
            sys.stderr.write(f"warning: {what} of {self.cfg.batch_size} x {self.cfg.seq_len} bytes pass over the "
                             f"training split ({self.split.train_bytes:,} bytes) {epochs:.1f} times: watch the "
                             f"held-out loss (--eval-every) and consider --dropout or more data\n")

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
            import torch.distributed as dist
            t = torch.tensor([1.0 if (done and self.is_main) else 0.0], device=self.device)
            dist.all_reduce(t)
            done = t.item() > 0
        return done

    def _loop(self) -> str:
        """Train to the budget; returns the run's status (completed, stopped_nonfinite)."""
        from tqdm import tqdm
        cfg = self.cfg
        tokens_per_step = cfg.batch_size * cfg.seq_len
        if cfg.steps is not None:
            bar = tqdm(total=cfg.steps, initial=self.step, unit="step", dynamic_ncols=True, mininterval=0.5,
                       disable=not (cfg.progress and self.is_main), desc=f"train {cfg.model.model}")
        else:
            bar = tqdm(total=round(60 * cfg.minutes), initial=round(self.timers["train_s"]), unit="s",
                       dynamic_ncols=True, mininterval=0.5, disable=not (cfg.progress and self.is_main),
                       desc=f"train {cfg.model.model}", bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f}s "
                       "[{elapsed}<{remaining}{postfix}]")
        status = "completed"
        self._check_epochs()
        warm_left = self.warm_up_steps                     # this process's steps timed apart
        old_handler = self._catch_sigint()
        try:
            while not self._stop_flag():
                if self.stop["requested"]:
                    status = "interrupted"
                    break
                t0 = time.perf_counter()
                self.between_steps = False
                loss_v, gn_v = self.train_step()
                if warm_left and self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                dt = time.perf_counter() - t0
                self.last_grad_norm = gn_v if math.isfinite(gn_v) else None
                if math.isfinite(loss_v):
                    self.losses.append(loss_v)
                    self.final_loss = loss_v
                    self.interval["loss_sum"] += loss_v
                    self.interval["loss_n"] += 1
                if warm_left:                               # compile / autotune / capture: timed apart
                    self.timers["warmup_s"] += dt
                    self.warm_steps += 1
                    warm_left -= 1
                else:
                    self.timers["train_s"] += dt
                    self.interval["tokens"] += tokens_per_step
                    self.interval["time"] += dt
                self.between_steps = True
                bar.set_postfix_str(self._postfix(loss_v), refresh=False)
                bar.update(1 if cfg.steps is not None else round(self.timers["train_s"]) - bar.n)
                done_now = self._budget_done()
                if self.step % cfg.log_every == 0 or done_now:
                    self._log()
                if self.cfg.minutes is not None:
                    self._check_epochs()
                if self.validator.due(self.step, self.timers["train_s"]) or (
                        done_now and self.validator.enabled and self.validator.last_at(self.step) is None):
                    self.validate()             # at the end of the budget: the final score (before the checkpoint)
                    bar.set_postfix_str(self._postfix(loss_v), refresh=True)
                if self.nonfinite_run >= cfg.max_nonfinite:
                    status = "stopped_nonfinite"
                    if self.interval["loss_n"] or self.interval["time"]:
                        self._log()
                    break
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
        finally:
            bar.close()
            if old_handler is not None and not self.stop["requested"]:   # else kept: it absorbs the repeat
                signal.signal(signal.SIGINT, old_handler)
            if getattr(self, "_old_usr1", None) is not None and not self.stop["requested"]:
                signal.signal(signal.SIGUSR1, self._old_usr1)
        if self.interval["time"] or self.interval["loss_n"]:
            self._log()
        if status == "interrupted":                         # between two steps: a consistent state
            self.save_checkpoint()
            raise KeyboardInterrupt
        if cfg.checkpoint_every and status == "completed":
            self.save_checkpoint()                          # the end point, so the run can be extended
        return status

    def _catch_sigint(self):
        """The first SIGINT (Ctrl-C, or a study being stopped) ends training after the step in flight
        and saves a checkpoint, so ``--resume`` continues exactly; a second one (2 s or more later)
        interrupts at once. SIGUSR1 (what a study sends its runs when it is interrupted) asks for the
        same graceful stop and never escalates.
        Single-process runs in the main thread only (DDP ranks keep the default behaviour)."""
        if self.world > 1 or threading.current_thread() is not threading.main_thread():
            return None

        stop = self.stop        # the handler may outlive the trainer: it holds this dict, not the model

        def handler(signum, frame):
            # A signal to a process group (Ctrl-C, `timeout`) reaches a study and its runs at once,
            # and the study then forwards one more: a repeat within 2 s is that same request.
            if stop["requested"]:
                if time.monotonic() - stop["at"] > 2.0:
                    raise KeyboardInterrupt
                return
            stop.update(requested=True, at=time.monotonic())
            sys.stderr.write("\ninterrupt: stopping after this step and saving a checkpoint "
                             "(interrupt again to stop at once)\n")

        def request(signum, frame):
            # a study's own request (SIGUSR1): the same graceful stop, never escalated, so that it
            # cannot be mistaken for a second Ctrl-C however late it arrives
            if not stop["requested"]:
                handler(signum, frame)
        if hasattr(signal, "SIGUSR1"):
            self._old_usr1 = signal.signal(signal.SIGUSR1, request)
        return signal.signal(signal.SIGINT, handler)

    def _postfix(self, loss_v: float) -> str:
        tps = self.tokens_per_s()
        txt = f"loss {loss_v:.4f}" if math.isfinite(loss_v) else f"loss {loss_v}"
        last, best = (self.validator.history or [None])[-1], self.validator.best()
        if last is not None:
            txt += f", val {last['val_loss']:.4f}" + (f" (best {best['val_loss']:.4f})" if best is not last else "")
        return txt + (f", {tps:,.0f} tok/s" if tps else "")

    def tokens_per_s(self) -> float | None:
        timed_steps = self.step - self.warm_steps
        if self.timers["train_s"] <= 0 or timed_steps <= 0:
            return None
        return timed_steps * self.cfg.batch_size * self.cfg.seq_len / self.timers["train_s"]

    # -- the end -----------------------------------------------------------------------------
    def summary(self, status: str, error: str | None = None) -> dict:
        cfg = self.cfg
        tps = self.tokens_per_s()
        peak = peak_bf16_flops(self.device) if self.device.type == "cuda" else None
        losses = list(self.losses)
        s = {
            "model": cfg.model.model, "params": self.n_params, "dim": cfg.model.dim, "depth": cfg.model.depth,
            "steps": self.step, "tokens": self.tokens,
            "loss_last100": float(np.mean(losses)) if losses else None,
            "final_loss": self.final_loss,
            "tokens_per_s": tps,
            "mfu": (self.flops_per_token() * tps / (peak * self.world)) if (peak and tps) else None,
            "flops_per_token": self.flops_per_token(),
            "peak_memory_gb": peak_memory_gb(self.device),
            "wall_s": self._wall(),
            "train_s": self.timers["train_s"], "warmup_s": self.timers["warmup_s"],
            "checkpoint_s": self.timers["checkpoint_s"], "eval_s": self.timers["eval_s"],
            "data_fingerprint": self.fingerprint,
            "world_size": self.world, "device": self.device.type, "gpu_jobs": gpu_jobs(), "versions": versions(self.device),
            "status": status,
            "config": cfg.model.to_dict(), "options": dataclasses.asdict(cfg.model.options),
            "seed": cfg.seed, "batch_size": cfg.batch_size, "seq_len": cfg.seq_len, "lr": cfg.lr,
            "weight_decay": cfg.weight_decay, "warmup_steps": cfg.warmup_steps, "grad_clip": cfg.grad_clip,
            "budget": cfg.budget, "nonfinite_steps": self.nonfinite_total, "dropout": cfg.dropout, "keep_best": cfg.keep_best,
            "epochs": self.epochs(), "train_bytes": self.split.train_bytes, **self.validator.summary_fields(),
            "compile": cfg.compile, "cuda_graph": self.use_graph, "cuda_graph_off": self.graph_note,
            "allow_reference": cfg.allow_reference, "reference_reason": self.reference_note,
            "kernel": self.kernel(), "implementations": implementations_used(), "source": source_info(),
            "data": self.split.data_path, "val_data": self.split.val_path,
            "run_dir": str(self.out),
        }
        if error is not None:
            s["error"] = error
        return s

    def _finish(self, status: str) -> dict:
        """The final weights, the held-out score (a completed run) and summary.json."""
        from elmanlab.evaluate import VAL_FIELDS
        extra = {}
        if self.is_main:
            if self.cfg.eval_bytes > 0 and status == "completed":
                # the loop scores the last step; a run that had no step left to take is scored here
                point = self.validator.last_at(self.step) or self.validate()
                extra = {k: point[k] for k in VAL_FIELDS}
            t0 = time.perf_counter()
            self.optimizer.eval()                          # final weights: Schedule-Free's average x
            self.model.eval()
            checkpoint.save_weights(self.model, self.out)
            self.timers["eval_s"] += time.perf_counter() - t0
        summary = self.summary(status)
        summary.update(extra)
        if self.is_main:
            atomic_write_json(self.out / SUMMARY_FILE, summary)
        return summary

    def _fail(self, message: str) -> None:
        """Record a run that failed after it started (summary.json with status failed and the error)."""
        if not self.is_main or not self.out.is_dir():
            return
        with contextlib.suppress(OSError):
            atomic_write_json(self.out / SUMMARY_FILE, self.summary("failed", message))

    def close(self) -> None:
        """Release what the run holds: the metrics file, CPU float mode, the process group."""
        if getattr(self, "metrics", None) is not None:
            self.metrics.close()
            self.metrics = None
        torch.set_flush_denormal(False)                    # the default; set only for the loop on CPU
        if self.world > 1:
            import torch.distributed as dist
            if dist.is_initialized():
                with contextlib.suppress(Exception):
                    dist.barrier()
                dist.destroy_process_group()

    def run(self) -> dict:
        """Train to the budget and write the run folder; returns the summary (also summary.json).
        A crash after the start is recorded in summary.json and raised as one ElmanlabError line; an
        interrupt saves a checkpoint between two steps (with --checkpoint-every) and propagates."""
        started = False
        try:
            self.write_config()
            self._open_metrics()
            started = True
            return self._finish(self._loop())
        except ElmanlabError as e:
            if started:
                self._fail(str(e))
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
            self._fail(f"step {self.step}: {msg}")
            if os.environ.get("ELMANLAB_DEBUG"):
                raise
            raise ElmanlabError(f"training failed at step {self.step}: {msg} "
                                f"(recorded in {self.out / SUMMARY_FILE})") from e
        finally:
            self.close()


def gpu_jobs() -> int:
    """Jobs sharing this run's GPU, as a study's --jobs-per-gpu says (1: the GPU was this run's alone)."""
    raw = os.environ.get(GPU_JOBS_ENV, "1")
    return int(raw) if raw.isdigit() and int(raw) >= 1 else 1


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
