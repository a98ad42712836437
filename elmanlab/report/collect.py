"""Collecting run records for the report: one :class:`Run` per run folder under a study (or any)
folder, from its summary.json and config.json, plus the study's study.json for jobs that failed
before writing a summary or never ran; and the scale each run is compared at.

Every read goes through :mod:`elmanlab.runs`. A run's ``train`` holds only the settings that define
a run (:func:`elmanlab.config.identity_settings`).
"""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from elmanlab.config import BUDGET_SETTINGS, identity_settings, train_settings
from elmanlab.errors import ElmanlabError
from elmanlab.report import instability
from elmanlab.runs import (ASIDE, CONFIG_FILE, LOG_DIR, PLOTS_DIR, SUMMARY_FILE, read_json_or_none, read_metrics,
                           read_state_or_none, read_val_metrics, run_status)

IDENTITY = frozenset(identity_settings())          # the train settings a Run keeps
_DEFAULTS = {k: f.default for k, f in train_settings().items() if k in IDENTITY}


def fmt_num(v) -> str:
    """A setting's value as text: floats in their shortest form."""
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _typed(v, typ):
    """``v`` when it is a ``typ`` (a bool is no int; an empty string counts as missing), else None."""
    if isinstance(v, bool) and typ is not bool:
        return None
    return v if isinstance(v, typ) and v != "" else None


