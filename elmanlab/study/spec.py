"""The study file -> a :class:`Study` of :class:`Job` s: the format, its validation, grid and seeds
expansion, job ids and data paths. Reading the YAML and checking single keys and values (unknown keys,
option and train values by type, sizes, seeds) is :mod:`elmanlab.study.values`.

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

The ``train:`` keys (in ``train``, a wave's ``train`` or a run) are the ``elmanlab train`` settings,
``config.train_settings()``; a run's id is its model, its size and every setting that defines a run
(``config.identity_settings()``) that it or its wave sets beyond the study's own ``train``, then its
seed. Data paths in the file are relative to the file.

A ``best_of`` wave repeats the ``n`` best finished runs of an earlier wave (lower metric is better,
ties in file order; with ``baseline: true`` also the baseline's runs of that wave) with the wave's own
train settings on top, as ``<run id>-<wave>``. It can only be expanded once that wave has finished in
the output folder (``load_study(..., out=DIR)``); until then it is listed in ``Study.deferred`` and
the Runner expands it when its queue has run dry.

Each job becomes ``python -m elmanlab train ... --out DIR/<job id>`` in its own process (see
:mod:`elmanlab.study.runner`).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

from elmanlab.config import BUDGET_SETTINGS, NORMS, TrainConfig, identity_settings, option_fields, train_settings
from elmanlab.errors import ElmanlabError
from elmanlab.runs import read_state
from elmanlab.study.best_of import expand_best_of
from elmanlab.study.job import Job, fmt, merge_train, safe_id
from elmanlab.study.values import (all_option_names, check_keys, coerce_option, coerce_train, load_yaml,
                                   norm_params, parse_seeds, suggest)

TOP_KEYS = ("name", "description", "baseline", "train", "runs", "grid", "seeds", "waves")
WAVE_KEYS = ("name", "description", "train", "runs", "grid", "seeds", "best_of")
BEST_OF_KEYS = ("wave", "n", "metric", "baseline")
BEST_OF_METRICS = ("val_bpb", "loss_last100")      # lower is better
SIZE_KEYS = ("params", "dim", "depth", "mlp_ratio", "tie_embeddings", "norm")
ENTRY_KEYS = ("model", "name", "options") + SIZE_KEYS


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


# ---------------------------------------------------------------- entries -> jobs

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
            out.append((f"{w} ({', '.join(f'{k}={fmt(v)}' for k, v in entry.items())})", entry))
    return out


def _jobs_from_entry(entry: dict, where: str, wave: str | None, base_train: dict, seeds: list | None,
                     study_train: dict) -> list[Job]:
    from elmanlab.layers import get_family
    if not isinstance(entry, dict):
        raise ElmanlabError(f"{where}: a run is a mapping such as {{model: e1, params: 100M}}, got {entry!r}")
    settings = train_settings()
    all_opts = all_option_names()
    allowed = list(ENTRY_KEYS) + list(settings) + all_opts
    check_keys(entry, allowed, where, "run")
    if "model" not in entry:
        raise ElmanlabError(f"{where}: a run needs a `model` (one of `elmanlab models`)")
    try:
        fam = get_family(str(entry["model"]))
    except ElmanlabError as e:
        raise ElmanlabError(f"{where}: {e}")
    model = fam.name
    fields_ = option_fields(model)
    options: dict = {}
    given_opts = entry.get("options") or {}
    if not isinstance(given_opts, dict):
        raise ElmanlabError(f"{where}: options must be a mapping, got {given_opts!r}")
    for k, v in list(given_opts.items()) + [(k, v) for k, v in entry.items() if k in all_opts]:
        if k not in fields_:
            raise ElmanlabError(f"{where}: {model} has no option {k!r}{suggest(str(k), fields_)} "
                                f"(its options: {', '.join(fields_) or 'none'}); "
                                f"put models with different options in separate runs or grids")
        options[k] = coerce_option(model, k, v, where)

    params = dim = depth = None
    if entry.get("params") is not None:
        params = norm_params(entry["params"], where)
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
    mlp_ratio = entry.get("mlp_ratio")          # None: the family's default (the transformer's 8/3, else 0)
    if mlp_ratio is not None and (not isinstance(mlp_ratio, (int, float)) or isinstance(mlp_ratio, bool)
                                  or not mlp_ratio >= 0 or mlp_ratio == float("inf")):
        raise ElmanlabError(f"{where}: mlp_ratio must be a number >= 0, got {mlp_ratio!r}")
    tie = entry.get("tie_embeddings", False)
    if not isinstance(tie, bool):
        raise ElmanlabError(f"{where}: tie_embeddings is true or false, got {tie!r}")
    norm = entry.get("norm", "rms")
    if norm not in NORMS:
        raise ElmanlabError(f"{where}: norm must be one of {', '.join(NORMS)}, got {norm!r}")

    own_train = {k: coerce_train(k, v, where) for k, v in entry.items() if k in settings}
    train = merge_train(base_train, own_train)
    for k in BUDGET_SETTINGS:
        if k in train:
            v = train[k]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                raise ElmanlabError(f"{where}: {k} must be a positive number, got {v!r}")
    if not any(k in train for k in BUDGET_SETTINGS):
        raise ElmanlabError(f"{where}: no budget; set `steps` or `minutes` under train (or in the run)")

    # the size, solved now so that a bad size stops the study before anything runs
    from elmanlab.sizing import model_config, report
    try:
        cfg = model_config(model, params=params, dim=dim, depth=depth, options=options,
                           mlp_ratio=None if mlp_ratio is None else float(mlp_ratio), tie_embeddings=tie,
                           norm=norm)
        rep = report(cfg)
    except ElmanlabError as e:
        at = "" if where.endswith(")") else f" ({model} at {params or f'{dim}x{depth}'})"
        raise ElmanlabError(f"{where}{at}: {e}")
    try:                                         # the settings' values, checked as `elmanlab train` checks them
        TrainConfig(model=cfg, out="-", **train).validate()
    except ElmanlabError as e:
        raise ElmanlabError(f"{where}: {e}") from None
    size = {"params": rep.params, "dim": rep.dim, "depth": rep.depth, "d_inner": rep.d_inner,
            "n_heads": rep.n_heads, "state_per_layer": rep.state_per_layer}
    if rep.state_grows:                          # a KV cache: state_per_layer is per byte of context
        size["state_grows"] = True
    # the job records the resolved ratio: an entry without mlp_ratio keeps the identity it always
    # had (0.0 for the recurrent families); the id names the ratio only where it is not the default
    mlp_ratio = cfg.mlp_ratio

    # id: model, size, then every setting this entry or its wave sets beyond the study's defaults
    id_parts = [model, params if params is not None else f"d{dim}x{depth}"]
    if params is not None and depth is not None:
        id_parts.append(f"L{depth}")
    if mlp_ratio != fam.default_mlp_ratio:
        id_parts.append(f"mlp={fmt(float(mlp_ratio))}")
    if tie:
        id_parts.append("tied")
    if norm != "rms":
        id_parts.append(f"norm={norm}")
    id_parts += [f"{k}={fmt(v)}" for k, v in options.items()]
    defining = identity_settings()
    id_parts += [f"{k}={fmt(v)}" for k, v in train.items()
                 if k in defining and k != "seed" and study_train.get(k, object()) != v]

    seed_list = [train.get("seed")] if ("seed" in own_train or not seeds) else seeds
    jobs = []
    for s in seed_list:
        t = dict(train)
        if s is not None:
            t["seed"] = coerce_train("seed", s, where)
        parts = id_parts + ([f"s{t['seed']}"] if t.get("seed") is not None else [])
        jid = entry.get("name") or "-".join(parts)
        if len(seed_list) > 1 and entry.get("name"):
            jid = f"{entry['name']}-s{t['seed']}"
        jobs.append(Job(safe_id(jid), where, wave, model, params, dim, depth, float(mlp_ratio), tie, options,
                        t, size, norm))
    return jobs


# ---------------------------------------------------------------- the study file

def load_study(path, data: str | None = None, val_data: str | None = None, out=None,
               retry_failed: bool = False, _raw: dict | None = None) -> Study:
    """Read, validate and expand a study file. Raises one clear ElmanlabError per problem.

    ``data`` / ``val_data``: paths that replace the file's. ``out``: the study's output folder, read
    to expand ``best_of`` waves whose source wave has finished there (the others are left in
    ``Study.deferred``). ``retry_failed``: failed runs of a source wave count as unfinished (they
    are about to run again)."""
    path = Path(path)
    raw = load_yaml(path) if _raw is None else _raw
    check_keys(raw, TOP_KEYS, str(path), "top-level")
    name = raw.get("name", path.stem)
    if not isinstance(name, (str, int)) or not str(name).strip():
        raise ElmanlabError(f"{path}: name must be a non-empty string")
    name = str(name)
    settings = list(train_settings())

    def train_block(d, where):
        t = d.get("train") or {}
        if not isinstance(t, dict):
            raise ElmanlabError(f"{where}: train is a mapping of train settings, got {t!r}")
        for k in t:
            if k in ENTRY_KEYS or k in all_option_names():
                raise ElmanlabError(f"{where}: {k!r} is a model setting; put it in runs or grid, not under train")
        check_keys(t, settings, where + ".train", "train")
        return {k: coerce_train(k, v, f"{where}.train") for k, v in t.items()}

    study_train = train_block(raw, str(path))
    base = path.resolve().parent
    for key, val in (("data", data), ("val_data", val_data)):
        if val is not None:
            study_train[key] = str(Path(val).expanduser().resolve())
        elif study_train.get(key) is not None:   # a path in the file is relative to the file
            study_train[key] = str((base / Path(str(study_train[key])).expanduser()).resolve())

    top_seeds = parse_seeds(raw.get("seeds"), f"{path}: seeds")
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
            check_keys(w, WAVE_KEYS, where, "wave")
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
            best_of_waves.append((wname, block, where, own, parse_seeds(block.get("seeds"), f"{where}: seeds"),
                                  len(parts)))
            parts.append([])
            continue
        wtrain = merge_train(study_train, train_block(block, where) if block is not raw else {})
        seeds = parse_seeds(block.get("seeds"), f"{where}: seeds") if block is not raw else None
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
        parts.append([j for w, e in entries for j in _jobs_from_entry(e, w, wname, wtrain, seeds, study_train)])
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
    records = {r.get("id"): r for r in (state or {}).get("jobs", [])}
    best_of: dict = {}
    deferred: list = []
    messages: list = []
    waiting: set[str] = set()           # best_of waves not expanded yet
    best_of_names = {b[0] for b in best_of_waves}
    for wname, block, where, own, wseeds, idx in best_of_waves:
        spec = block["best_of"]
        exp = None if spec["wave"] in waiting else expand_best_of(
            wname, where, spec, own, wseeds, [j for part in parts for j in part], baseline, out, records,
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
                 load_args={"data": data, "val_data": val_data, "_raw": raw})


def _check_best_of(spec, where: str, earlier: list[str], has_baseline: bool) -> None:
    if not isinstance(spec, dict):
        raise ElmanlabError(f"{where}: best_of is a mapping such as {{wave: families, n: 2, metric: val_bpb, "
                            f"baseline: true}}, got {spec!r}")
    check_keys(spec, BEST_OF_KEYS, f"{where}: best_of", "best_of")
    src = spec.get("wave")
    if src is None or str(src) not in earlier:
        known = ", ".join(earlier) if earlier else "none: best_of needs a named wave before it"
        raise ElmanlabError(f"{where}: best_of.wave must name an earlier wave, got {src!r}{suggest(str(src), earlier)}"
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
