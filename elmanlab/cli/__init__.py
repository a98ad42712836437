"""The ``elmanlab`` command line: one entry point, one module per subcommand.

This package is the only place that knows argparse; nothing in the library imports it. Every
user-facing error is one line ``error: ...`` on stderr with exit code 2 (``--debug`` shows the
traceback instead).
"""
from __future__ import annotations

import argparse
import sys

from elmanlab.cli import doctor, evaluate, generate, models, report, study, train
from elmanlab.cli.common import Parser
from elmanlab.errors import ElmanlabError

# each module's ``register(subparsers)`` adds its parser(s) and sets ``func`` on them
SUBCOMMANDS = (models, train, evaluate, generate, study, report, doctor)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="elmanlab", description="Train and benchmark byte-level recurrent language models.")
    p.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for module in SUBCOMMANDS:
        module.register(sub)
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
    except BrokenPipeError:                 # the reader went away (`elmanlab size ... | head`): not an error
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except KeyboardInterrupt:
        import signal
        signal.signal(signal.SIGINT, signal.SIG_IGN)    # exiting: a repeated interrupt has nothing left to stop
        sys.stderr.write("error: interrupted\n")
        sys.exit(130)
    sys.exit(rc or 0)
