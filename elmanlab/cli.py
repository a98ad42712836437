"""The ``elmanlab`` command line: one entry point, one subcommand per job.

Every user-facing error is one line ``error: ...`` on stderr with exit code 2 (``--debug`` shows
the traceback instead).
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys

from elmanlab.errors import ElmanlabError

# Modules that add subcommands: each has ``register(subparsers)`` which adds its parser(s) and
# sets ``func`` on them. Kept as names so that ``elmanlab --help`` imports torch only once.
COMMAND_MODULES = ["elmanlab.commands", "elmanlab.study_cli", "elmanlab.train_cli", "elmanlab.doctor"]


# ---------------------------------------------------------------- model arguments (shared)

_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def _field_type(f: dataclasses.Field):
    t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    base = t.replace(" | None", "").replace("Optional[", "").rstrip("]")
    return _TYPES.get(base, str)


def model_option_fields() -> dict[str, tuple[dataclasses.Field, dict]]:
    """Union of every family's options: name -> (a field, {family: its default})."""
    from elmanlab.layers import FAMILIES
    out: dict = {}
    for name, fam in FAMILIES.items():
        for f in dataclasses.fields(fam.Options):
            default = f.default if f.default is not dataclasses.MISSING else None
            out.setdefault(f.name, (f, {}))[1][name] = default
    return out


def add_model_arguments(p: argparse.ArgumentParser, with_model: bool = True) -> None:
    """The size and option flags shared by ``size``, ``train`` and friends."""
    if with_model:
        p.add_argument("model", help="model family (see `elmanlab models`)")
    g = p.add_argument_group("size (give --params, or --dim with --depth)")
    g.add_argument("--params", help="target parameter count, e.g. 100M or 1B; solves for dim")
    g.add_argument("--dim", type=int, help="model width (residual stream)")
    g.add_argument("--depth", type=int, help="number of blocks (default: by target size and family)")
    g.add_argument("--mlp-ratio", type=float, default=0.0,
                   help="add a SwiGLU MLP with hidden mlp_ratio * dim to each block (default 0: none)")
    g.add_argument("--tie-embeddings", action="store_true", help="tie the output head to the embedding")
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
        typ = _field_type(f)
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
                        tie_embeddings=args.tie_embeddings)


def print_json(obj) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False))


# ---------------------------------------------------------------- entry point

class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: one line, exit 2
        sys.stderr.write(f"error: {message} (see `{self.prog} --help`)\n")
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="elmanlab", description="Train and benchmark byte-level recurrent language models.")
    p.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for modname in COMMAND_MODULES:
        importlib.import_module(modname).register(sub)
    return p


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        rc = args.func(args)
    except ElmanlabError as e:
        if debug:
            raise
        sys.stderr.write(f"error: {e}\n")
        sys.exit(2)
    except KeyboardInterrupt:
        import signal
        signal.signal(signal.SIGINT, signal.SIG_IGN)    # exiting: a repeated interrupt has nothing left to stop
        sys.stderr.write("error: interrupted\n")
        sys.exit(130)
    sys.exit(rc or 0)
