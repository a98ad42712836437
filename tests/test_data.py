"""Byte streams, the seeded sampler, the split and the .zst cache."""
import hashlib
import os

import numpy as np
import pytest
import zstandard

from elmanlab.data import (BatchSampler, decompressed_path, embedded_corpus_path, fingerprint_start,
                           fingerprint_update, make_split, open_bytes, val_tail_bytes)
from elmanlab.errors import ElmanlabError


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ELMANLAB_CACHE", str(tmp_path / "cache"))


def _text(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(32, 127, size=n, dtype=np.uint8).tobytes()


def test_offsets_are_a_function_of_seed_and_step():
    a = BatchSampler(100_000, 64, 8, seed=42)
    b = BatchSampler(100_000, 64, 8, seed=42)
    c = BatchSampler(100_000, 64, 8, seed=43)
    for step in (0, 1, 7, 123456):
        assert np.array_equal(a.offsets(step), b.offsets(step))
        assert not np.array_equal(a.offsets(step), c.offsets(step))
    assert not np.array_equal(a.offsets(0), a.offsets(1))
    # out of order access gives the same values: the stream needs no state to resume
    later = a.offsets(500)
    a.offsets(3)
    assert np.array_equal(later, a.offsets(500))


def test_offsets_cover_the_range_and_stay_inside():
    s = BatchSampler(1000, 10, 64, seed=1)
    offs = np.concatenate([s.offsets(k) for k in range(200)])
    assert offs.min() >= 0 and offs.max() <= 1000 - 11
    # roughly uniform: every decile of the range gets a fair share
    hist, _ = np.histogram(offs, bins=10, range=(0, 990))
    assert hist.min() > 0.7 * len(offs) / 10
    # the last valid offset is reachable
    assert offs.max() >= 985


def test_windows_match_the_file_bytes(tmp_path):
    raw = _text(5000)
    p = tmp_path / "t.txt"
    p.write_bytes(raw)
    mm = open_bytes(p)
    s = BatchSampler(len(mm), 32, 4, seed=7)
    win, offs = s.batch(mm, 3)
    assert win.shape == (4, 33) and win.dtype == np.uint8
    for row, o in zip(win, offs):
        assert row.tobytes() == raw[o:o + 33]
    half, offs2 = s.batch(mm, 3, rows=slice(2, 4))
    assert np.array_equal(offs, offs2) and np.array_equal(half, win[2:])


def test_fingerprint_chains_over_offsets():
    s = BatchSampler(10_000, 16, 4, seed=42)
    fp = fp2 = fingerprint_start(10_000, 16)
    for k in range(5):
        fp = fingerprint_update(fp, s.offsets(k))
        fp2 = fingerprint_update(fp2, s.offsets(k))
    assert fp == fp2
    other = fingerprint_start(10_000, 16)
    for k in (0, 1, 2, 4, 3):
        other = fingerprint_update(other, s.offsets(k))
    assert other != fp
    assert fingerprint_start(10_000, 16) != fingerprint_start(10_001, 16)


def test_held_out_tail_is_never_sampled(tmp_path):
    p = tmp_path / "t.txt"
    p.write_bytes(_text(20_000))
    sp = make_split(str(p), None, 64)
    tail = val_tail_bytes(20_000)
    assert tail == 2000 and sp.train_bytes == 18_000 and sp.val_bytes == 2000
    s = BatchSampler(sp.train_bytes, 64, 16, seed=0)
    ends = np.concatenate([s.offsets(k) for k in range(300)]) + 65
    assert ends.max() <= sp.train_bytes
    assert np.asarray(sp.val).tobytes() == p.read_bytes()[-2000:]


def test_separate_validation_file(tmp_path):
    tr, va = tmp_path / "train.txt", tmp_path / "val.txt"
    tr.write_bytes(_text(3000, 1))
    va.write_bytes(_text(500, 2))
    sp = make_split(str(tr), str(va), 64)
    assert sp.train_bytes == 3000 and np.asarray(sp.val).tobytes() == va.read_bytes()


def test_zst_is_decompressed_once_and_reused(tmp_path, capsys):
    raw = _text(300_000)
    z = tmp_path / "c.txt.zst"
    z.write_bytes(zstandard.ZstdCompressor(level=3).compress(raw))
    p1 = decompressed_path(z, progress=False)
    assert p1.read_bytes() == raw and p1.parent == tmp_path / "cache"
    mtime = p1.stat().st_mtime_ns
    p2 = decompressed_path(z, progress=False)
    assert p2 == p1 and p2.stat().st_mtime_ns == mtime
    assert not [f for f in os.listdir(p1.parent) if f.endswith(".tmp")]
    assert np.asarray(open_bytes(z)).tobytes() == raw


def test_embedded_corpus_is_shakespeare():
    p = embedded_corpus_path()
    assert p.name.endswith(".zst") and p.stat().st_size < 3_000_000
    mm = open_bytes(p, progress=False)
    assert len(mm) == 5_053_163
    assert hashlib.sha256(np.asarray(mm).tobytes()).hexdigest() == \
        "f9a9c3bba5a0c7cbcd26b1cab32c7ff101e0a13133ab8db6a7cd3b07f436e253"


@pytest.mark.parametrize("content,msg", [
    (None, "does not exist"),
    (b"", "is empty"),
    (b"x" * 100, "too short"),
])
def test_bad_data_files(tmp_path, content, msg):
    p = tmp_path / "d.txt"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(ElmanlabError, match=msg):
        make_split(str(p), None, 64)


def test_sequence_longer_than_data(tmp_path):
    tr, va = tmp_path / "train.txt", tmp_path / "val.txt"
    tr.write_bytes(_text(100))
    va.write_bytes(_text(1000))
    with pytest.raises(ElmanlabError, match="fewer than one window"):
        make_split(str(tr), str(va), 512)
    with pytest.raises(ElmanlabError, match="validation file"):
        make_split(str(va), str(tr), 512)


def test_corrupt_zst(tmp_path):
    z = tmp_path / "bad.txt.zst"
    z.write_bytes(b"this is not zstd at all" * 10)
    with pytest.raises(ElmanlabError, match="cannot decompress"):
        decompressed_path(z, progress=False)
    assert not [f for f in os.listdir(tmp_path / "cache") if not f.startswith(".") or f.endswith(".tmp")]
