"""`elmanlab train`: its flags are generated from the TrainConfig settings (elmanlab.config)."""
from __future__ import annotations

import argparse
import math
import sys
import time

from elmanlab.cli.common import add_model_arguments, model_config_from_args, model_flags_given, print_json
from elmanlab.config import DEFAULT_STEPS, GROUPS, field_type, resumable_settings, train_settings
from elmanlab.errors import ElmanlabError

DEFAULT_PARAMS = "1M"


def _shown_default(v) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    return repr(v) if isinstance(v, float) else str(v)


def add_setting_arguments(p: argparse.ArgumentParser) -> None:
    """One flag per train setting, in its group; every default is None (not given), so that the
    setting's own default applies and ``--resume`` can tell what was given."""
    groups = {g: p.add_argument_group(title) for g, title in GROUPS.items()}
    for name, f in train_settings().items():
        flag = "--" + name.replace("_", "-")
        helptext = f.metadata["help"].replace("%", "%%")
        if f.default is not None:
            helptext += f" (default {_shown_default(f.default)})"
        typ = field_type(f)
        if typ is bool:
            groups[f.metadata["group"]].add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                                     help=helptext)
        else:
            groups[f.metadata["group"]].add_argument(flag, type=typ, default=None, help=helptext,
                                                     metavar="PATH" if name.endswith("data") else None)


def register(sub) -> None:
    p = sub.add_parser(
        "train", help="train a model (or continue one with --resume)",
        description="Train a byte-level LM with Schedule-Free AdamW on a byte stream. Without --data the "
                    "embedded corpus (complete works of Shakespeare, 5 MB) is used; without a size, "
                    f"--params {DEFAULT_PARAMS}; without a budget, --steps {DEFAULT_STEPS}. Under "
                    "`torchrun --nproc_per_node=N -m elmanlab train ...` it trains data parallel. "
                    "`elmanlab train --resume DIR` continues a run from its newest checkpoint.")
    p.add_argument("model", nargs="?", help="model family (see `elmanlab models`); not with --resume")
    add_model_arguments(p, with_model=False)
    add_setting_arguments(p)
    r = p.add_argument_group("where")
    r.add_argument("--out", metavar="DIR", help="run folder (default runs/MODEL-PARAMS-TIMESTAMP)")
    r.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its newest checkpoint to its "
                   "budget (or a new --steps/--minutes); everything else comes from DIR/config.json, "
                   f"except what may change: {', '.join('--' + k.replace('_', '-') for k in resumable_settings())}")
    r.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_train)


def _given_settings(args) -> dict:
    return {k: getattr(args, k) for k in train_settings() if getattr(args, k) is not None}


def _resume_clashes(args) -> list[str]:
    """The flags given with --resume that a resumed run takes from its config.json instead."""
    fixed = [k for k in _given_settings(args) if k not in resumable_settings()]
    if args.out is not None:
        fixed.append("out")
    return (["MODEL"] if args.model else []) + model_flags_given(args) + ["--" + k.replace("_", "-") for k in fixed]


def cmd_train(args) -> int:
    from elmanlab.config import TrainConfig
    from elmanlab.hardware import dist_info
    from elmanlab.train import resume_training, run_training
    given = _given_settings(args)
    if args.steps is not None and args.minutes is not None:
        raise ElmanlabError(f"give {'at most' if args.resume else 'exactly'} one budget: --steps N or --minutes M")
    if args.resume:
        clash = _resume_clashes(args)
        if clash:
            raise ElmanlabError(f"--resume takes the model, data and settings from the run's config.json; "
                                f"drop {', '.join(clash)}")
        summary = resume_training(args.resume, **given)
    else:
        if not args.model:
            raise ElmanlabError("name a model to train (e.g. `elmanlab train e1`; see `elmanlab models`) "
                                "or continue a run with --resume DIR")
        if args.params is None and args.dim is None:
            args.params = DEFAULT_PARAMS
        cfg_model = model_config_from_args(args)
        if args.steps is None and args.minutes is None:
            given["steps"] = DEFAULT_STEPS
        out = args.out or f"runs/{cfg_model.model}-{(args.params or f'd{args.dim}').lower()}-" \
                          f"{time.strftime('%Y%m%d-%H%M%S')}"
        summary = run_training(TrainConfig(model=cfg_model, out=out, **given))
    if dist_info()[1] != 0:
        return 0
    if args.json:
        print_json(summary)
    else:
        print_summary(summary)
    if summary.get("status") == "stopped_nonfinite":
        raise ElmanlabError(f"the run stopped at step {summary['steps']} after repeated non-finite losses or "
                            f"gradients; lower --lr or set --grad-clip (recorded in {summary['run_dir']}/summary.json)")
    return 0


def _fmt(x, spec):
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def print_summary(s: dict) -> None:
    from elmanlab.sizing import format_count
    w = sys.stdout.write
    w(f"run          {s.get('run_dir')}  ({s.get('status')})\n")
    w(f"model        {s['model']}  {format_count(s['params'])} params  dim {s['dim']} x depth {s['depth']}"
      f"  on {s['device']}" + (f" x{s['world_size']}" if s.get("world_size", 1) > 1 else "") + "\n")
    w(f"trained      {s['steps']:,} steps, {s['tokens']:,} bytes in {_fmt(s.get('train_s'), '.1f')} s"
      f" (+ {_fmt(s.get('warmup_s'), '.1f')} s warm-up steps), wall {_fmt(s.get('wall_s'), '.1f')} s\n")
    w(f"loss         {_fmt(s.get('loss_last100'), '.4f')} nats/byte (mean of last 100 steps), "
      f"final {_fmt(s.get('final_loss'), '.4f')}\n")
    if s.get("val_bpb") is not None:
        w(f"validation   {s['val_loss']:.4f} nats/byte = {s['val_bpb']:.4f} bits/byte "
          f"over {s['val_bytes']:,} held-out bytes\n")
    if s.get("best_val_loss") is not None and s.get("val_evals", 0) > 1:
        w(f"best         {s['best_val_loss']:.4f} nats/byte = {s['best_val_bpb']:.4f} bits/byte at step "
          f"{s['best_val_step']:,} ({s['val_evals']} evaluations"
          + (f"; weights in {s['run_dir']}/best.safetensors" if s.get("keep_best") else "") + ")\n")
    if s.get("epochs") is not None:
        w(f"data         {s['epochs']:.2f} passes over the {s.get('train_bytes', 0):,} training bytes"
          + (f", dropout {s['dropout']:g}" if s.get("dropout") else "") + "\n")
    mfu = f", MFU {100 * s['mfu']:.1f}%" if s.get("mfu") else ""
    w(f"speed        {_fmt(s.get('tokens_per_s'), ',.0f')} bytes/s{mfu}, peak memory "
      f"{_fmt(s.get('peak_memory_gb'), '.2f')} GB\n")
    k = s.get("kernel") or {}
    if k.get("path"):
        w(f"kernel       {k['path']}" + ("" if k.get("fast") else "  (the plain-PyTorch reference: "
                                              f"{s.get('reference_reason') or 'no fast path'})") + "\n")
    w(f"CUDA graph   {'on' if s.get('cuda_graph') else 'off'}"
      + (f" ({s['cuda_graph_off']})" if not s.get("cuda_graph") and s.get("cuda_graph_off") else "") + "\n")
    if s.get("nonfinite_steps"):
        w(f"non-finite   {s['nonfinite_steps']} steps skipped\n")
