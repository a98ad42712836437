"""The training loop: Schedule-Free AdamW, precision, budgets, metrics, checkpoints, resume, DDP.

Python API::

    from elmanlab.sizing import model_config
    from elmanlab.train import TrainConfig, run_training, resume_training
    summary = run_training(TrainConfig(model=model_config("e1", params="1M"), out="runs/x", steps=100))
    summary = resume_training("runs/x", steps=200)        # continue (or extend) a run

A run folder holds ``config.json`` (rebuilds the model and the run), ``metrics.jsonl`` (one line
per logged step), ``summary.json`` (written once, at the end), ``model.safetensors`` (the final
Schedule-Free *evaluation* weights) and, with ``checkpoint_every``, ``checkpoints/step_XXXXXXXX/``
(weights as safetensors plus optimizer, data-stream and RNG state; the last two are kept).

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
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from elmanlab.config import ModelConfig
from elmanlab.data import fingerprint_update
from elmanlab.errors import ElmanlabError
from elmanlab.fsutil import atomic_write_json, atomic_write_text, make_public
from elmanlab.lm import autocast

RUN_FORMAT = "elmanlab-run-v1"
CHECKPOINT_DIR = "checkpoints"
KEEP_CHECKPOINTS = 2
RUN_FILES = ("config.json", "summary.json", "metrics.jsonl", "model.safetensors", CHECKPOINT_DIR)

# bf16 dense matmul rates measured on these GPUs (used for MFU); others are measured once.
PEAK_BF16_FLOPS = (("H200", 789e12), ("H100", 750e12))


# ---------------------------------------------------------------- configuration

@dataclass
class TrainConfig:
    """Everything a training run needs besides the data bytes themselves."""
    model: Any                              # ModelConfig (or its to_dict())
    out: str                                # run folder
    data: str | None = None                 # None: the embedded corpus
    val_data: str | None = None             # None: hold out the tail of ``data``
    steps: int | None = None                # budget: optimizer steps ...
    minutes: float | None = None            # ... or minutes of training time (exactly one)
    batch_size: int = 16                    # global batch (all ranks together)
    seq_len: int = 512
    lr: float = 3e-4
    weight_decay: float = 0.1               # on matrices (ndim >= 2) only
    warmup_steps: int = 0                   # Schedule-Free linear warm-up
    beta1: float = 0.9
    beta2: float = 0.999
    grad_clip: float | None = None          # max global grad norm; None: no clipping
    seed: int = 42
    device: str = "auto"                    # auto | cpu | cuda | cuda:N
    compile: bool = False                   # torch.compile the model
    cuda_graph: bool = False                # replay forward + backward as one captured CUDA graph
    checkpoint_every: int = 0               # steps between checkpoints; 0: none
    log_every: int = 10                     # steps between metrics.jsonl lines
    eval_bytes: int = 262_144               # held-out bytes scored at the end; 0: skip
    max_nonfinite: int = 10                 # stop after this many non-finite steps in a row
    progress: bool = True                   # tqdm bar on stderr

    def __post_init__(self):
        if isinstance(self.model, dict):
            self.model = ModelConfig.from_dict(self.model)
        if not isinstance(self.model, ModelConfig):
            raise ElmanlabError("TrainConfig.model must be a ModelConfig or its dict")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["model"] = self.model.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    @property
    def budget(self) -> dict:
        return {"steps": self.steps} if self.steps is not None else {"minutes": self.minutes}

    def validate(self, world_size: int = 1) -> None:
        def need(cond, msg):
            if not cond:
                raise ElmanlabError(msg)
        need((self.steps is None) != (self.minutes is None), "give exactly one budget: --steps N or --minutes M")
        if self.steps is not None:
            need(isinstance(self.steps, int) and self.steps >= 1, f"--steps must be a positive integer, got {self.steps}")
        if self.minutes is not None:
            need(math.isfinite(self.minutes) and self.minutes > 0, f"--minutes must be positive, got {self.minutes}")
        need(self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}")
        need(self.seq_len >= 1, f"--seq-len must be >= 1, got {self.seq_len}")
        need(math.isfinite(self.lr) and self.lr > 0, f"--lr must be positive, got {self.lr}")
        need(self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}")
        need(self.warmup_steps >= 0, f"--warmup-steps must be >= 0, got {self.warmup_steps}")
        need(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "betas must be in [0, 1)")
        need(self.grad_clip is None or self.grad_clip > 0, f"--grad-clip must be positive, got {self.grad_clip}")
        need(self.checkpoint_every >= 0, f"--checkpoint-every must be >= 0, got {self.checkpoint_every}")
        need(self.log_every >= 1, f"--log-every must be >= 1, got {self.log_every}")
        need(self.eval_bytes == 0 or self.eval_bytes > self.seq_len,
             f"--eval-bytes must be 0 (no final evaluation) or more than --seq-len {self.seq_len}, "
             f"got {self.eval_bytes}")
        need(self.max_nonfinite >= 1, f"--max-nonfinite must be >= 1, got {self.max_nonfinite}")
        need(not (self.cuda_graph and self.compile), "--cuda-graph and --compile cannot be combined: drop one")
        need(not (self.cuda_graph and world_size > 1),
             f"--cuda-graph runs in one process, not {world_size}: drop it under torchrun")
        need(self.batch_size % world_size == 0,
             f"--batch-size {self.batch_size} (the global batch) must be divisible by the {world_size} processes")


# ---------------------------------------------------------------- small helpers

def read_json(path: Path) -> dict:
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, json.JSONDecodeError) as e:
        raise ElmanlabError(f"cannot read {path}: {e}") from None


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    name = (name or "auto").lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ElmanlabError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
        if name == "cuda":
            return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
        try:
            dev = torch.device(name)
        except RuntimeError:
            raise ElmanlabError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ElmanlabError(f"{name} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
        return dev
    if name == "cpu":
        return torch.device("cpu")
    raise ElmanlabError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")


def versions(device: torch.device) -> dict:
    from importlib import metadata

    def ver(dist):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None
    out = {"elmanlab": ver("elmanlab"), "python": sys.version.split()[0], "torch": torch.__version__,
           "numpy": np.__version__, "schedulefree": ver("schedulefree"), "triton": ver("triton"),
           "fla": ver("flash-linear-attention") or ver("fla-core"), "mamba_ssm": ver("mamba-ssm") or ver("mamba_ssm"),
           "cuda": torch.version.cuda, "gpu": None}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


_MEASURED_PEAK: dict = {}


def measure_bf16_matmul_flops(device: torch.device, n: int = 8192, reps: int = 10) -> float:
    """bf16 FLOP/s of an n x n x n matmul on this GPU: the median of 5 timed groups of ``reps``
    products (CUDA events), after 3 untimed ones."""
    import statistics
    with torch.cuda.device(device):              # the events record on the current device
        a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
        b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
        for _ in range(3):
            a @ b
        times = []
        for _ in range(5):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            for _ in range(reps):
                a @ b
            e.record()
            torch.cuda.synchronize(device)
            times.append(s.elapsed_time(e) / 1e3 / reps)
        del a, b
        torch.cuda.empty_cache()
    return 2 * n ** 3 / statistics.median(times)


def peak_bf16_flops(device: torch.device) -> float | None:
    """bf16 matmul FLOP/s of this GPU: the measured table, else a one-off measurement."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_BF16_FLOPS:
        if key.lower() in name.lower():
            return flops
    if name not in _MEASURED_PEAK:
        _MEASURED_PEAK[name] = measure_bf16_matmul_flops(device)
    return _MEASURED_PEAK[name]


