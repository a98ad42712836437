"""``elmanlab ARGS`` run in the test's own process: the same entry point as ``python3 -m elmanlab``
(``elmanlab.cli.main``), without 1.5-2 s of interpreter start-up and imports a call. For the CLI's
error paths and quick commands; tests of the real process (signals, exit on import errors, the
installed entry point) keep a subprocess."""
from __future__ import annotations

import contextlib
import io
import subprocess


def run_main(*args) -> subprocess.CompletedProcess:
    """Exit code, stdout and stderr of ``elmanlab ARGS``, as ``subprocess.run(..., text=True)`` gives them."""
    from elmanlab.cli import main
    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())
