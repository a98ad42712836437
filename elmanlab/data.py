"""Byte streams from files, the seeded batch sampler, and the train/validation split.

* Any file of bytes is memory-mapped (``np.memmap``), never read whole. A ``.zst`` file is
  decompressed once, with a progress bar, into the cache folder (``$ELMANLAB_CACHE``, else
  ``$XDG_CACHE_HOME/elmanlab``, else ``~/.cache/elmanlab``) and the cached copy is reused while the
  source file keeps its size and modification time.
* Batches are windows of ``seq_len + 1`` bytes at offsets that are a pure function of
  ``(seed, step, row)`` (a splitmix64 counter hash, independent of numpy's or torch's generators):
  every model trained with the same seed, batch size and data sees bit-identical batches, and a run
  resumed at step k continues the same stream.
* Validation is a separate file (``--val-data``) or, when absent, a held-out tail of the training
  file: the last 10% of its bytes, at most 8 MiB (``val_tail_bytes``). Training windows never
  reach into the tail.
* ``data_fingerprint`` is a hash chained over every offset consumed (and the training length and
  window), so two runs consumed the same stream exactly when their fingerprints are equal.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from elmanlab.errors import ElmanlabError
from elmanlab.fsutil import make_public

EMBEDDED_CORPUS = "shakespeare.txt.zst"
MAX_VAL_TAIL = 8 << 20          # the held-out tail is 10% of the file, at most 8 MiB
VAL_TAIL_FRACTION = 0.10


# ---------------------------------------------------------------- files

def embedded_corpus_path() -> Path:
    """The default corpus shipped inside the package (complete works of Shakespeare, zstd)."""
    from importlib.resources import files
    p = Path(str(files("elmanlab") / "corpus" / EMBEDDED_CORPUS))
    if not p.is_file():
        raise ElmanlabError(f"the embedded corpus {p} is missing from this installation; "
                            f"reinstall elmanlab or pass --data PATH")
    return p


def cache_dir() -> Path:
    env = os.environ.get("ELMANLAB_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "elmanlab"


def _check_file(path: Path, what: str) -> None:
    if not path.exists():
        raise ElmanlabError(f"{what} {path} does not exist; give the path of a text file")
    if path.is_dir():
        raise ElmanlabError(f"{what} {path} is a folder; give the path of a text file")
    if not os.access(path, os.R_OK):
        raise ElmanlabError(f"{what} {path} is not readable; check its permissions")
    if path.stat().st_size == 0:
        raise ElmanlabError(f"{what} {path} is empty; give a file with text in it")


@contextlib.contextmanager
def _file_lock(lock_path: Path):
    """An exclusive lock so that parallel runs decompress a file once (best effort off Linux)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def decompressed_path(path: str | os.PathLike, progress: bool = True) -> Path:
    """The plain-bytes file for ``path``: itself, or for ``.zst`` its cached decompressed copy."""
    path = Path(path).expanduser()
    _check_file(path, "data file")
    if path.suffix != ".zst":
        return path
    import zstandard
    st = path.stat()
    key = hashlib.blake2b(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode(), digest_size=8).hexdigest()
    cdir = cache_dir()
    try:
        cdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ElmanlabError(f"cannot create the cache folder {cdir} ({e.strerror}); "
                            f"set ELMANLAB_CACHE to a writable folder") from None
    stem = path.name[:-4]
    target = cdir / f"{Path(stem).stem}-{key}{Path(stem).suffix or '.bin'}"
    if target.is_file():
        return target
    with _file_lock(cdir / f".{target.name}.lock"):
        if target.is_file():
            return target
        from tqdm import tqdm
        fd, tmp = tempfile.mkstemp(dir=cdir, prefix=f".{target.name}.", suffix=".tmp")
        make_public(tmp)
        try:
            with open(path, "rb") as src, os.fdopen(fd, "wb") as dst:
                try:
                    total = zstandard.frame_content_size(src.read(18))
                except zstandard.ZstdError:
                    total = -1
                src.seek(0)
                bar = tqdm(total=total if total and total > 0 else None, unit="B", unit_scale=True,
                           desc=f"decompressing {path.name}", disable=not progress, leave=False)
                reader = zstandard.ZstdDecompressor().stream_reader(src, read_across_frames=True)
                while True:
                    chunk = reader.read(1 << 22)
                    if not chunk:
                        break
                    dst.write(chunk)
                    bar.update(len(chunk))
                bar.close()
            if os.path.getsize(tmp) == 0:
                raise ElmanlabError(f"data file {path} decompresses to nothing; give a file with text in it")
            os.replace(tmp, target)
        except zstandard.ZstdError as e:
            raise ElmanlabError(f"cannot decompress {path}: {e}; is it a zstd file?") from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return target


def open_bytes(path: str | os.PathLike, progress: bool = True) -> np.memmap:
    """A read-only uint8 memory map of the file's (decompressed) bytes."""
    real = decompressed_path(path, progress)
    if real.stat().st_size == 0:
        raise ElmanlabError(f"data file {path} is empty; give a file with text in it")
    return np.memmap(real, dtype=np.uint8, mode="r")


# ---------------------------------------------------------------- split