def peak_memory_gb(device: torch.device) -> float:
    """Peak CUDA memory allocated, or the process's peak resident set size on CPU (GB = 1e9 bytes)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    import resource
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss * (1 if sys.platform == "darwin" else 1024) / 1e9


def _dist_info() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return world, rank, local


def _param_groups(model: torch.nn.Module, weight_decay: float):
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig):
    import schedulefree
    return schedulefree.AdamWScheduleFree(_param_groups(model, cfg.weight_decay), lr=cfg.lr,
                                          betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay,
                                          warmup_steps=cfg.warmup_steps)


def _grad_norm(params) -> torch.Tensor:
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    if hasattr(torch.nn.utils, "get_total_norm"):
        return torch.nn.utils.get_total_norm(grads, 2.0)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))


class GraphedStep:
    """``fn(x)`` (forward + backward of a batch ``x``) captured once as a CUDA graph, then replayed.

    Each replay launches the whole step's kernels at once, so a step whose many small kernels keep
    the host busier than the GPU (launch overhead) runs at the GPU's pace. The batch is copied into
    the captured input, the outputs and the parameters' gradients come back in the same tensors each
    time (the gradients are written, not accumulated: callers must not zero or drop them). ``fn``
    must have run eagerly on ``stream`` before (Triton autotuning, TileLang JIT, lazy inits), and
    must not synchronise with the host.
    """

    def __init__(self, fn, x: torch.Tensor, stream: torch.cuda.Stream):
        self.x = x.clone()
        self.graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize(x.device)
        torch.cuda.empty_cache()        # the eager steps' cached blocks: the graph keeps its own pool
        try:
            with torch.cuda.graph(self.graph, stream=stream):
                self.out = fn(self.x)
        except Exception as e:
            # torch.cuda.graph's exit ends the capture even after an error, and that raises its own
            # "previous error during capture": the cause is the exception it was raised during
            cause = e.__context__ if e.__context__ is not None else e
            msg = f"{type(cause).__name__}: {cause}".splitlines()[0][:300]
            raise ElmanlabError(f"--cuda-graph: capturing the training step failed ({msg}); run without "
                                "--cuda-graph") from e
        self.replays = 0

    def __call__(self, x: torch.Tensor):
        self.x.copy_(x, non_blocking=True)
        self.graph.replay()
        self.replays += 1
        return self.out


# ---------------------------------------------------------------- run folders

def is_run_dir(path: str | os.PathLike) -> bool:
    p = Path(path) / "config.json"
    if not p.is_file():
        return False
    try:
        return json.loads(p.read_text()).get("format") == RUN_FORMAT
    except (OSError, ValueError):
        return False


def load_run_config(run_dir: str | os.PathLike) -> dict:
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise ElmanlabError(f"{run_dir} does not exist; give the --out folder of `elmanlab train`")
    if not is_run_dir(run_dir):
        raise ElmanlabError(f"{run_dir} is not a run folder (no elmanlab config.json); "
                            f"give the --out folder of `elmanlab train`")
    return read_json(run_dir / "config.json")


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints, oldest first (a checkpoint folder appears only once fully written)."""
    d = Path(run_dir) / CHECKPOINT_DIR
    if not d.is_dir():
        return []
    out = []
    for c in d.iterdir():
        if re.fullmatch(r"step_\d{8,}", c.name) and (c / "model.safetensors").is_file() and (c / "state.pt").is_file():
            out.append(c)
    return sorted(out, key=lambda c: int(c.name[5:]))


