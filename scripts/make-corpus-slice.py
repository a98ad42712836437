"""Write a slice of the shared training corpus that travels to the GPU machine beside the wheelhouse
(a call carries at most 64 MiB; the corpus is 47 MB compressed, the wheelhouse 44 MB): N pieces of
M megabytes taken at evenly spaced offsets (0, 1/N, 2/N, ... of the corpus), so that every part of
the mixed corpus is in it, recompressed with zstd.

    python3 scripts/make-corpus-slice.py                        # .data/corpus-slice-16M.txt.zst (4 x 4 MB)
    python3 scripts/make-corpus-slice.py --pieces 8             # .data/corpus-slice-32M.txt.zst (8 x 4 MB, 7.8 MB compressed)
    python3 scripts/make-corpus-slice.py --corpus PATH.zst      (default ../shared/data/corpus-train.txt.zst)

The validation split (corpus-val.txt.zst, 0.4 MB) is copied beside it whole. The 16 MB slice serves
single 1,500-step runs (12.3M bytes each); the 32 MB one the studies (runs of up to 16.4M bytes, about
half a pass). A 48 MB slice (12 MB compressed) no longer fits beside the wheelhouse and the tree;
check a call's load with scripts/carry-size.sh before it.
"""
import argparse
import sys
from pathlib import Path

import zstandard

ROOT = Path(__file__).resolve().parents[1]

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--corpus", default=str(ROOT.parent / "shared" / "data" / "corpus-train.txt.zst"))
ap.add_argument("--pieces", type=int, default=4, help="how many pieces (default 4)")
ap.add_argument("--piece-mb", type=int, default=4, help="megabytes per piece (default 4)")
args = ap.parse_args()
src = Path(args.corpus)
if not src.exists():
    sys.exit(f"error: {src} not found: give the corpus with --corpus PATH")
if args.pieces < 1 or args.piece_mb < 1:
    sys.exit("error: --pieces and --piece-mb must be at least 1")
raw = zstandard.ZstdDecompressor().stream_reader(src.open("rb")).read()
n, size = len(raw), args.piece_mb * 1_000_000
if args.pieces * size > n:
    sys.exit(f"error: {args.pieces} x {args.piece_mb} MB is more than the corpus ({n} bytes)")
piece = b"".join(raw[int(n * k / args.pieces): int(n * k / args.pieces) + size] for k in range(args.pieces))
out = ROOT / ".data" / f"corpus-slice-{args.pieces * args.piece_mb}M.txt.zst"
out.parent.mkdir(exist_ok=True)
# level 22 with a 128 MiB window (the largest a zstd decoder accepts by default): 7.8 MB for the 32 MB
# slice against 8.0 at level 19, what lets it travel beside the whole wheelhouse (scripts/carry-size.sh)
params = zstandard.ZstdCompressionParameters.from_level(22, window_log=27)
out.write_bytes(zstandard.ZstdCompressor(compression_params=params).compress(piece))
print(f"wrote {out}: {len(piece)} bytes from {src} ({n} bytes), {out.stat().st_size} bytes compressed")
val = src.with_name("corpus-val.txt.zst")
if val.exists() and not (out.parent / val.name).exists():
    (out.parent / val.name).write_bytes(val.read_bytes())
    print(f"copied {val} to {out.parent / val.name}")