@dataclass
class Run:
    id: str
    path: Path
    status: str
    model: str
    error: str | None = None
    params: int | None = None
    target: int | None = None
    dim: int | None = None
    depth: int | None = None
    options: dict = field(default_factory=dict)
    wrapper: dict = field(default_factory=dict)   # the LM wrapper's settings: mlp_ratio, tie_embeddings, norm
    train: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    wave: str | None = None
    scale: str = "-"
    scale_n: float = 0.0
    _metrics: list | None = None
    _val_metrics: list | None = None
    metric: str = "loss_last100"          # what ``loss`` ranks by (set by Report)

    # summary values
    def get(self, key):
        if key.startswith(("val_", "best_val_")) and self.heldout_unreadable():
            return None
        v = self.summary.get(key)
        return v if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None

    def heldout_unreadable(self) -> str | None:
        """Why the run's held-out scores do not score the model it trained, or None. A pure-bf16 run
        (``precision: bf16``) recorded before summary.json's ``eval_weights`` was scored with
        Schedule-Free's average x formed from bf16 weights and state, which falls behind the weights
        trained (a 400M minGRU: 14.4 bits/byte at a training loss of 1.86 nats/byte); its val_* values
        are left out of tables, curves and plots."""
        if self.summary.get("precision") == "bf16" and self.summary.get("eval_weights") != "y":
            return "pure bf16, scored with Schedule-Free's average formed in bf16"
        return None

    @property
    def loss(self):
        """The ranking metric: last-100 training loss, or val bits/byte with ``--metric val_bpb``."""
        return self.get(self.metric)

    @property
    def seed(self):
        return self.summary.get("seed", self.train.get("seed"))

    @property
    def budget(self) -> str:
        t = self.train
        b = self.summary.get("budget")
        if isinstance(b, dict):
            t = {**t, **b}
        if t.get("minutes") is not None:
            return f"{fmt_num(t['minutes'])} min"
        if t.get("steps") is not None:
            return f"{fmt_num(t['steps'])} steps"
        if isinstance(b, str):
            return b
        return "-"

    # what ran: summary.json fields written since issue 16 (None in older records, shown as "-")
    def _sub(self, key: str) -> dict:
        v = self.summary.get(key)
        return v if isinstance(v, dict) else {}

    # what ran and which code made it (summary.json); None in records that predate a key
    @property
    def kernel_path(self) -> str | None:
        """The implementation the family's main op ran (read from the op at run time)."""
        return _typed(self._sub("kernel").get("path"), str)

    @property
    def kernel_family(self) -> str | None:
        return _typed(self._sub("kernel").get("family"), str)

    @property
    def kernel_fast(self) -> bool | None:
        """Whether that was the family's fast path (False: the plain-PyTorch reference)."""
        return _typed(self._sub("kernel").get("fast"), bool)

    @property
    def cuda_graph(self) -> bool | None:
        """Whether the training steps were replayed as a CUDA graph."""
        return _typed(self.summary.get("cuda_graph"), bool)

    @property
    def allow_reference(self) -> bool | None:
        return _typed(self.summary.get("allow_reference"), bool)

    @property
    def nonfinite_steps(self) -> int | None:
        """Optimizer steps skipped because the loss or a gradient was not finite."""
        return _typed(self.summary.get("nonfinite_steps"), int)

    @property
    def commit(self) -> str | None:
        return _typed(self._sub("source").get("commit"), str)

    @property
    def dirty(self) -> bool | None:
        return _typed(self._sub("source").get("dirty"), bool)

    @property
    def elmanlab_version(self) -> str | None:
        return _typed(self._sub("versions").get("elmanlab"), str)

    def implementations(self) -> dict[str, str]:
        """Every op that ran -> its implementation's path (``implementations`` in summary.json)."""
        out = {}
        for op, v in self._sub("implementations").items():
            p = v.get("path") if isinstance(v, dict) else v
            if isinstance(p, str) and p:
                out[str(op)] = p
        return out

    def config_key(self) -> str:
        """Everything that defines the configuration except the seed (to pool seeds): the wrapper's
        settings too, where they are not the defaults (a tied head, LayerNorm, another MLP)."""
        # defaults filled in on both sides: a pending job's record lists only what its study file set,
        # a finished run's every setting, and the two of one configuration must pool
        tr = self.full_train()
        tr.pop("seed", None)
        key = [self.model, self.dim, self.depth, self.full_options(), tr]
        wrapper = self.nondefault_wrapper()
        return json.dumps(key + [wrapper] if wrapper else key, sort_keys=True, default=str)

    def full_train(self) -> dict:
        """The train settings with the defaults filled in where the record does not give them."""
        return {**{k: d for k, d in _DEFAULTS.items() if d is not None}, **self.train}

    def nondefault_train(self) -> dict:
        """The train settings (but the seed) whose value is not the default."""
        return {k: v for k, v in self.full_train().items() if k != "seed" and v != _DEFAULTS.get(k)}

    def nondefault_wrapper(self) -> dict:
        """The wrapper settings that differ from a default ModelConfig of this model (older records
        lack ``norm``: RMSNorm, the only norm then)."""
        out = {}
        if self.wrapper.get("tie_embeddings"):
            out["tied"] = True
        if self.wrapper.get("norm", "rms") != "rms":
            out["norm"] = self.wrapper["norm"]
        mlp = self.wrapper.get("mlp_ratio")
        if isinstance(mlp, (int, float)):
            try:
                from elmanlab.config import default_mlp_ratio
                default = default_mlp_ratio(self.model)
            except ElmanlabError:
                default = 0.0
            if abs(mlp - default) > 1e-9:
                out["mlp"] = mlp
        return out

    def label(self) -> str:
        parts = [f"{self.dim}x{self.depth}" if self.dim else "?"]
        o = self.options
        if self.model == "e88" and o.get("n_heads") is not None:
            parts.append(f"H{o.get('n_heads')} n{o.get('n_state')}")
        for k, v in self.nondefault_options().items():
            if self.model == "e88" and k in ("n_heads", "n_state", "balance"):
                continue
            parts.append(k if v is True else f"no {k}" if v is False else f"{k}={fmt_num(v)}")
        w = self.nondefault_wrapper()
        parts += (["tied"] if w.get("tied") else []) + ([f"{w['norm']}norm"] if "norm" in w else []) \
            + ([f"mlp={fmt_num(w['mlp'])}"] if "mlp" in w else [])
        return " ".join(parts)

    def active_options(self) -> dict:
        """The options that had an effect (see RecurrentLayer.inactive_options)."""
        try:
            from elmanlab.layers import get_family
            off = get_family(self.model).inactive_options(self.options)
        except ElmanlabError:
            off = set()
        return {k: v for k, v in self.options.items() if k not in off}

    def _option_fields(self) -> dict | None:
        """The family's option fields (their defaults), None for a model this code does not know."""
        try:
            from elmanlab.config import option_fields
            return option_fields(self.model)
        except ElmanlabError:
            return None

    def full_options(self) -> dict:
        """The options with the family's defaults filled in where the record does not give them."""
        fields_ = self._option_fields()
        if fields_ is None:
            return dict(self.options)
        return {**{k: f.default for k, f in fields_.items() if isinstance(f.default, (int, float, str, bool))},
                **self.options}

    def nondefault_options(self) -> dict:
        fields_ = self._option_fields()
        if fields_ is None:
            return dict(self.options)
        out = {}
        for k, v in self.options.items():
            f = fields_.get(k)
            if f is None or f.default != v:
                out[k] = v
        return out

    def metrics(self) -> list[dict]:
        """The training lines of metrics.jsonl."""
        if self._metrics is None:
            self._metrics = read_metrics(self.path)
        return self._metrics

    def value_at(self, step: int, metric: str) -> float | None:
        """``metric`` as a run stopped at ``step`` would have recorded it, from metrics.jsonl: for
        loss_last100 the mean training loss of steps step-99..step (each line is the mean over the
        steps since the line before, so the lines must start a line at step-100 and end one at step);
        for val_bpb the held-out evaluation at ``step``. None where the lines do not give it. With
        Schedule-Free and no warm-up nothing in a run looks ahead to its budget: its state at step N is
        that of a run of N steps."""
        if metric == "val_bpb":
            hit = [m.get("val_bpb") for m in self.val_metrics() if m.get("step") == step]
            return float(hit[-1]) if hit and isinstance(hit[-1], (int, float)) else None
        if metric != "loss_last100":
            return None
        return instability.last100_at(self.metrics(), step)

    # what the training lines say of the run's stability (report/instability.py)
    def line_rises(self) -> list[dict]:
        return instability.line_rises(self.metrics())

    def loss_spikes(self) -> list[dict]:
        return instability.loss_spikes(self.metrics())

    def early_blowup(self) -> dict | None:
        return instability.early_blowup(self.metrics())

    def loss_rise_late(self) -> dict | None:
        return instability.loss_rise_late(self.metrics())

    def late_rise(self) -> dict | None:
        return instability.late_rise(self.metrics())

    def gradient_bursts(self) -> list[dict] | None:
        return instability.gradient_bursts(self.metrics())

    def val_metrics(self) -> list[dict]:
        """The held-out evaluations of metrics.jsonl (the validation curve)."""
        if self._val_metrics is None:
            self._val_metrics = [] if self.heldout_unreadable() else read_val_metrics(self.path)
        return self._val_metrics