def weights_path(run_dir: str | os.PathLike) -> Path:
    """The final weights, else the newest checkpoint's."""
    run_dir = Path(run_dir)
    if (run_dir / "model.safetensors").is_file():
        return run_dir / "model.safetensors"
    ckpts = list_checkpoints(run_dir)
    if ckpts:
        return ckpts[-1] / "model.safetensors"
    raise ElmanlabError(f"{run_dir} has no weights yet (no model.safetensors and no checkpoint); "
                        f"let the run finish or train with --checkpoint-every N")


def load_model(run_dir: str | os.PathLike, device: str | torch.device = "cpu"):
    """(model in eval mode with the run's evaluation weights, run config dict)."""
    from safetensors.torch import load_file
    from elmanlab.lm import LM
    conf = load_run_config(run_dir)
    cfg = ModelConfig.from_dict(conf["model"])
    model = LM(cfg)
    path = weights_path(run_dir)
    try:
        state = load_file(str(path))
    except Exception as e:  # noqa: BLE001 - corrupt or foreign file
        raise ElmanlabError(f"cannot read weights {path}: {e}") from None
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:                              # a tensor of another shape
        raise ElmanlabError(f"weights {path} do not match the model in config.json: "
                            f"{str(e).splitlines()[-1].strip()}") from None
    if missing or unexpected:
        raise ElmanlabError(f"weights {path} do not match the model in config.json "
                            f"(missing {len(missing)}, unexpected {len(unexpected)} tensors)")
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    return model.to(dev).eval(), conf


