"""Typed configurations: :class:`ModelConfig` (family, width, depth, the family's options) and
:class:`TrainConfig` (everything a training run needs besides the data bytes).

Each train setting is declared once, here, as a :class:`TrainConfig` field made with
:func:`setting`: its default, its help, its group, whether it defines a run and whether
``--resume`` may change it. The ``elmanlab train`` flags, the study file's ``train:`` keys, the
report's identity keys and the resume checks are all generated from these declarations.

Torch-free: the family registry (which imports PyTorch) is imported only when a ModelConfig is
built, so the study runner and the report can read the settings without it.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from elmanlab.errors import ElmanlabError

DEFAULT_EVAL_BYTES = 262_144        # held-out bytes scored at the end of training and by `elmanlab eval`
DEFAULT_STEPS = 300                 # the budget of `elmanlab train` when none is given
AUTO_EVALS = 10                     # held-out evaluations over a budget when --eval-every is not given,
AUTO_EVAL_SHARE = 0.25              # unless they would score more than this share of the bytes trained on
PRECISIONS = ("autocast", "bf16")   # TrainConfig.precision
DECAY_SCOPES = ("matrices", "all")  # TrainConfig.weight_decay_on


# ---------------------------------------------------------------- the model

NORMS = ("rms", "layer")            # ModelConfig.norm: RMSNorm (default) or LayerNorm with bias

@dataclass
class ModelConfig:
    model: str
    dim: int
    depth: int
    options: Any = None                 # the family's Options dataclass (resolved)
    mlp_ratio: float | None = None      # > 0 adds a SwiGLU MLP sublayer with hidden mlp_ratio * dim;
                                        # None: the family's default_mlp_ratio (0 but the transformer's 8/3)
    tie_embeddings: bool = False        # untied head by default (ekg/elman's runs tied it)
    norm: str = "rms"                   # the wrapper's norms: rms (RMSNorm) or layer (LayerNorm with bias,
                                        # ekg/elman's 400M runs); see lm.make_norm

    def __post_init__(self):
        fam = _family(self.model)
        self.model = fam.name
        if self.options is None:
            self.options = fam.Options()
        elif isinstance(self.options, dict):
            self.options = make_options(fam.name, self.options)
        if self.dim < 1:
            raise ElmanlabError(f"dim must be >= 1, got {self.dim}")
        if self.depth < 1:
            raise ElmanlabError(f"depth must be >= 1, got {self.depth}")
        if self.mlp_ratio is None:
            self.mlp_ratio = float(fam.default_mlp_ratio)
        if (isinstance(self.mlp_ratio, bool) or not isinstance(self.mlp_ratio, (int, float))
                or not math.isfinite(self.mlp_ratio) or self.mlp_ratio < 0):
            raise ElmanlabError(f"mlp_ratio must be a number >= 0, got {self.mlp_ratio!r}")
        self.mlp_ratio = float(self.mlp_ratio)
        if self.norm not in NORMS:
            raise ElmanlabError(f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        self.options = fam.resolve(self.dim, self.options)

    @property
    def family(self):
        return _family(self.model)

    def to_dict(self) -> dict:
        return {"model": self.model, "dim": self.dim, "depth": self.depth,
                "options": dataclasses.asdict(self.options), "mlp_ratio": self.mlp_ratio,
                "tie_embeddings": self.tie_embeddings, "norm": self.norm}

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ElmanlabError(f"unknown model config keys: {', '.join(sorted(unknown))}")
        return cls(**d)


def _family(name: str):
    from elmanlab.layers import get_family
    return get_family(name)


def default_mlp_ratio(model: str) -> float:
    """The MLP ratio a ModelConfig of ``model`` gets when none is given (0.0: no MLP sublayer)."""
    return float(_family(model).default_mlp_ratio)


def option_fields(model: str) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(_family(model).Options)}


def make_options(model: str, values: dict):
    """Build a family's Options from a dict, rejecting options the family does not have."""
    fam = _family(model)
    fields_ = option_fields(fam.name)
    unknown = [k for k in values if k not in fields_]
    if unknown:
        have = ", ".join(fields_) or "none"
        raise ElmanlabError(f"{fam.name} has no option {', '.join(unknown)} (its options: {have})")
    clean = {}
    for k, v in values.items():
        choices = fields_[k].metadata.get("choices")
        if choices and v not in choices:
            raise ElmanlabError(f"{fam.name} option {k} must be one of {', '.join(choices)}, got {v!r}")
        clean[k] = v
    return fam.Options(**clean)


_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def field_type(f: dataclasses.Field) -> type:
    """The value type of an option or setting field (``int | None`` -> int); str when unsure."""
    t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    base = t.replace(" | None", "").replace("Optional[", "").rstrip("]")
    return _TYPES.get(base, str)


# ---------------------------------------------------------------- training settings

GROUPS = {"data": "data", "budget": "budget (one of)", "optimisation": "optimisation", "run": "run"}


