"""Files written whole or not at all (temp file, fsync, rename), with ordinary permissions.

Torch-free, so the study runner and the report can use it without importing PyTorch."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

_UMASK = os.umask(0o022)       # read once: os.umask can only be read by setting it
os.umask(_UMASK)


def make_public(path, directory: bool = False) -> None:
    """mkstemp/mkdtemp make 0600/0700 entries; give results the usual permissions (minus the umask)."""
    with contextlib.suppress(OSError):
        os.chmod(path, (0o777 if directory else 0o666) & ~_UMASK)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    make_public(tmp)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")