def _check_out_dir(out: Path) -> None:
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


def _save_safetensors(state: dict, path: Path) -> None:
    from safetensors.torch import save_file
    save_file({k: v.detach().to("cpu").contiguous() for k, v in state.items()}, str(path))


# ---------------------------------------------------------------- the trainer

class _Trainer:
    def __init__(self, cfg: TrainConfig, resume_dir: Path | None = None):
        self.cfg = cfg
        self.resume_dir = resume_dir
        self.world, self.rank, self.local_rank = _dist_info()
        self.is_main = self.rank == 0
        self.t_start = time.perf_counter()

    # -- setup -------------------------------------------------------------------------------
    def setup(self) -> None:
        from elmanlab.data import BatchSampler, fingerprint_start, make_split
        from elmanlab.lm import LM
        cfg = self.cfg
        cfg.validate(self.world)
        self.device = resolve_device(cfg.device, self.local_rank)
        if cfg.cuda_graph and self.device.type != "cuda":
            raise ElmanlabError(f"--cuda-graph needs a CUDA device, not {self.device}: drop --cuda-graph "
                                "(with --resume: --no-cuda-graph)")
        # data paths are stored absolute so that eval, generate and resume work from any folder
        if cfg.data is not None:
            cfg.data = str(Path(cfg.data).expanduser().resolve())
        if cfg.val_data is not None:
            cfg.val_data = str(Path(cfg.val_data).expanduser().resolve())
        self.split = make_split(cfg.data, cfg.val_data, cfg.seq_len, progress=cfg.progress and self.is_main)
        self.sampler = BatchSampler(self.split.train_bytes, cfg.seq_len, cfg.batch_size, cfg.seed)
        self.out = Path(cfg.out).expanduser()
        if self.resume_dir is None and self.is_main:
            _check_out_dir(self.out)

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
        self.model = LM(cfg.model).to(self.device)
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
        if cfg.cuda_graph:
            self.graph_stream = torch.cuda.Stream(self.device)
        if cfg.compile:
            self.fwd = torch.compile(self.fwd)
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP
            self.fwd = DDP(self.fwd, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.b_local = cfg.batch_size // self.world
        self.rows = slice(self.rank * self.b_local, (self.rank + 1) * self.b_local)

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
        if self.resume_dir is not None:
            self._load_checkpoint()

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
        root = self.out / CHECKPOINT_DIR
        root.mkdir(exist_ok=True)
        name = f"step_{self.step:08d}"
        final = root / name
        if final.exists():
            return
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}."))
        make_public(tmp, directory=True)
        try:
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
            }
            torch.save(state, tmp / "state.pt")
            with self.eval_weights():
                _save_safetensors(self.model.state_dict(), tmp / "model.safetensors")
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        for old in list_checkpoints(self.out)[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)
        self.timers["checkpoint_s"] += time.perf_counter() - t0

    def _load_checkpoint(self) -> None:
        ckpts = list_checkpoints(self.resume_dir)
        if not ckpts:
            raise ElmanlabError(f"{self.resume_dir} has no complete checkpoint to resume from; "
                                f"runs are resumable when trained with --checkpoint-every N")
        if self.is_main:                                   # folders of checkpoints cut short by a kill
            for junk in (self.resume_dir / CHECKPOINT_DIR).glob(".step_*"):
                shutil.rmtree(junk, ignore_errors=True)
        path = ckpts[-1] / "state.pt"
        try:
            st = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise ElmanlabError(f"cannot read checkpoint {path}: {e}") from None
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
        except (RuntimeError, KeyError, ValueError) as e:  # edited config.json, or a foreign state.pt
            raise ElmanlabError(f"checkpoint {path} does not match the run's config.json "
                                f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
        self.prior_wall = self.timers["wall_s"]
        torch.set_rng_state(st["rng_cpu"])
        if self.device.type == "cuda" and st["rng_cuda"]:
            with contextlib.suppress(Exception):
                torch.cuda.set_rng_state_all(st["rng_cuda"])

    def _wall(self) -> float:
        return getattr(self, "prior_wall", 0.0) + (time.perf_counter() - self.t_start)

    # -- writing -----------------------------------------------------------------------------
    def write_config(self) -> None:
        if not self.is_main:
            return
        conf = {"format": RUN_FORMAT, "model": self.cfg.model.to_dict(), "params": self.n_params,
                "train": {k: v for k, v in self.cfg.to_dict().items() if k != "model"},
                "data": self.split.describe(), "world_size": self.world}
        atomic_write_json(self.out / "config.json", conf)

    def _prepare_metrics(self) -> None:
        if not self.is_main:
            return
        path = self.out / "metrics.jsonl"
        if self.resume_dir is not None and path.exists():
            keep = []
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue            # a line cut short by a kill
                if rec.get("step", 0) <= self.step:
                    keep.append(line)
            atomic_write_text(path, "".join(x + "\n" for x in keep))
        self.metrics_fh = open(path, "a")

    def _log(self) -> None:
        iv = self.interval
        rec = {"step": self.step,
               "loss": iv["loss_sum"] / iv["loss_n"] if iv["loss_n"] else None,
               "tokens": self.tokens, "elapsed": round(self.timers["train_s"], 4),
               "tokens_per_s": round(iv["tokens"] / iv["time"], 2) if iv["time"] > 0 else None,
               "lr": float(self.optimizer.param_groups[0].get("scheduled_lr", self.cfg.lr)),
               "grad_norm": self.last_grad_norm}
        if self.is_main:
            self.metrics_fh.write(json.dumps(rec) + "\n")
            self.metrics_fh.flush()
        self.interval = {"loss_sum": 0.0, "loss_n": 0, "tokens": 0, "time": 0.0}

    # -- the loop ----------------------------------------------------------------------------
    def _budget_done(self) -> bool:
        if self.cfg.steps is not None:
            return self.step >= self.cfg.steps
        return self.timers["train_s"] >= 60.0 * self.cfg.minutes

    @property
    def warm_up_steps(self) -> int:
        """Steps of a process timed apart as warm-up: the first (compilation, autotuning), and with
        --cuda-graph also the second (the capture)."""
        return 2 if self.cfg.cuda_graph else 1

    def _loss_and_grads(self, x: torch.Tensor) -> torch.Tensor:
        """Forward and backward of the batch ``x`` [B, T+1]: [loss, gradient norm] on the device,
        without a host synchronisation (so that it can be captured in a CUDA graph)."""
        with autocast(self.device, cache=not self.cfg.cuda_graph):
            _, loss = self.fwd(x[:, :-1], x[:, 1:])
        loss.backward()
        gn = _grad_norm(self.params).to(loss.device)
        return torch.stack([loss.detach().float(), gn.float()])

    def _train_step(self) -> tuple[float, float]:
        cfg = self.cfg
        win, offsets = self.sampler.batch(self.split.train, self.step, self.rows)
        x = torch.from_numpy(win).to(self.device, non_blocking=True).long()
        if self.graphed is not None:
            stats = self.graphed(x)
        elif cfg.cuda_graph and self.graph_warm:            # warmed up on the graph's stream: capture
            self.graphed = GraphedStep(self._loss_and_grads, x, self.graph_stream)
            stats = self.graphed(x)
        elif cfg.cuda_graph:                                # the eager warm-up, on the graph's stream
            self.graph_stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self.graph_stream):
                stats = self._loss_and_grads(x)
            torch.cuda.current_stream(self.device).wait_stream(self.graph_stream)
            # its gradients, made on the graph's stream, are used and freed on the default one: the
            # capture (next step) synchronises the device before the graph's stream allocates again
            self.graph_warm = True
        else:
            stats = self._loss_and_grads(x)
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
        return loss_v, gn_v

    def _stop_flag(self) -> bool:
        """Agree across ranks on whether a time budget is spent (rank 0 decides)."""
        done = self._budget_done()
        if self.world > 1 and self.cfg.minutes is not None:
            import torch.distributed as dist
            t = torch.tensor([1.0 if (done and self.is_main) else 0.0], device=self.device)
            dist.all_reduce(t)
            done = t.item() > 0
        return done

    def train(self) -> str:
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
        warm_left = self.warm_up_steps                     # this process's steps timed apart
        old_handler = self._catch_sigint()
        try:
            while not self._stop_flag():
                if self.stop["requested"]:
                    status = "interrupted"
                    break
                t0 = time.perf_counter()
                self.between_steps = False
                loss_v, gn_v = self._train_step()
                if warm_left and self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                dt = time.perf_counter() - t0
                self.step += 1
                self.tokens += tokens_per_step
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
        interrupts at once.
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
        return signal.signal(signal.SIGINT, handler)

    def _postfix(self, loss_v: float) -> str:
        tps = self.tokens_per_s()
        loss_txt = f"{loss_v:.4f}" if math.isfinite(loss_v) else str(loss_v)
        return f"loss {loss_txt}, {tps:,.0f} tok/s" if tps else f"loss {loss_txt}"

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
            "mfu": (6.0 * self.n_params * tps / (peak * self.world)) if (peak and tps) else None,
            "peak_memory_gb": peak_memory_gb(self.device),
            "wall_s": self._wall(),
            "train_s": self.timers["train_s"], "warmup_s": self.timers["warmup_s"],
            "checkpoint_s": self.timers["checkpoint_s"], "eval_s": self.timers["eval_s"],
            "data_fingerprint": self.fingerprint,
            "world_size": self.world, "device": self.device.type, "versions": versions(self.device),
            "status": status,
            "config": cfg.model.to_dict(), "options": dataclasses.asdict(cfg.model.options),
            "seed": cfg.seed, "batch_size": cfg.batch_size, "seq_len": cfg.seq_len, "lr": cfg.lr,
            "weight_decay": cfg.weight_decay, "warmup_steps": cfg.warmup_steps, "grad_clip": cfg.grad_clip,
            "budget": cfg.budget, "nonfinite_steps": self.nonfinite_total,
            "compile": cfg.compile, "cuda_graph": cfg.cuda_graph,
            "data": self.split.data_path, "val_data": self.split.val_path,
            "run_dir": str(self.out),
        }
        if error is not None:
            s["error"] = error
        return s

    def finish(self, status: str) -> dict:
        from elmanlab.evaluate import evaluate_bytes
        summary_extra = {}
        if self.is_main:
            t0 = time.perf_counter()
            self.optimizer.eval()                          # final weights: Schedule-Free's average x
            self.model.eval()
            _save_safetensors(self.model.state_dict(), self.out / "model.safetensors.tmp")
            os.replace(self.out / "model.safetensors.tmp", self.out / "model.safetensors")
            if self.cfg.eval_bytes > 0 and status == "completed":
                res = evaluate_bytes(self.model, self.split.val, self.cfg.seq_len, self.cfg.eval_bytes,
                                     self.b_local * self.world, self.device)
                summary_extra = {"val_loss": res["val_loss"], "val_bpb": res["val_bpb"],
                                 "val_bytes": res["val_bytes"]}
            self.timers["eval_s"] += time.perf_counter() - t0
        summary = self.summary(status)
        summary.update(summary_extra)
        if self.is_main:
            atomic_write_json(self.out / "summary.json", summary)
        return summary

    def fail(self, message: str) -> dict | None:
        if not self.is_main or not hasattr(self, "n_params") or not self.out.is_dir():
            return None
        s = self.summary("failed", message)
        with contextlib.suppress(OSError):
            atomic_write_json(self.out / "summary.json", s)
        return s

    def close(self) -> None:
        fh = getattr(self, "metrics_fh", None)
        if fh is not None:
            fh.close()