def shared_gpu(runs) -> list[str]:
    """The ids of the runs that trained while other jobs shared their GPU (a study's --jobs-per-gpu):
    their losses at equal tokens stand, their tokens/s and training times measure the sharing."""
    return [r.id for r in runs if (r.get("gpu_jobs") or 1) > 1]


def _first(*vals):
    for v in vals:
        if v is not None:
            return v
    return None


def _model_fields(summ: dict, cfg: dict) -> tuple:
    """(model, dim, depth, options) from summary.json / config.json, whatever their nesting."""
    cands = [summ, summ.get("config") if isinstance(summ.get("config"), dict) else {},
             cfg, cfg.get("model") if isinstance(cfg.get("model"), dict) else {},
             cfg.get("model_config") if isinstance(cfg.get("model_config"), dict) else {}]
    model = dim = depth = None
    options = None
    for c in cands:
        if not isinstance(c, dict):
            continue
        if isinstance(c.get("model"), str):
            model = model or c["model"]
        dim = _first(dim, c.get("dim") if isinstance(c.get("dim"), int) else None)
        depth = _first(depth, c.get("depth") if isinstance(c.get("depth"), int) else None)
        if options is None and isinstance(c.get("options"), dict) and c is not summ:
            options = c["options"]
    if options is None and isinstance(summ.get("options"), dict):
        options = summ["options"]
    return model, dim, depth, dict(options or {})


def _wrapper_fields(summ: dict, cfg: dict) -> dict:
    """mlp_ratio, tie_embeddings and norm of the run's model config (summary.json's, else config.json's)."""
    for c in (summ.get("config"), cfg.get("model")):
        if isinstance(c, dict):
            return {k: c[k] for k in ("mlp_ratio", "tie_embeddings", "norm") if k in c}
    return {}


def _identity(train: dict | None) -> dict:
    """The settings of ``train`` that define a run."""
    return {k: v for k, v in (train or {}).items() if k in IDENTITY}


def _train_fields(summ: dict, cfg: dict, job: dict | None) -> dict:
    """The run's identity settings: config.json's ``train`` block (scalars), else the study's job."""
    tr = cfg.get("train") if isinstance(cfg.get("train"), dict) else None
    if tr:
        out = {k: v for k, v in _identity(tr).items() if isinstance(v, (int, float, str, bool))}
        # a setting added after the run was made: its default is what the code did before it existed
        out.update({k: d for k, d in _DEFAULTS.items() if k not in tr and d is not None})
    else:
        out = _identity((job or {}).get("train"))
    for k in ("seed", "batch_size", "seq_len", "lr", "weight_decay"):
        if isinstance(summ.get(k), (int, float)):
            out.setdefault(k, summ[k])
    b = summ.get("budget")
    if isinstance(b, dict):
        for k in BUDGET_SETTINGS:
            if b.get(k) is not None:
                out.setdefault(k, b[k])
    return out


