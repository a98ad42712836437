"""Pieces several subcommands share: the parser class, the model size and option flags, output."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from elmanlab.config import NORMS, field_type


class Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: one line, exit 2
        sys.stderr.write(f"error: {message} (see `{self.prog} --help`)\n")
        sys.exit(2)


def model_option_fields() -> dict[str, tuple[dataclasses.Field, dict]]:
    """Union of every family's options: name -> (a field, {family: its default})."""
    from elmanlab.layers import FAMILIES
    out: dict = {}
    for name, fam in FAMILIES.items():
        for f in dataclasses.fields(fam.Options):
            default = f.default if f.default is not dataclasses.MISSING else None
            out.setdefault(f.name, (f, {}))[1][name] = default
    return out


SIZE_FLAGS = ("params", "dim", "depth", "mlp_ratio", "tie_embeddings", "norm")


def add_model_arguments(p: argparse.ArgumentParser, with_model: bool = True) -> None:
    """The size and option flags shared by ``size``, ``train`` and friends."""
    if with_model:
        p.add_argument("model", help="model family (see `elmanlab models`)")
    g = p.add_argument_group("size (give --params, or --dim with --depth)")
    g.add_argument("--params", help="target parameter count, e.g. 100M or 1B; solves for dim")
    g.add_argument("--dim", type=int, help="model width (residual stream)")
    g.add_argument("--depth", type=int, help="number of blocks (default: by target size and family)")
    g.add_argument("--mlp-ratio", type=float, default=None,
                   help="a SwiGLU MLP with hidden mlp_ratio * dim in each block; 0: none (default: the "
                        "family's: 8/3 for transformer, none for the others)")
    g.add_argument("--tie-embeddings", action="store_true", help="tie the output head to the embedding")
    g.add_argument("--norm", choices=NORMS, default=None,
                   help="the wrapper's norms: rms (RMSNorm, default) or layer (LayerNorm with bias, as "
                        "ekg/elman's 400M runs)")
    o = p.add_argument_group("family options (only those of the chosen family are accepted)")
    for name, (f, defaults) in model_option_fields().items():
        flag = "--" + name.replace("_", "-")

        def shown(v):
            return "derived from the width" if v is None else str(v)
        if len(set(map(shown, defaults.values()))) == 1:
            where = f"{', '.join(defaults)}; default {shown(next(iter(defaults.values())))}"
        else:
            where = "defaults: " + ", ".join(f"{fam} {shown(v)}" for fam, v in defaults.items())
        choices = f.metadata.get("choices")
        extra = " (one of " + ", ".join(choices) + ")" if choices else ""
        helptext = f"{f.metadata.get('help', name)}{extra} [{where}]"
        typ = field_type(f)
        if typ is bool:
            o.add_argument(flag, dest=f"opt_{name}", action=argparse.BooleanOptionalAction, default=None,
                           help=helptext)
        else:
            o.add_argument(flag, dest=f"opt_{name}", type=typ, default=None, metavar=name.upper(),
                           choices=f.metadata.get("choices"), help=helptext)


def model_options_from_args(args) -> dict:
    return {k[4:]: v for k, v in vars(args).items() if k.startswith("opt_") and v is not None}


def model_config_from_args(args, model: str | None = None):
    from elmanlab.sizing import model_config
    return model_config(model or args.model, params=args.params, dim=args.dim, depth=args.depth,
                        options=model_options_from_args(args), mlp_ratio=args.mlp_ratio,
                        tie_embeddings=args.tie_embeddings, norm=args.norm or "rms")


def model_flags_given(args) -> list[str]:
    """The size and family-option flags given on the command line, as ``--flag``."""
    given = [k for k in ("params", "dim", "depth") if getattr(args, k) is not None]
    given += [k for k in ("mlp_ratio", "norm") if getattr(args, k) is not None]
    given += [k for k in ("tie_embeddings",) if getattr(args, k)]
    given += list(model_options_from_args(args))
    return ["--" + g.replace("_", "-") for g in given]


def print_json(obj) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False))


def text_table(rows: list[dict], cols: list[str]) -> str:
    """A plain-text table of ``rows`` (dicts) in the columns ``cols``; None prints as -."""
    cells = [[("-" if r.get(c) is None else str(r.get(c))) for c in cols] for r in rows]
    widths = [max([len(c)] + [len(x[i]) for x in cells]) for i, c in enumerate(cols)]
    line = lambda xs: "  ".join(x.ljust(w) for x, w in zip(xs, widths)).rstrip()  # noqa: E731
    return "\n".join([line(cols)] + [line(x) for x in cells])