def _run(trainer: _Trainer) -> dict:
    started = False
    try:
        trainer.setup()
        trainer.write_config()
        trainer._prepare_metrics()
        started = True
        status = trainer.train()
        summary = trainer.finish(status)
    except ElmanlabError as e:
        if started:
            trainer.fail(str(e))
        raise
    except KeyboardInterrupt:
        # (after an interrupt's own checkpoint this returns at once: that step's checkpoint exists)
        if started and trainer.cfg.checkpoint_every and trainer.between_steps:
            with contextlib.suppress(Exception):
                trainer.save_checkpoint()
        raise
    except Exception as e:  # noqa: BLE001 - a crash mid-run is recorded, then reported in one line
        if not started:
            raise
        msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
        trainer.fail(f"step {trainer.step}: {msg}")
        if os.environ.get("ELMANLAB_DEBUG"):
            raise
        raise ElmanlabError(f"training failed at step {trainer.step}: {msg} "
                            f"(recorded in {trainer.out / 'summary.json'})") from e
    finally:
        trainer.close()
        torch.set_flush_denormal(False)                    # the default; set only for the loop on CPU
        if trainer.world > 1:
            import torch.distributed as dist
            if dist.is_initialized():
                with contextlib.suppress(Exception):
                    dist.barrier()
                dist.destroy_process_group()
    return summary


