"""Study files, job expansion, the GPU queue and the study's resumable state.

A study file (YAML) names a set of training runs::

    name: e88-vs-baselines-100m
    baseline: mamba2
    train: {data: corpus.txt.zst, minutes: 10, batch_size: 16, seq_len: 512, seed: 42}
    runs:                         # explicit runs: model + size + any option or train override
      - {model: mamba2, params: 100M}
      - {model: e88, params: 100M, n_state: 32, use_gate: true}
    grid:                         # cartesian product, added to runs (a list of grids is allowed)
      model: [e1, e88]
      params: [50M, 100M]
    seeds: [42, 43]               # every job once per seed (unless it sets its own seed)
    waves:                        # optional: successive groups, queued in this order
      - {name: wave1, grid: {model: [e88], n_state: [16, 32]}}
      - {name: wave2, train: {minutes: 30}, runs: [{model: e88, params: 100M, n_state: 48}]}
      - {name: again, train: {seed: 43}, best_of: {wave: wave1, n: 2, metric: val_bpb, baseline: true}}

A ``best_of`` wave repeats the ``n`` best finished runs of an earlier wave (lower metric is better,
ties in file order; with ``baseline: true`` also the baseline's runs of that wave) with the wave's own
train settings on top, as ``<run id>-<wave>``. It can only be expanded once that wave has finished in
the output folder (``load_study(..., out=DIR)``); until then it is listed in ``Study.deferred`` and
the Runner expands it when its queue has run dry.

Each job becomes ``python -m elmanlab train ... --out DIR/<job id>`` in its own process. Jobs run
one per GPU at a time (``CUDA_VISIBLE_DEVICES`` set per job), or in sequence on CPU. The study's
state (the expanded jobs and their status) lives in ``DIR/study.json``, written atomically after
every change; a job whose ``summary.json`` exists is skipped, so an interrupted study resumes and
a wave appended to the file runs only the new jobs.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from elmanlab.errors import ElmanlabError
from elmanlab.fsutil import atomic_write_json, read_json_or_none

STATE_FILE = "study.json"
LOCK_FILE = ".study.lock"
LOG_DIR = "logs"
INTERRUPT_GRACE_S = 300      # how long a stopped study waits for its runs to write their checkpoints

TOP_KEYS = ("name", "description", "baseline", "train", "runs", "grid", "seeds", "waves")
WAVE_KEYS = ("name", "description", "train", "runs", "grid", "seeds", "best_of")
BEST_OF_KEYS = ("wave", "n", "metric", "baseline")
BEST_OF_METRICS = ("val_bpb", "loss_last100")      # lower is better
SIZE_KEYS = ("params", "dim", "depth", "mlp_ratio", "tie_embeddings")
ENTRY_KEYS = ("model", "name", "options") + SIZE_KEYS
# Train settings that do not change what a run computes: left out of job ids and of the check
# that a finished run still matches the study file (paths differ between machines).
NOT_IDENTITY = ("data", "val_data", "device")
BUDGET_KEYS = ("steps", "minutes")

# The train command's settings per the CLI contract (DESIGN.md); used only when the installed
# package has no ``train`` subcommand to read them from.
CONTRACT_TRAIN_KEYS = {"data": str, "val_data": str, "steps": int, "minutes": float, "batch_size": int,
                       "seq_len": int, "lr": float, "weight_decay": float, "seed": int, "device": str,
                       "checkpoint_every": int}


# ---------------------------------------------------------------- the train command's flags

@dataclass
class Flag:
    key: str                     # YAML key (the argparse dest)
    flag: str                    # --the-flag
    kind: str = "value"          # value | const (nargs=0) | boolopt (--x / --no-x)
    type: object = None
    choices: tuple | None = None
    const: object = None
    default: object = None


def _train_subparser():
    from elmanlab.cli import build_parser
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get("train")
    return None


_FLAGS_CACHE: dict | None = None


def train_flags() -> dict[str, Flag]:
    """The ``elmanlab train`` settings a study may set, read from the installed train command."""
    global _FLAGS_CACHE
    if _FLAGS_CACHE is not None:
        return _FLAGS_CACHE
    sub = _train_subparser()
    flags: dict[str, Flag] = {}
    if sub is None:
        for k, typ in CONTRACT_TRAIN_KEYS.items():
            flags[k] = Flag(k, "--" + k.replace("_", "-"), type=typ)
    else:
        skip = {"help", "out", "resume", "model", "debug", "json", "params", "dim", "depth", "mlp_ratio",
                "tie_embeddings"}
        for a in sub._actions:
            if not a.option_strings or a.dest in skip or a.dest.startswith("opt_"):
                continue
            long = [s for s in a.option_strings if s.startswith("--")]
            if not long:
                continue
            if isinstance(a, argparse.BooleanOptionalAction):
                fl = Flag(a.dest, long[0], "boolopt", default=a.default)
            elif a.nargs == 0:
                fl = Flag(a.dest, long[0], "const", const=a.const, default=a.default)
            else:
                fl = Flag(a.dest, long[0], "value", type=a.type,
                          choices=tuple(a.choices) if a.choices else None, default=a.default)
            flags[a.dest] = fl
    _FLAGS_CACHE = flags
    return flags


def train_available() -> bool:
    return _train_subparser() is not None


# ---------------------------------------------------------------- jobs

@dataclass
class Job:
    id: str
    where: str                   # where in the study file it came from (for messages)
    wave: str | None
    model: str
    params: str | None           # the target as written (normalised), or None with dim
    dim: int | None
    depth: int | None
    mlp_ratio: float
    tie_embeddings: bool
    options: dict
    train: dict
    size: dict = field(default_factory=dict)   # the solved size (sizing.report)

    def identity(self) -> dict:
        """What the run computes: model, size, options and train settings (no paths)."""
        return {"model": self.model, "params": self.params, "dim": self.dim, "depth": self.depth,
                "mlp_ratio": self.mlp_ratio, "tie_embeddings": self.tie_embeddings,
                "options": dict(self.options),
                "train": {k: v for k, v in self.train.items() if k not in NOT_IDENTITY}}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def budget(self) -> str:
        if "minutes" in self.train:
            return f"{_fmt(self.train['minutes'])} min"
        if "steps" in self.train:
            return f"{_fmt(self.train['steps'])} steps"
        return "-"

    def argv(self, run_dir: str | os.PathLike, flags: dict[str, Flag] | None = None) -> list[str]:
        """The ``elmanlab train`` arguments (without the interpreter) for this job."""
        flags = train_flags() if flags is None else flags
        args = ["train", self.model]
        if self.params is not None:
            args += ["--params", str(self.params)]
        if self.dim is not None:
            args += ["--dim", str(self.dim)]
        if self.depth is not None:
            args += ["--depth", str(self.depth)]
        if self.mlp_ratio:
            args += ["--mlp-ratio", _fmt(self.mlp_ratio)]
        if self.tie_embeddings:
            args += ["--tie-embeddings"]
        for k, v in self.options.items():
            flag = "--" + k.replace("_", "-")
            if isinstance(v, bool):
                args.append(flag if v else "--no-" + k.replace("_", "-"))
            else:
                args += [flag, _fmt(v)]
        for k, v in self.train.items():
            fl = flags.get(k) or Flag(k, "--" + k.replace("_", "-"))
            if fl.kind == "boolopt":
                args.append(fl.flag if v else "--no-" + fl.flag[2:])
            elif fl.kind == "const":
                if v == fl.const:
                    args.append(fl.flag)
            else:
                args += [fl.flag, _fmt(v)]
        return args + ["--out", str(run_dir)]


@dataclass
class Study:
    name: str
    path: str
    baseline: str | None
    jobs: list[Job]
    description: str = ""
    # best_of waves: the choice made per expanded wave, and those still waiting for their source wave
    best_of: dict = field(default_factory=dict)
    deferred: list = field(default_factory=list)
    messages: list = field(default_factory=list)      # one line each: expansions and warnings
    load_args: dict = field(default_factory=dict, repr=False)

    def deferred_records(self) -> list[dict]:
        """The deferred best_of waves as recorded in JSON (without their display line)."""
        return [{k: v for k, v in d.items() if k != "line"} for d in self.deferred]

    def reload(self, out) -> "Study":
        """The same study expanded again against ``out`` (deferred best_of waves whose source wave
        has finished there become jobs). Uses the file as read the first time."""
        return load_study(self.path, out=out, **self.load_args)

    def job(self, job_id: str) -> Job:
        for j in self.jobs:
            if j.id == job_id:
                return j
        raise KeyError(job_id)


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _suggest(key: str, known) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _load_yaml(path: Path):
    import yaml
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ElmanlabError(f"study file {path} does not exist")
    except OSError as e:
        raise ElmanlabError(f"cannot read study file {path}: {e.strerror}")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ElmanlabError(f"{path}: malformed YAML{where}: {problem}; fix the file")
    if not isinstance(data, dict):
        raise ElmanlabError(f"{path}: a study file is a mapping with keys such as name, train, runs, "
                            f"grid (got {type(data).__name__})")
    return data


def _check_keys(d: dict, allowed, where: str, what: str) -> None:
    for k in d:
        if k not in allowed:
            raise ElmanlabError(f"{where}: unknown {what} key {k!r}{_suggest(str(k), allowed)}; "
                                f"allowed: {', '.join(allowed)}")


def _option_fields(model: str) -> dict:
    from elmanlab.config import option_fields
    return option_fields(model)


def _all_option_names() -> list[str]:
    from elmanlab.layers import FAMILIES
    names: list[str] = []
    for fam in FAMILIES.values():
        for f in dataclasses.fields(fam.Options):
            if f.name not in names:
                names.append(f.name)
    return names


def _coerce_option(model: str, key: str, value, where: str):
    from elmanlab.cli import _field_type
    f = _option_fields(model)[key]
    typ = _field_type(f)
    if typ is bool:
        if not isinstance(value, bool):
            raise ElmanlabError(f"{where}: option {key} is true or false, got {value!r}")
        return value
    if value is None:
        return None
    try:
        if typ is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if typ is float:
            return float(value)
    except (TypeError, ValueError):
        raise ElmanlabError(f"{where}: option {key} must be {'an integer' if typ is int else 'a number'}, "
                            f"got {value!r}")
    return value


def _coerce_train(key: str, value, fl: Flag, where: str):
    if fl.kind in ("boolopt", "const"):
        if fl.kind == "boolopt" and not isinstance(value, bool):
            raise ElmanlabError(f"{where}: {key} is true or false, got {value!r}")
        if fl.kind == "const" and value not in (fl.const, fl.default):
            raise ElmanlabError(f"{where}: {key} takes {_fmt(fl.const)} or {_fmt(fl.default)}, got {value!r}")
        return value
    if value is None or isinstance(value, (dict, list)):
        raise ElmanlabError(f"{where}: {key} needs one value, got {value!r}")
    if fl.type is not None and callable(fl.type):
        try:
            conv = fl.type(str(value))
        except (TypeError, ValueError, argparse.ArgumentTypeError, ElmanlabError) as e:
            raise ElmanlabError(f"{where}: bad value {value!r} for {key} ({e or 'wrong type'})")
        if isinstance(conv, (int, float)) and not isinstance(conv, bool):
            value = conv
    if fl.choices and value not in fl.choices:
        raise ElmanlabError(f"{where}: {key} must be one of {', '.join(map(str, fl.choices))}, got {value!r}")
    return value


def _merge_train(base: dict, over: dict) -> dict:
    """Later settings win; setting one budget (steps or minutes) drops the other."""
    out = dict(base)
    for k in BUDGET_KEYS:
        if k in over:
            for other in BUDGET_KEYS:
                out.pop(other, None)
    out.update(over)
    return out


def _norm_params(value, where: str) -> str:
    from elmanlab.sizing import format_count, parse_count
    try:
        n = parse_count(value)
    except ElmanlabError as e:
        raise ElmanlabError(f"{where}: {e}")
    if n < 1:
        raise ElmanlabError(f"{where}: params must be positive, got {value!r}")
    s = str(value).strip()
    # keep what the user wrote when it is already a compact count ("500M"), else a compact form
    return s.upper() if re.fullmatch(r"[0-9.]+[kKmMgGbBtT]?", s) and len(s) <= 8 else format_count(n)


def _expand_grid(grid, where: str) -> list[tuple[str, dict]]:
    grids = grid if isinstance(grid, list) else [grid]
    if not grids:
        raise ElmanlabError(f"{where}: the grid is empty; give each key a list of values")
    out = []
    for gi, g in enumerate(grids):
        w = f"{where}[{gi}]" if isinstance(grid, list) else where
        if not isinstance(g, dict) or not g:
            raise ElmanlabError(f"{w}: the grid is empty; write it as a mapping such as "
                                f"{{model: [e1, e88], params: [50M, 100M]}}")
        if "name" in g:
            raise ElmanlabError(f"{w}: a grid cannot set `name` (every combination needs its own); "
                                f"use an explicit entry under runs")
        axes = []
        for k, v in g.items():
            vals = v if isinstance(v, list) else [v]
            if not vals:
                raise ElmanlabError(f"{w}: grid key {k!r} has an empty list, so the grid has no runs")
            axes.append((k, vals))
        for combo in itertools.product(*[vals for _, vals in axes]):
            entry = dict(zip([k for k, _ in axes], combo))
            out.append((f"{w} ({', '.join(f'{k}={_fmt(v)}' for k, v in entry.items())})", entry))
    return out


def _job_from_entry(entry: dict, where: str, wave: str | None, base_train: dict, seeds: list | None,
                    study_train: dict, flags: dict[str, Flag]) -> list[Job]:
    from elmanlab.layers import get_family
    if not isinstance(entry, dict):
        raise ElmanlabError(f"{where}: a run is a mapping such as {{model: e1, params: 100M}}, got {entry!r}")
    all_opts = _all_option_names()
    allowed = list(ENTRY_KEYS) + list(flags) + all_opts
    _check_keys(entry, allowed, where, "run")
    if "model" not in entry:
        raise ElmanlabError(f"{where}: a run needs a `model` (one of `elmanlab models`)")
    try:
        fam = get_family(str(entry["model"]))
    except ElmanlabError as e:
        raise ElmanlabError(f"{where}: {e}")
    model = fam.name
    fields_ = _option_fields(model)
    options: dict = {}
    given_opts = entry.get("options") or {}
    if not isinstance(given_opts, dict):
        raise ElmanlabError(f"{where}: options must be a mapping, got {given_opts!r}")
    for k, v in list(given_opts.items()) + [(k, v) for k, v in entry.items() if k in all_opts]:
        if k not in fields_:
            raise ElmanlabError(f"{where}: {model} has no option {k!r}{_suggest(str(k), fields_)} "
                                f"(its options: {', '.join(fields_) or 'none'}); "
                                f"put models with different options in separate runs or grids")
        options[k] = _coerce_option(model, k, v, where)

    params = dim = depth = None
    if entry.get("params") is not None:
        params = _norm_params(entry["params"], where)
    for key in ("dim", "depth"):
        v = entry.get(key)
        if v is not None:
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ElmanlabError(f"{where}: {key} must be a positive integer, got {v!r}")
    dim, depth = entry.get("dim"), entry.get("depth")
    if (params is None) == (dim is None):
        raise ElmanlabError(f"{where}: give a run exactly one of `params` (e.g. 100M) or `dim` with `depth`")
    if dim is not None and depth is None:
        raise ElmanlabError(f"{where}: `dim` needs `depth` too (or give `params`)")
    mlp_ratio = entry.get("mlp_ratio", 0.0) or 0.0
    if not isinstance(mlp_ratio, (int, float)) or isinstance(mlp_ratio, bool) or mlp_ratio < 0:
        raise ElmanlabError(f"{where}: mlp_ratio must be a number >= 0, got {mlp_ratio!r}")
    tie = entry.get("tie_embeddings", False)
    if not isinstance(tie, bool):
        raise ElmanlabError(f"{where}: tie_embeddings is true or false, got {tie!r}")

    own_train = {k: _coerce_train(k, v, flags[k], where) for k, v in entry.items() if k in flags}
    train = _merge_train(base_train, own_train)
    for k in BUDGET_KEYS:
        if k in train:
            v = train[k]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                raise ElmanlabError(f"{where}: {k} must be a positive number, got {v!r}")
    if not any(k in train for k in BUDGET_KEYS):
        raise ElmanlabError(f"{where}: no budget; set `steps` or `minutes` under train (or in the run)")

    # the size, solved now so that a bad size stops the study before anything runs
    from elmanlab.sizing import model_config, report
    try:
        cfg = model_config(model, params=params, dim=dim, depth=depth, options=options,
                           mlp_ratio=float(mlp_ratio), tie_embeddings=tie)
        rep = report(cfg)
    except ElmanlabError as e:
        at = "" if where.endswith(")") else f" ({model} at {params or f'{dim}x{depth}'})"
        raise ElmanlabError(f"{where}{at}: {e}")
    size = {"params": rep.params, "dim": rep.dim, "depth": rep.depth, "d_inner": rep.d_inner,
            "n_heads": rep.n_heads, "state_per_layer": rep.state_per_layer}

    # id: model, size, then every setting this entry or its wave sets beyond the study's defaults
    id_parts = [model, params if params is not None else f"d{dim}x{depth}"]
    if params is not None and depth is not None:
        id_parts.append(f"L{depth}")
    if mlp_ratio:
        id_parts.append(f"mlp={_fmt(float(mlp_ratio))}")
    if tie:
        id_parts.append("tied")
    id_parts += [f"{k}={_fmt(v)}" for k, v in options.items()]
    extra = {k: v for k, v in train.items()
             if k not in NOT_IDENTITY and k != "seed" and study_train.get(k, object()) != v}
    id_parts += [f"{k}={_fmt(v)}" for k, v in extra.items()]

    seed_list = [train.get("seed")] if ("seed" in own_train or not seeds) else seeds
    jobs = []
    for s in seed_list:
        t = dict(train)
        if s is not None:
            t["seed"] = _coerce_train("seed", s, flags["seed"], where) if "seed" in flags else s
        parts = id_parts + ([f"s{t['seed']}"] if t.get("seed") is not None else [])
        jid = entry.get("name") or "-".join(parts)
        if len(seed_list) > 1 and entry.get("name"):
            jid = f"{entry['name']}-s{t['seed']}"
        jid = re.sub(r"[^A-Za-z0-9_.=+,-]", "_", str(jid))
        jobs.append(Job(jid, where, wave, model, params, dim, depth, float(mlp_ratio), tie, options, t, size))
    return jobs


def _seeds(value, where: str) -> list | None:
    if value is None:
        return None
    vals = value if isinstance(value, list) else [value]
    if not vals or not all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
        raise ElmanlabError(f"{where}: seeds is a list of integers such as [42, 43], got {value!r}")
    return vals


def load_study(path, data: str | None = None, val_data: str | None = None,
               flags: dict[str, Flag] | None = None, out=None, retry_failed: bool = False,
               _raw: dict | None = None) -> Study:
    """Read, validate and expand a study file. Raises one clear ElmanlabError per problem.

    ``out``: the study's output folder, read to expand ``best_of`` waves whose source wave has
    finished there (the others are left in ``Study.deferred``). ``retry_failed``: failed runs of a
    source wave count as unfinished (they are about to run again)."""
    path = Path(path)
    raw = _load_yaml(path) if _raw is None else _raw
    flags = train_flags() if flags is None else flags
    _check_keys(raw, TOP_KEYS, str(path), "top-level")
    name = raw.get("name", path.stem)
    if not isinstance(name, (str, int)) or not str(name).strip():
        raise ElmanlabError(f"{path}: name must be a non-empty string")
    name = str(name)

    def train_block(d, where):
        t = d.get("train") or {}
        if not isinstance(t, dict):
            raise ElmanlabError(f"{where}: train is a mapping of train settings, got {t!r}")
        for k in t:
            if k in ENTRY_KEYS or k in _all_option_names():
                raise ElmanlabError(f"{where}: {k!r} is a model setting; put it in runs or grid, not under train")
        _check_keys(t, list(flags), where + ".train", "train")
        return {k: _coerce_train(k, v, flags[k], f"{where}.train") for k, v in t.items()}

    study_train = train_block(raw, str(path))
    base = path.resolve().parent
    for key, val in (("data", data), ("val_data", val_data)):
        if val is not None:
            study_train[key] = str(Path(val).expanduser().resolve())
        elif study_train.get(key) is not None:   # a path in the file is relative to the file
            study_train[key] = str((base / Path(str(study_train[key])).expanduser()).resolve())

    top_seeds = _seeds(raw.get("seeds"), f"{path}: seeds")
    waves = []
    if raw.get("runs") is not None or raw.get("grid") is not None:
        waves.append((None, raw, str(path)))
    wl = raw.get("waves")
    if wl is not None:
        if not isinstance(wl, list) or not wl:
            raise ElmanlabError(f"{path}: waves is a non-empty list of {{name, train, runs, grid}} mappings")
        for i, w in enumerate(wl):
            where = f"waves[{i}]"
            if not isinstance(w, dict):
                raise ElmanlabError(f"{where}: a wave is a mapping with runs and/or grid, got {w!r}")
            _check_keys(w, WAVE_KEYS, where, "wave")
            wname = str(w.get("name", f"wave{i + 1}"))
            if w.get("best_of") is not None:
                if w.get("runs") is not None or w.get("grid") is not None:
                    raise ElmanlabError(f"{where} ({wname}): a wave has either best_of or runs/grid, not both; "
                                        f"put the other runs in a wave of their own")
                earlier = [wn for wn, _, _ in waves if wn is not None]
                _check_best_of(w["best_of"], f"{where} ({wname})", earlier, raw.get("baseline") is not None)
            elif w.get("runs") is None and w.get("grid") is None:
                raise ElmanlabError(f"{where} ({wname}): a wave needs runs or a grid (or best_of)")
            if wname in [wn for wn, _, _ in waves]:
                raise ElmanlabError(f"{where}: two waves are named {wname!r}; give each wave its own name")
            waves.append((wname, w, f"{where} ({wname})"))
    if not waves:
        raise ElmanlabError(f"{path}: the study has no runs; add `runs:`, `grid:` or `waves:`")

    parts: list[list[Job]] = []          # the jobs of each wave, in the file's order
    best_of_waves: list[tuple[str, dict, str, dict, list | None, int]] = []
    for wname, block, where in waves:
        if block is not raw and block.get("best_of") is not None:
            # expanded below, once the baseline is known, into its (still empty) place in parts
            own = train_block(block, where)
            if not own and block.get("seeds") is None:
                raise ElmanlabError(f"{where}: a best_of wave repeats the chosen runs with other settings; "
                                    f"give it `train:` (e.g. {{seed: 43}}) or `seeds:`")
            best_of_waves.append((wname, block, where, own, _seeds(block.get("seeds"), f"{where}: seeds"),
                                  len(parts)))
            parts.append([])
            continue
        wtrain = _merge_train(study_train, train_block(block, where) if block is not raw else {})
        seeds = _seeds(block.get("seeds"), f"{where}: seeds") if block is not raw else None
        seeds = seeds if seeds is not None else top_seeds
        entries: list[tuple[str, dict]] = []
        runs = block.get("runs")
        if runs is not None:
            if not isinstance(runs, list):
                raise ElmanlabError(f"{where}: runs is a list of mappings such as - {{model: e1, params: 100M}}")
            entries += [(f"{where}: runs[{i}]" if block is not raw else f"runs[{i}]", r)
                        for i, r in enumerate(runs)]
        if block.get("grid") is not None:
            entries += _expand_grid(block["grid"], f"{where}: grid" if block is not raw else "grid")
        parts.append([j for w, e in entries for j in _job_from_entry(e, w, wname, wtrain, seeds, study_train, flags)])
    real = [j for part in parts for j in part]
    if not real:
        raise ElmanlabError(f"{path}: the study expands to no runs; check runs and grid")
    baseline = raw.get("baseline")
    if baseline is not None:
        baseline = str(baseline)
        from elmanlab.layers import ALIASES
        b = ALIASES.get(baseline.lower(), baseline.lower())
        models = sorted({j.model for j in real})
        if b in models:
            baseline = b
        elif baseline not in {j.id for j in real}:
            raise ElmanlabError(f"{path}: baseline {baseline!r} is neither a model of this study "
                                f"({', '.join(models)}) nor a run name")

    # best_of waves: copies of the best finished runs of an earlier wave, known once it has finished
    state = read_state(out) if out is not None and Path(out).is_dir() else None
    if state is not None and state.get("name") != name:
        state = None
    best_of: dict = {}
    deferred: list = []
    messages: list = []
    waiting: set[str] = set()           # best_of waves not expanded yet
    best_of_names = {b[0] for b in best_of_waves}
    for wname, block, where, own, wseeds, idx in best_of_waves:
        spec = block["best_of"]
        exp = None if spec["wave"] in waiting else _expand_best_of(
            wname, where, spec, own, wseeds, [j for part in parts for j in part], baseline, out, state,
            retry_failed, best_of_names)
        if exp is None:
            waiting.add(wname)
            deferred.append({"wave": wname, "from": spec["wave"], "n": spec["n"],
                             "metric": spec["metric"], "baseline": spec["baseline"],
                             "line": _deferred_line(wname, spec)})
            continue
        new_jobs, record, lines = exp
        best_of[wname] = record
        messages += lines
        parts[idx] = new_jobs
    jobs = [j for part in parts for j in part]

    for j in jobs:                      # data paths: relative to the study file; they must exist
        for key in ("data", "val_data"):
            v = j.train.get(key)
            if v is None:
                continue
            f = Path(str(v)).expanduser()
            f = f if f.is_absolute() else (base / f).resolve()
            if not f.is_file():
                raise ElmanlabError(f"{j.where}: {key} file {f} does not exist; fix the path in the study file "
                                    f"or give --{key.replace('_', '-')} PATH")
            j.train[key] = str(f)

    # one id per distinct run: identical repeats collapse, different runs under one id are an error
    seen: dict[str, Job] = {}
    unique: list[Job] = []
    for j in jobs:
        if j.id in seen:
            if seen[j.id].identity() != j.identity():
                raise ElmanlabError(f"{j.where} and {seen[j.id].where} are different runs with the same "
                                    f"name {j.id!r}; give one of them a `name:`")
            continue
        seen[j.id] = j
        unique.append(j)

    desc = raw.get("description") or ""
    return Study(name, str(path.resolve()), baseline, unique, str(desc).strip(), best_of=best_of,
                 deferred=deferred, messages=messages,
                 load_args={"data": data, "val_data": val_data, "flags": flags, "_raw": raw})


def _check_best_of(spec, where: str, earlier: list[str], has_baseline: bool) -> None:
    if not isinstance(spec, dict):
        raise ElmanlabError(f"{where}: best_of is a mapping such as {{wave: families, n: 2, metric: val_bpb, "
                            f"baseline: true}}, got {spec!r}")
    _check_keys(spec, BEST_OF_KEYS, f"{where}: best_of", "best_of")
    src = spec.get("wave")
    if src is None or str(src) not in earlier:
        known = ", ".join(earlier) if earlier else "none: best_of needs a named wave before it"
        raise ElmanlabError(f"{where}: best_of.wave must name an earlier wave, got {src!r}{_suggest(str(src), earlier)}"
                            f" (earlier waves: {known})")
    spec["wave"] = str(src)
    n = spec.get("n")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ElmanlabError(f"{where}: best_of.n is how many runs to take, a positive integer, got {n!r}")
    metric = spec.get("metric", "val_bpb")
    if metric not in BEST_OF_METRICS:
        raise ElmanlabError(f"{where}: best_of.metric must be one of {', '.join(BEST_OF_METRICS)} (lower is "
                            f"better), got {metric!r}")
    if not isinstance(spec.get("baseline", False), bool):
        raise ElmanlabError(f"{where}: best_of.baseline is true or false, got {spec.get('baseline')!r}")
    spec["metric"], spec["baseline"] = metric, spec.get("baseline", False)     # defaults filled in once
    if spec["baseline"] and not has_baseline:       # at load, not when a chained wave expands hours later
        raise ElmanlabError(f"{where}: best_of.baseline: true needs the study's `baseline:`")


def _deferred_line(wname: str, spec: dict) -> str:
    n, metric = spec["n"], spec["metric"]
    what = "the best run" if n == 1 else f"the {n} best"
    return (f"wave {wname}: {what} of wave {spec['wave']} by {metric}"
            + (" plus the baseline" if spec["baseline"] else "")
            + " (decided when that wave has finished)")


def _source_status(out, job: Job, state: dict | None, retry_failed: bool) -> tuple[str, dict | None]:
    """completed (with its summary), failed, or pending: a source run of a best_of wave."""
    if out is None:
        return "pending", None
    st, _, summ = run_status(Path(out) / job.id)
    if st == "completed":
        return "completed", summ
    if st != "absent":
        return ("pending" if retry_failed else "failed"), None
    # a run that failed before writing its summary is known from the study's state
    for rec in (state or {}).get("jobs", []):
        if rec.get("id") == job.id and rec.get("status") == "failed" and rec.get("in_study_file", True) \
                and rec.get("spec_identity") == job.identity():
            return ("pending" if retry_failed else "failed"), None
    return "pending", None


def _expand_best_of(wname, where, spec, own_train, wseeds, jobs, baseline, out, state, retry_failed,
                    best_of_names):
    """(jobs, record, message lines) of a best_of wave, or None while its source wave is unfinished
    (the caller knows when the source is itself a best_of wave still waiting)."""
    src_wave, n, metric = spec["wave"], spec["n"], spec["metric"]
    sources: list[Job] = []
    seen_ids: set[str] = set()
    for j in jobs:
        if j.wave == src_wave and j.id not in seen_ids:
            sources.append(j)
            seen_ids.add(j.id)
    want_base = spec["baseline"]
    is_base = lambda j: baseline is not None and (j.model == baseline or j.id == baseline)  # noqa: E731
    # (a best_of source wave holds whichever runs won: no baseline there is a warning below, not an error)
    if want_base and sources and not any(is_base(j) for j in sources) and src_wave not in best_of_names:
        raise ElmanlabError(f"{where}: best_of.baseline: true, but wave {src_wave} has no run of the baseline "
                            f"{baseline}; set baseline: false or add it to that wave")
    status = {}
    for j in sources:
        st, summ = _source_status(out, j, state, retry_failed)
        if st == "pending":
            return None
        status[j.id] = (st, summ)
    ranking, skipped = [], []
    for i, j in enumerate(sources):
        st, summ = status[j.id]
        v = (summ or {}).get(metric)
        if st == "completed" and isinstance(v, (int, float)) and not isinstance(v, bool) and v == v \
                and abs(v) != float("inf"):
            ranking.append((float(v), i, j))
        else:
            skipped.append(j.id if st == "completed" else f"{j.id} (failed)")
    ranking.sort(key=lambda t: (t[0], t[1]))          # lower is better; ties: the file's order
    chosen = [j for _, _, j in ranking[:n]]
    base_runs = [j for _, _, j in ranking if want_base and is_base(j) and j not in chosen]
    lines = []
    if skipped:
        lines.append(f"wave {wname}: not ranked (failed or no {metric}): {', '.join(skipped)}")
    if not ranking:
        lines.append(f"warning: wave {wname}: no run of wave {src_wave} finished with a {metric}, "
                     f"so the wave has no runs")
    else:
        vals = {j.id: v for v, _, j in ranking}
        lines.append(f"wave {wname}: best {n} of {src_wave} by {metric}: "
                     + ", ".join(f"{j.id} ({vals[j.id]:.4g})" for j in chosen)
                     + ("".join(f" + baseline {j.id}" for j in base_runs)))
        if want_base and not base_runs and not any(is_base(j) for j in chosen):
            lines.append(f"warning: wave {wname}: the baseline {baseline} has no finished run in wave "
                         f"{src_wave} with a {metric}; not repeated")
    new_jobs, same = [], []
    known = {json.dumps(j.identity(), sort_keys=True): j.id for j in jobs}
    for src in chosen + base_runs:
        for s in (wseeds or [None]):
            t = _merge_train(src.train, own_train)
            jid = f"{src.id}-{wname}"
            if s is not None:
                t["seed"] = s
                jid += f"-s{s}"
            jid = re.sub(r"[^A-Za-z0-9_.=+,-]", "_", jid)
            job = dataclasses.replace(src, id=jid, where=f"{where}: best_of {src.id}", wave=wname,
                                      options=dict(src.options), train=t, size=dict(src.size))
            key = json.dumps(job.identity(), sort_keys=True)
            twin = known.get(key)
            if twin is not None:            # the study already has this very run (e.g. that seed)
                same.append(f"{jid} = {twin}")
                continue
            known[key] = jid
            new_jobs.append(job)
    if same:
        lines.append(f"wave {wname}: not run twice, the study already has them: {', '.join(same)}")
    record = {"from": src_wave, "n": n, "metric": metric, "baseline": want_base,
              "ranking": [{"id": j.id, metric: v} for v, _, j in ranking],
              "chosen": [j.id for j in chosen], "baseline_runs": [j.id for j in base_runs],
              "not_ranked": skipped, "runs": [j.id for j in new_jobs], "already_in_study": same}
    return new_jobs, record, lines


# ---------------------------------------------------------------- GPUs

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


# ---------------------------------------------------------------- files

def _to_run(rec: dict) -> bool:
    """A state record still to run: in the study file, neither completed nor failed."""
    return rec.get("in_study_file", True) and rec["status"] not in ("completed", "failed")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def read_state(out: Path) -> dict | None:
    p = Path(out) / STATE_FILE
    if not p.exists():
        return None
    st = read_json_or_none(p)
    if not isinstance(st, dict) or "jobs" not in st:
        raise ElmanlabError(f"{p} is not a study state file (unreadable JSON); move it away or use another --out")
    return st


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


# ---------------------------------------------------------------- run records

def run_status(run_dir: Path) -> tuple[str, str | None, dict | None]:
    """(status, reason, summary) of a run folder: completed, failed, stopped_nonfinite, or absent."""
    s = read_json_or_none(Path(run_dir) / "summary.json")
    if not isinstance(s, dict):
        return "absent", None, None
    st = s.get("status") or "completed"
    return st, (s.get("error") or (None if st == "completed" else st)), s


def _log_tail(log: Path, n: int = 15) -> list[str]:
    try:
        data = log.read_bytes()[-65536:].decode("utf-8", "replace")
    except OSError:
        return []
    lines = [ln.rstrip() for ln in re.split(r"[\r\n]+", data)]
    lines = [ln for ln in lines if ln.strip()]
    return lines[-n:]


def failure_reason(tail: list[str], returncode: int | None) -> str:
    text = "\n".join(tail)
    if "out of memory" in text.lower():
        oom = [ln for ln in tail if "out of memory" in ln.lower()]
        return oom[-1].strip()[:300]
    errs = [ln for ln in tail if ln.startswith("error:") or "Error" in ln.split(":")[0]]
    if errs:
        return errs[-1].strip()[:300]
    if returncode is not None and returncode < 0:
        return f"killed by signal {-returncode}"
    if tail:
        return tail[-1].strip()[:300]
    return f"exit code {returncode}"


def _has_checkpoint(run_dir: Path) -> bool:
    """Whether ``elmanlab train --resume`` can continue this folder."""
    try:
        from elmanlab.train import is_run_dir, list_checkpoints
    except ImportError:
        return False
    return is_run_dir(run_dir) and bool(list_checkpoints(run_dir))


def _move_aside(run_dir: Path, tag: str) -> Path:
    k = 1
    while (dest := run_dir.with_name(f"{run_dir.name}.{tag}-{k}")).exists():
        k += 1
    os.replace(run_dir, dest)
    return dest


# ---------------------------------------------------------------- the queue

class Runner:
    """Runs a study's pending jobs on GPU slots (or the CPU), keeping ``study.json`` current."""

    def __init__(self, study: Study, out, gpus: list[str] | None, retry_failed: bool = False,
                 echo=None, python: str | None = None, extra_env: dict | None = None):
        self.study = study
        self.out = Path(out)
        self.gpus = gpus
        self.retry_failed = retry_failed
        self.python = python or sys.executable
        self.extra_env = extra_env or {}
        self.lock = threading.Lock()
        self.procs: dict[str, subprocess.Popen] = {}
        self.stop = threading.Event()
        self._echo = echo
        self.state: dict = {}
        self.bar = None
        self.n_started = 0

    # -- state
    def echo(self, msg: str) -> None:
        if self._echo is not None:
            self._echo(msg)
        elif self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr, flush=True)

    def save(self) -> None:
        self.state["updated"] = _now()
        atomic_write_json(self.out / STATE_FILE, self.state)

    def plan(self, previous: dict | None) -> dict:
        """Merge the study file with the previous state: what is done, what is to run."""
        prev_jobs = {j["id"]: j for j in (previous or {}).get("jobs", [])}
        jobs = []
        for job in self.study.jobs:
            rec = {**job.to_dict(), "status": "pending", "error": None}
            old = prev_jobs.pop(job.id, None)
            rdir = self.out / job.id
            st, reason, summ = run_status(rdir)
            if st != "absent":
                if old is not None and old.get("spec_identity") not in (None, job.identity()):
                    raise ElmanlabError(
                        f"{rdir} was trained with other settings than the study file now gives "
                        f"({job.where}); restore the file, give the run a new `name:`, or use another --out")
                if st == "completed" or not self.retry_failed:
                    rec.update(status="completed" if st == "completed" else "failed", error=reason,
                               **{k: old.get(k) for k in ("started", "finished", "wall_s", "gpu",
                                                          "returncode", "log", "stderr_tail")
                                  if old and k in old})
            elif old is not None and old.get("status") == "failed" and not self.retry_failed \
                    and old.get("spec_identity") == job.identity():
                rec.update({k: old.get(k) for k in ("status", "error", "returncode", "stderr_tail", "log",
                                                    "started", "finished", "wall_s", "gpu")})
            rec["spec_identity"] = job.identity()
            rec["run_dir"] = job.id
            jobs.append(rec)
        # runs from an earlier version of the file stay recorded (their folders are kept)
        for old in prev_jobs.values():
            old = dict(old)
            old["in_study_file"] = False
            if old.get("status") in ("running", "pending"):
                old["status"] = "dropped"
            jobs.append(old)
        created = (previous or {}).get("created") or _now()
        return {"name": self.study.name, "study_file": self.study.path, "description": self.study.description,
                "baseline": self.study.baseline, "created": created, "updated": _now(),
                "gpus": self.gpus or "cpu", "best_of": self.study.best_of,
                "deferred": self.study.deferred_records(),
                "jobs": jobs}

    def _expand_deferred(self) -> deque:
        """Expand the study again against the output folder; the newly runnable jobs (and the
        state merged with them). Records of runs already finished in this process are kept as they are."""
        before = {r["id"]: r for r in self.state["jobs"] if r.get("in_study_file", True)}
        study = self.study.reload(self.out)
        new_lines = [m for m in study.messages if m not in self.study.messages]
        self.study = study
        state = self.plan(self.state)
        state["jobs"] = [before[r["id"]] if r["id"] in before and r.get("in_study_file", True)
                         and before[r["id"]]["status"] in ("completed", "failed") else r for r in state["jobs"]]
        self.state = state
        self.save()
        for m in new_lines:
            self.echo(m)
        todo = deque(r for r in self.state["jobs"] if _to_run(r) and r["id"] not in before)
        return todo

    # -- running
    def run(self) -> dict:
        from tqdm import tqdm
        if not train_available():
            raise ElmanlabError("this elmanlab has no `train` command, so a study cannot run; "
                                "update the package (--dry-run still works)")
        self.plan(check_out_dir(self.out, self.study))     # every error before anything is written
        self.out.mkdir(parents=True, exist_ok=True)
        with StudyLock(self.out):
            self.state = self.plan(check_out_dir(self.out, self.study))
            (self.out / LOG_DIR).mkdir(exist_ok=True)
            self.save()
            todo = deque(r for r in self.state["jobs"] if _to_run(r))
            total = sum(1 for r in self.state["jobs"] if r.get("in_study_file", True))
            done0 = total - len(todo)
            n_failed_before = sum(1 for r in self.state["jobs"]
                                  if r.get("in_study_file", True) and r["status"] == "failed")
            slots = self.gpus or [None]
            where = f"GPUs {','.join(self.gpus)}" if self.gpus else "CPU, one job at a time"
            self.echo(f"study {self.study.name}: {total} runs, {done0} already done"
                      + (f" ({n_failed_before} failed earlier, not retried: use --retry-failed)"
                         if n_failed_before else "")
                      + f", {len(todo)} to run on {where}; state in {self.out / STATE_FILE}")
            for m in self.study.messages:
                self.echo(m)
            for d in self.study.deferred:
                self.echo(d["line"])
            self.total = total
            self.bar = tqdm(total=total, initial=done0, desc=self.study.name, unit="run",
                            file=sys.stderr, dynamic_ncols=True, leave=True)
            threads: list[threading.Thread] = []
            try:
                while True:
                    threads = [threading.Thread(target=self._worker, args=(slot, todo), daemon=True)
                               for slot in slots[:len(todo)]]
                    for t in threads:
                        t.start()
                    while any(t.is_alive() for t in threads):
                        for t in threads:
                            t.join(timeout=0.2)
                    if self.stop.is_set() or not self.study.deferred:
                        break
                    # waves that waited for others: decided now that those have finished
                    todo = self._expand_deferred()
                    if not todo:
                        for d in self.study.deferred:
                            self.echo(f"{d['line']}: still waiting, run the study again")
                        break
                    with self.lock:
                        self.total += len(todo)
                        self.bar.total = self.total
                        self.bar.refresh()
            except KeyboardInterrupt:
                self.stop.set()
                with self.lock:
                    procs = list(self.procs.values())
                for p in procs:                 # SIGINT first: train saves a checkpoint when it can
                    if p.poll() is None:
                        p.send_signal(signal.SIGINT)
                if any(p.poll() is None for p in procs):
                    self.echo(f"interrupted: waiting up to {INTERRUPT_GRACE_S} s for the runs in flight to save "
                              f"a checkpoint (interrupt again to stop at once)")
                deadline = time.time() + INTERRUPT_GRACE_S
                for p in procs:
                    try:
                        p.wait(timeout=max(0.1, deadline - time.time()))
                    except subprocess.TimeoutExpired:
                        p.kill()
                for t in threads:
                    t.join(timeout=30)
                with self.lock:
                    for r in self.state["jobs"]:
                        if r["status"] == "running":
                            r["status"] = "interrupted"
                    self.save()
                self.bar.close()
                raise
            self.bar.close()
            self.bar = None
        return self.state

    def _worker(self, slot: str | None, todo: deque) -> None:
        while not self.stop.is_set():
            with self.lock:
                if not todo:
                    return
                rec = todo.popleft()
                self.n_started += 1
                k = self.n_started
            self._run_one(rec, slot, k)

    def _run_one(self, rec: dict, slot: str | None, k: int) -> None:
        job = self.study.job(rec["id"])
        rdir = self.out / job.id
        log = self.out / LOG_DIR / f"{job.id}.log"
        flags = train_flags()
        argv = job.argv(rdir, flags)
        st, _, _ = run_status(rdir)
        if st != "absent":          # a failed run being retried: keep the old folder beside it
            _move_aside(rdir, "failed")
        elif rdir.exists():
            if _has_checkpoint(rdir):
                argv = ["train", "--resume", str(rdir)]
            else:
                _move_aside(rdir, "interrupted")
        if self.gpus is None and "device" in flags and "device" not in job.train and argv[1] != "--resume":
            argv[-2:-2] = ["--device", "cpu"]
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.extra_env)
        if slot is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot
        where = f"GPU {slot}" if slot is not None else "CPU"
        size = job.size.get("params")
        from elmanlab.sizing import format_count
        self.echo(f"[{k}/{self.total}] start {job.id} on {where} ({format_count(size)} params, {job.budget})")
        t0 = time.time()
        with self.lock:
            rec.update(status="running", started=_now(), t_start=round(t0, 3), gpu=slot, error=None,
                       log=str(log.relative_to(self.out)), argv=argv)
            self.save()
        try:
            with open(log, "ab") as lf:
                cvd = f"CUDA_VISIBLE_DEVICES={slot} " if slot is not None else ""
                lf.write(f"\n# {_now()} {cvd}elmanlab {' '.join(argv)}\n".encode())
                lf.flush()
                p = subprocess.Popen([self.python, "-m", "elmanlab"] + argv, env=env, stdout=lf,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
                with self.lock:
                    self.procs[job.id] = p
                rc = p.wait()
        except OSError as e:
            rc, tail = None, [f"could not start the train process: {e}"]
        else:
            tail = _log_tail(log)
        finally:
            with self.lock:
                self.procs.pop(job.id, None)
        if self.stop.is_set():
            return
        st, reason, summ = run_status(rdir)
        wall = time.time() - t0
        with self.lock:
            rec.update(finished=_now(), t_end=round(time.time(), 3), wall_s=round(wall, 1), returncode=rc)
            if rc == 0 and st == "completed":
                rec.update(status="completed", error=None, stderr_tail=None)
                loss = summ.get("loss_last100")
                tps = summ.get("tokens_per_s")
                msg = (f"[{k}/{self.total}] done  {job.id}: loss {loss:.4f}" if isinstance(loss, (int, float))
                       else f"[{k}/{self.total}] done  {job.id}")
                if isinstance(tps, (int, float)):
                    msg += f", {tps:,.0f} tok/s"
                if summ.get("val_bpb") is not None:
                    msg += f", val {summ['val_bpb']:.4f} bpb"
                msg += f", {wall:.0f} s"
            else:
                why = reason if st not in ("absent", "completed") else failure_reason(tail, rc)
                if st not in ("absent", "completed") and not (summ or {}).get("error"):
                    errs = [ln[len("error:"):].strip() for ln in tail if ln.startswith("error:")]
                    if errs:
                        why = f"{st}: {errs[-1]}"
                if st == "completed":
                    why = f"exit code {rc}: {failure_reason(tail, rc)}"
                elif st == "absent" and rc == 0:
                    why = "the train process ended without writing summary.json"
                rec.update(status="failed", error=why, stderr_tail=tail)
                msg = f"[{k}/{self.total}] FAILED {job.id} after {wall:.0f} s: {why} (log: {log})"
            self.save()
            if self.bar is not None:
                self.bar.update(1)
        self.echo(msg)


# ---------------------------------------------------------------- dry run

def plan_table(study: Study, out: Path | None = None) -> list[dict]:
    """Rows for ``--dry-run``: every job with its size and whether it is already done."""
    from elmanlab.sizing import format_count
    rows = []
    for i, j in enumerate(study.jobs, 1):
        status = "to run"
        if out is not None:
            st, reason, _ = run_status(Path(out) / j.id)
            if st == "completed":
                status = "done"
            elif st != "absent":
                status = "failed"
        target = j.params or "-"
        rows.append({"#": i, "run": j.id, "wave": j.wave or "", "model": j.model, "target": target,
                     "params": j.size.get("params"), "params_h": format_count(j.size.get("params", 0)),
                     "dim": j.size.get("dim"), "depth": j.size.get("depth"),
                     "heads": j.size.get("n_heads"), "d_inner": j.size.get("d_inner"),
                     "state/layer": j.size.get("state_per_layer"), "budget": j.budget,
                     "seed": j.train.get("seed"), "status": status})
    return rows