def _parse_target(v) -> int | None:
    if v is None:
        return None
    try:
        from elmanlab.sizing import parse_count
        return parse_count(v)
    except (ElmanlabError, ValueError, TypeError):
        return None


def collect_runs(root) -> tuple[list[Run], dict | None]:
    """Every run under ``root``: finished ones from summary.json, the rest from study.json.
    Returns (runs, the study state or None)."""
    root = Path(root)
    if not root.is_dir():
        raise ElmanlabError(f"{root} is not a folder; give the study's --out folder (or a folder of runs)")
    state = read_state_or_none(root)
    jobs = {j.get("run_dir") or j.get("id"): j for j in (state or {}).get("jobs", []) if isinstance(j, dict)}
    runs: list[Run] = []
    seen: set[str] = set()
    for sp in sorted(root.rglob(SUMMARY_FILE)):
        rdir = sp.parent
        rel = rdir.relative_to(root).as_posix() if rdir != root else rdir.name
        if any(ASIDE.search(part) for part in rdir.relative_to(root).parts) or \
                rel.split("/")[0] in (LOG_DIR, PLOTS_DIR):
            continue
        status, reason, summ = run_status(rdir)
        if summ is None:
            continue
        cfg = read_json_or_none(rdir / CONFIG_FILE)
        cfg = cfg if isinstance(cfg, dict) else {}
        job = jobs.get(rel)
        model, dim, depth, options = _model_fields(summ, cfg)
        if job and not options:
            options = dict(job.get("options") or {})
        # the target is the study's ("100M"); config.json's params is the run's count, not a target
        runs.append(Run(
            id=rel, path=rdir, status=status, model=str(model or (job or {}).get("model") or "?"), error=reason,
            params=summ.get("params") if isinstance(summ.get("params"), int) else None,
            target=_parse_target((job or {}).get("params") or summ.get("target")),
            dim=dim, depth=depth, options=options, wrapper=_wrapper_fields(summ, cfg),
            train=_train_fields(summ, cfg, job), summary=summ,
            wave=(job or {}).get("wave")))
        seen.add(rel)
    for rel, job in jobs.items():
        if rel in seen or job.get("in_study_file") is False and job.get("status") == "dropped":
            continue
        size = job.get("size") or {}
        status = job.get("status") or "pending"
        if status == "completed":          # recorded done, but its summary.json is gone
            status, err = "missing", f"{SUMMARY_FILE} is missing from its folder"
        else:
            err = job.get("error")
        opts = dict(job.get("options") or {})
        if job.get("model") == "e88" and size.get("n_heads") is not None:
            opts.setdefault("n_heads", size["n_heads"])
        runs.append(Run(id=rel, path=root / rel, status=status, model=job.get("model", "?"), error=err,
                        params=size.get("params"), target=_parse_target(job.get("params")),
                        dim=size.get("dim"), depth=size.get("depth"), options=opts,
                        wrapper=_wrapper_fields({}, {"model": job}),
                        train=_identity(job.get("train")), wave=job.get("wave")))
    _assign_scales(runs)
    return runs, state


def _assign_scales(runs: list[Run]) -> None:
    """Scale = the parameter target when the study gave one; otherwise clusters of similar size."""
    from elmanlab.sizing import format_count
    targets = sorted({r.target for r in runs if r.target})
    loose = []
    for r in runs:
        if r.target:
            r.scale_n, r.scale = r.target, format_count(r.target)
            continue
        if r.params:
            near = [t for t in targets if abs(r.params - t) / t <= 0.10]
            if near:
                t = min(near, key=lambda t: abs(r.params - t))
                r.scale_n, r.scale = t, format_count(t)
                continue
            loose.append(r)
    loose.sort(key=lambda r: r.params)
    cluster: list[Run] = []

    def flush():
        if cluster:
            med = statistics.median(r.params for r in cluster)
            for r in cluster:
                r.scale_n, r.scale = med, "~" + format_count(med)

    for r in loose:
        if cluster and r.params > 1.25 * cluster[0].params:
            flush()
            cluster = []
        cluster.append(r)
    flush()