def run_training(cfg: TrainConfig) -> dict:
    """Train one model from scratch into ``cfg.out``; returns the summary dict (also summary.json)."""
    return _run(_Trainer(cfg))


def resume_training(run_dir: str | os.PathLike, steps: int | None = None, minutes: float | None = None,
                    device: str | None = None, progress: bool | None = None,
                    checkpoint_every: int | None = None, cuda_graph: bool | None = None) -> dict:
    """Continue a run from its newest checkpoint to its budget (or a new one given here). ``device``,
    ``progress``, ``checkpoint_every`` and ``cuda_graph`` change how it runs, not what it computes."""
    run_dir = Path(run_dir).expanduser()
    conf = load_run_config(run_dir)
    tc = dict(conf["train"])
    tc["model"] = conf["model"]
    tc["out"] = str(run_dir)
    if steps is not None or minutes is not None:
        tc["steps"], tc["minutes"] = steps, minutes
    if device is not None:
        tc["device"] = device
    if progress is not None:
        tc["progress"] = progress
    if checkpoint_every is not None:
        tc["checkpoint_every"] = checkpoint_every
    if cuda_graph is not None:
        tc["cuda_graph"] = cuda_graph
    cfg = TrainConfig.from_dict(tc)
    if (run_dir / "summary.json").is_file():
        done = read_json(run_dir / "summary.json")
        if done.get("status") == "completed" and (
                (cfg.steps is not None and done.get("steps", 0) >= cfg.steps)
                or (cfg.minutes is not None and steps is None and minutes is None)):
            return done                                    # nothing left to do
    trainer = _Trainer(cfg, resume_dir=run_dir)
    return _run(trainer)


def run_is_complete(run_dir: str | os.PathLike, steps: int | None = None) -> bool:
    p = Path(run_dir) / "summary.json"
    if not p.is_file():
        return False
    try:
        s = json.loads(p.read_text())
    except ValueError:
        return False
    if s.get("status") != "completed":
        return False
    if steps is not None:
        return s.get("steps", 0) >= steps
    return True
