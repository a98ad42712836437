"""Write .data/corpus-slice-16M.txt.zst: 16 MB of the shared training corpus (four 4 MB pieces from
0%, 25%, 50% and 75% of it), small enough to travel to the GPU machine beside the wheelhouse (the
whole corpus is 47 MB compressed). Used by scripts/device-next-session.sh for a 1,500-step run.

    python3 scripts/make-corpus-slice.py [CORPUS.zst]      (default ../shared/data/corpus-train.txt.zst)
"""
import sys
from pathlib import Path

import zstandard

src = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "shared/data/corpus-train.txt.zst")
if not src.exists():
    sys.exit(f"error: {src} not found: give the corpus path as the first argument")
raw = zstandard.ZstdDecompressor().stream_reader(src.open("rb")).read()
n = len(raw)
piece = b"".join(raw[int(n * f): int(n * f) + 4_000_000] for f in (0.0, 0.25, 0.5, 0.75))
out = Path(__file__).resolve().parents[1] / ".data" / "corpus-slice-16M.txt.zst"
out.parent.mkdir(exist_ok=True)
out.write_bytes(zstandard.ZstdCompressor(level=19).compress(piece))
print(f"wrote {out}: {len(piece)} bytes from {src} ({n} bytes)")