def val_tail_bytes(n: int) -> int:
    """Bytes held out at the end of a training file that has no separate validation file."""
    return min(int(n * VAL_TAIL_FRACTION), MAX_VAL_TAIL)


@dataclass
class DataSplit:
    train: np.ndarray            # the bytes training samples from (a memmap view)
    val: np.ndarray              # validation bytes (a memmap view)
    data_path: str               # the file given (or the embedded corpus)
    val_path: str | None         # the separate validation file, None when the tail is held out
    train_bytes: int
    val_bytes: int

    def describe(self) -> dict:
        return {"data": self.data_path, "val_data": self.val_path, "train_bytes": self.train_bytes,
                "val_bytes": self.val_bytes,
                "val_source": "file" if self.val_path else "held-out tail of the training file"}


def resolve_data_path(data: str | None) -> str:
    return str(embedded_corpus_path()) if data is None else str(Path(data).expanduser())


def make_split(data: str | None, val_data: str | None, seq_len: int, progress: bool = True) -> DataSplit:
    """Open the training (and validation) bytes and check they are long enough for ``seq_len``."""
    if seq_len < 1:
        raise ElmanlabError(f"--seq-len must be >= 1, got {seq_len}")
    data_path = resolve_data_path(data)
    mm = open_bytes(data_path, progress)
    n = len(mm)
    need = seq_len + 1
    if val_data is not None:
        val = open_bytes(val_data, progress)
        train = mm
        if len(val) < need:
            raise ElmanlabError(f"validation file {val_data} has {len(val):,} bytes, fewer than one window of "
                                f"--seq-len {seq_len} + 1; give a longer file or a shorter --seq-len")
        val_path = str(Path(val_data).expanduser())
    else:
        tail = val_tail_bytes(n)
        if tail < need:
            raise ElmanlabError(
                f"data file {data_path} has {n:,} bytes: too short to hold out a validation tail of "
                f"{need:,} bytes (--seq-len {seq_len} + 1) and still train; give a file of at least "
                f"{10 * need:,} bytes, a shorter --seq-len, or --val-data PATH")
        train, val = mm[: n - tail], mm[n - tail:]
        val_path = None
    if len(train) < need:
        raise ElmanlabError(f"data file {data_path} has {len(train):,} training bytes, fewer than one window of "
                            f"--seq-len {seq_len} + 1; give a longer file or a shorter --seq-len")
    return DataSplit(train, val, data_path, val_path, len(train), len(val))


def validation_bytes(data: str | None, val_data: str | None, progress: bool = True) -> np.ndarray:
    """The validation bytes a run used: the separate file, or the held-out tail."""
    if val_data is not None:
        return open_bytes(val_data, progress)
    mm = open_bytes(resolve_data_path(data), progress)
    return mm[len(mm) - val_tail_bytes(len(mm)):]


# ---------------------------------------------------------------- sampler

_MASK = (1 << 64) - 1


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


class BatchSampler:
    """Offsets of the global batch at each step: a pure function of (seed, step, row)."""

    def __init__(self, n_bytes: int, seq_len: int, batch_size: int, seed: int):
        if batch_size < 1:
            raise ElmanlabError(f"--batch-size must be >= 1, got {batch_size}")
        if n_bytes < seq_len + 1:
            raise ElmanlabError(f"{n_bytes:,} training bytes are fewer than one window of --seq-len {seq_len} + 1")
        self.n_bytes, self.seq_len, self.batch_size, self.seed = n_bytes, seq_len, batch_size, seed
        self.n_offsets = n_bytes - seq_len            # valid starts: 0 .. n - (seq_len + 1)
        self._key = _splitmix64(np.array([seed & _MASK], dtype=np.uint64))[0]

    def offsets(self, step: int) -> np.ndarray:
        ctr = np.uint64(step) * np.uint64(self.batch_size) + np.arange(self.batch_size, dtype=np.uint64)
        with np.errstate(over="ignore"):
            h = _splitmix64(_splitmix64(ctr ^ self._key) + self._key)
        return (h % np.uint64(self.n_offsets)).astype(np.int64)

    def windows(self, data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """[len(offsets), seq_len + 1] uint8 windows (only the needed pages are read)."""
        idx = offsets[:, None] + np.arange(self.seq_len + 1, dtype=np.int64)[None, :]
        return np.asarray(data[idx], dtype=np.uint8)

    def batch(self, data: np.ndarray, step: int, rows: slice | None = None):
        """(windows, offsets of the whole global batch); ``rows`` picks this rank's share."""
        off = self.offsets(step)
        mine = off if rows is None else off[rows]
        return self.windows(data, mine), off


def fingerprint_start(train_bytes: int, seq_len: int) -> str:
    return hashlib.blake2b(f"elmanlab-stream-v1|{train_bytes}|{seq_len}".encode(), digest_size=16).hexdigest()


def fingerprint_update(prev: str, offsets: np.ndarray) -> str:
    """Chain the hash over one step's offsets (little-endian int64)."""
    h = hashlib.blake2b(bytes.fromhex(prev), digest_size=16)
    h.update(np.ascontiguousarray(offsets, dtype="<i8").tobytes())
    return h.hexdigest()
