"""`elmanlab models` (the families, their options and defaults) and `elmanlab size` (sizing a configuration)."""
from __future__ import annotations

import dataclasses

from elmanlab.cli.common import add_model_arguments, model_config_from_args, print_json


def register(sub) -> None:
    p = sub.add_parser("models", help="list the model families with their options and defaults",
                       description="List the model families with their options and defaults.")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("size", help="parameter count, width and state size of a configuration",
                       description="Size a model: give --params (the width is solved for, at a given "
                                   "or default depth) or --dim with --depth.")
    add_model_arguments(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_size)


def cmd_models(args) -> int:
    from elmanlab.layers import FAMILIES
    from elmanlab.sizing import default_depth
    rows = []
    for name, fam in FAMILIES.items():
        opts = [{"name": f.name, "default": f.default, "help": f.metadata.get("help", ""),
                 **({"choices": list(f.metadata["choices"])} if "choices" in f.metadata else {})}
                for f in dataclasses.fields(fam.Options)]
        rows.append({"model": name, "description": fam.description, "options": opts,
                     "default_depth_100M": default_depth(name, 100_000_000),
                     "default_depth_400M": default_depth(name, 400_000_000),
                     "default_mlp_ratio": float(fam.default_mlp_ratio), "state_grows": fam.state_grows})
    if args.json:
        print_json(rows)
        return 0
    for r in rows:
        print(f"{r['model']:<8} {r['description']}")
        print(f"{'':<8} default depth: {r['default_depth_100M']} at 100M, {r['default_depth_400M']} at 400M")
        mlp = r["default_mlp_ratio"]
        print(f"{'':<8} MLP: " + (f"SwiGLU, hidden {mlp:.4g} x dim by default (--mlp-ratio 0: none)" if mlp else
                                  "none by default (--mlp-ratio R adds a SwiGLU MLP)"))
        print(f"{'':<8} state: " + ("a KV cache that grows with the context (keys and values of every byte "
                                    "so far, per layer)" if r["state_grows"] else
                                    "fixed size per sequence, whatever the context length"))
        for o in r["options"]:
            flag = "--" + o["name"].replace("_", "-")
            extra = f" (one of {', '.join(o['choices'])})" if "choices" in o else ""
            print(f"{'':<8}   {flag:<20} default {str(o['default']):<8} {o['help']}{extra}")
        print()
    return 0


def cmd_size(args) -> int:
    from elmanlab.lm import mlp_hidden
    from elmanlab.sizing import format_count, parse_count, report
    cfg = model_config_from_args(args)
    rep = report(cfg, None if args.params is None else parse_count(args.params))
    if args.json:
        print_json(rep.to_dict())
        return 0
    print(f"model              {rep.model}")
    print(f"params             {rep.params:,} ({format_count(rep.params)})"
          + ("" if rep.target is None else f"   target {format_count(rep.target)}, {rep.error_pct:+.2f}%"))
    print(f"non-embedding      {rep.non_embedding_params:,}")
    print(f"dim x depth        {rep.dim} x {rep.depth}")
    if rep.d_inner is not None:
        print(f"d_inner            {rep.d_inner}")
    if rep.n_heads is not None:
        print(f"heads              {rep.n_heads}")
    if rep.mlp_ratio:
        print(f"MLP                SwiGLU, hidden {mlp_hidden(cfg)} ({rep.mlp_ratio:.4g} x dim)")
    print(f"state per layer    {rep.state_text()}"
          + (f" (+ {rep.conv_state_per_layer:,} conv buffer)" if rep.conv_state_per_layer else ""))
    print(f"state, all layers  {rep.state_text(total=True)}")
    opts = ", ".join(f"{k}={v}" for k, v in rep.options.items())
    print(f"options            {opts or '-'}")
    return 0