def setting(default, help: str, group: str, *, identity: bool = True, resume: bool = False):
    """A TrainConfig field that is a user-facing setting.

    ``identity``: the setting defines the run (what it computes or records): it is part of a study
    job's identity and name and of the report's configuration key. Paths, devices and how a run is
    executed or logged are not. ``resume``: ``elmanlab train --resume`` may change it (how the run
    continues); every other setting comes from the run's config.json."""
    assert group in GROUPS, group
    return field(default=default, metadata={"setting": True, "help": help, "group": group,
                                            "identity": identity, "resume": resume})


@dataclass
class TrainConfig:
    """Everything a training run needs besides the data bytes themselves."""
    model: Any                              # ModelConfig (or its to_dict())
    out: str                                # run folder
    data: str | None = setting(
        None, "training bytes: any file, or .zst (decompressed once to a cache); default: the embedded "
              "Shakespeare corpus", "data", identity=False)
    val_data: str | None = setting(
        None, "validation bytes; default: hold out the last 10% (at most 8 MiB) of --data, which training "
              "never samples", "data", identity=False)
    steps: int | None = setting(
        None, f"optimizer steps (default {DEFAULT_STEPS} when no budget is given)", "budget", resume=True)
    minutes: float | None = setting(
        None, "minutes of training time (the warm-up (the first step; with --cuda-graph the first two), "
              "checkpointing and evaluation are timed apart and not charged)", "budget", resume=True)
    batch_size: int = setting(16, "global batch: sequences per step over all ranks", "optimisation")
    seq_len: int = setting(512, "bytes per sequence; windows are seq_len + 1", "optimisation")
    lr: float = setting(3e-4, "Schedule-Free AdamW learning rate", "optimisation")
    weight_decay: float = setting(0.1, "weight decay (on the parameters --weight-decay-on names)", "optimisation")
    weight_decay_on: str = setting(
        "matrices", "matrices: weight decay on matrices (ndim >= 2) only; all: on every parameter, norm gains, "
                    "biases and Mamba2's A_log, D and dt_bias too, as ekg/elman's runs "
                    "(AdamWScheduleFree(model.parameters(), weight_decay=0.1))", "optimisation")
    warmup_steps: int = setting(0, "Schedule-Free linear warm-up steps", "optimisation")
    beta1: float = setting(0.9, "Adam beta1 (Schedule-Free's interpolation momentum)", "optimisation")
    beta2: float = setting(0.999, "Adam beta2", "optimisation")
    grad_clip: float | None = setting(None, "clip the global gradient norm to this value; default: off",
                                      "optimisation")
    precision: str = setting(
        "autocast", "autocast: fp32 weights, gradients and optimizer state, bf16 autocast on CUDA (fp32 on the "
                    "CPU); bf16: the whole model, its gradients and Schedule-Free's state in bf16, no autocast, "
                    "as ekg/elman's 400M runs (`.bfloat16()`): an update below half a bf16 spacing of its weight "
                    "is lost (docs/reference/ekg-elman-differences.md, 'Pure bf16'); its held-out scores and saved weights "
                    "use the weights being trained, y (summary.json's eval_weights), as Schedule-Free's average "
                    "x cannot be formed in bf16", "optimisation")
    dropout: float = setting(0.0, "dropout probability on the embedding and on every residual branch's "
                                  "output, in training only (evaluation and generation never drop); 0: off",
                             "optimisation")
    max_nonfinite: int = setting(10, "non-finite steps (each skipped) in a row before the run stops",
                                 "optimisation", identity=False)
    seed: int = setting(42, "seeds the initial weights and the data stream", "optimisation")
    device: str = setting("auto", "auto (CUDA when there is a GPU), cpu, cuda or cuda:N", "run",
                          identity=False, resume=True)
    compile: bool = setting(False, "torch.compile the model (compile time is timed apart)", "run")
    cuda_graph: bool | None = setting(
        None, "after one eager step, capture forward + backward as one CUDA graph and replay it every "
              "step: the same kernels without per-kernel launch overhead (the optimizer stays eager). "
              "Default: on for one process on one CUDA device without --compile, off elsewhere "
              "(recorded as what ran)", "run", identity=False, resume=True)
    allow_reference: bool = setting(
        False, "on CUDA, train a family whose fast path is unavailable on its plain-PyTorch reference "
               "(slow; recorded) instead of stopping before step 1", "run", identity=False, resume=True)
    checkpoint_every: int = setting(0, "write a checkpoint every N steps (last two kept; needed for "
                                       "--resume); 0: none", "run", identity=False, resume=True)
    log_every: int = setting(10, "steps between metrics.jsonl lines", "run", identity=False)
    eval_bytes: int = setting(DEFAULT_EVAL_BYTES, "held-out bytes scored at every evaluation (during "
                                                  "training and at the end); 0: none", "run")
    eval_every: int | None = setting(
        None, "score the held-out bytes every N steps as well as at the end (metrics.jsonl, the progress bar, "
              "the summary's best); evaluation is timed apart from training. Default: "
              f"{AUTO_EVALS} evaluations over the budget (every steps/{AUTO_EVALS} steps; with --minutes "
              f"every minutes/{AUTO_EVALS} of training time), fewer where they would score more than "
              f"{AUTO_EVAL_SHARE:.0%} of the bytes trained on (a short run: only at the end); 0: only at the end",
        "run", identity=False,
        resume=True)
    eval_train_weights: bool = setting(
        False, "also score the held-out bytes with the weights being trained (Schedule-Free's y; the score "
               "itself uses its average x), as val_loss_y / val_bpb_y in metrics.jsonl and summary.json: tells "
               "the averaging's share of a held-out score from the data's (a second evaluation each time)",
        "run", identity=False, resume=True)
    keep_best: bool = setting(False, "also keep the weights of the best held-out score as best.safetensors "
                                     "(`elmanlab eval/generate --weights best`)", "run", identity=False, resume=True)
    tensorboard: bool = setting(False, "also log loss, held-out loss, lr, grad norm and tokens/s as TensorBoard "
                                       "event files in RUN/tensorboard (needs the tensorboard package)", "run",
                                identity=False, resume=True)
    wandb: bool = setting(False, "also log them to an offline Weights & Biases run in RUN/wandb (`wandb sync` "
                                 "uploads it later; needs the wandb package)", "run", identity=False, resume=True)
    progress: bool = setting(True, "progress bar on stderr", "run", identity=False, resume=True)

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

    def settings(self) -> dict:
        """The settings (every field but ``model`` and ``out``), as recorded in config.json."""
        return {k: getattr(self, k) for k in train_settings()}

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
        need(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "--beta1 and --beta2 must be in [0, 1)")
        need(self.grad_clip is None or self.grad_clip > 0, f"--grad-clip must be positive, got {self.grad_clip}")
        need(self.checkpoint_every >= 0, f"--checkpoint-every must be >= 0, got {self.checkpoint_every}")
        need(self.log_every >= 1, f"--log-every must be >= 1, got {self.log_every}")
        need(self.eval_bytes == 0 or self.eval_bytes > self.seq_len,
             f"--eval-bytes must be 0 (no final evaluation) or more than --seq-len {self.seq_len}, "
             f"got {self.eval_bytes}")
        need(self.eval_every is None or (isinstance(self.eval_every, int) and self.eval_every >= 0),
             f"--eval-every must be 0 (only at the end) or a positive number of steps, got {self.eval_every}")
        need(not (self.eval_every and self.eval_bytes == 0),
             f"--eval-every {self.eval_every} needs held-out bytes to score: drop --eval-bytes 0")
        need(not (self.keep_best and self.eval_bytes == 0), "--keep-best needs held-out bytes: drop --eval-bytes 0")
        need(not (self.eval_train_weights and self.eval_bytes == 0),
             "--eval-train-weights needs held-out bytes: drop --eval-bytes 0")
        need(not (self.eval_train_weights and self.precision == "bf16"),
             "--eval-train-weights with --precision bf16: a pure-bf16 run is already scored with the weights "
             "being trained (Schedule-Free's average is not kept in bf16); drop --eval-train-weights")
        need(isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1,
             f"--dropout must be in [0, 1), got {self.dropout}")
        need(self.weight_decay_on in DECAY_SCOPES,
             f"--weight-decay-on must be one of {', '.join(DECAY_SCOPES)}, got {self.weight_decay_on!r}")
        need(self.precision in PRECISIONS,
             f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        need(self.max_nonfinite >= 1, f"--max-nonfinite must be >= 1, got {self.max_nonfinite}")
        need(not (self.cuda_graph and self.compile), "--cuda-graph and --compile cannot be combined: drop one")
        need(not (self.cuda_graph and world_size > 1),
             f"--cuda-graph runs in one process, not {world_size}: drop it under torchrun")
        need(self.batch_size % world_size == 0,
             f"--batch-size {self.batch_size} (the global batch) must be divisible by the {world_size} processes")


def train_settings() -> dict[str, dataclasses.Field]:
    """name -> field of every train setting, in declaration order (the flags of ``elmanlab train``,
    the keys of a study file's ``train:``)."""
    return {f.name: f for f in dataclasses.fields(TrainConfig) if f.metadata.get("setting")}


def identity_settings() -> tuple[str, ...]:
    """The settings that define a run (see :func:`setting`)."""
    return tuple(k for k, f in train_settings().items() if f.metadata["identity"])


def resumable_settings() -> tuple[str, ...]:
    """The settings ``--resume`` may change; the others come from the run's config.json."""
    return tuple(k for k, f in train_settings().items() if f.metadata["resume"])


BUDGET_SETTINGS = tuple(k for k, f in train_settings().items() if f.metadata["group"] == "budget")
