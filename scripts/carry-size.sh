#!/usr/bin/env bash
# What a device call carries, against its 64 MiB: the working tree that travels (tracked files and
# untracked ones git does not ignore) plus the carried paths. Run it before a call whose carry is new.
#
#   usage: scripts/carry-size.sh [CARRIED_PATH ...]
#   e.g.   scripts/carry-size.sh .wheels .data/corpus-slice-32M.txt.zst .data/corpus-val.txt.zst
# Prints each part in bytes and the margin; exits 1 when the whole is over 64 MiB.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
limit=$(( 64 * 1024 * 1024 ))
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s -- 2>/dev/null | awk '{s += $1} END {print s + 0}')
total=$tree
printf '%12d  the tree (tracked and untracked-not-ignored files)\n' "$tree"
for p in "$@"; do
    [ -e "$p" ] || { echo "error: $p does not exist: build it first (scripts/build-wheelhouse.sh, scripts/make-corpus-slice.py)" >&2; exit 2; }
    n=$(find "$p" -type f -print0 | xargs -0 -r stat -c %s -- | awk '{s += $1} END {print s + 0}')
    printf '%12d  %s\n' "$n" "$p"
    total=$(( total + n ))
done
printf '%12d  in all, of %d (64 MiB): %s %d bytes\n' "$total" "$limit" "$([ "$total" -le "$limit" ] && echo margin || echo OVER by)" \
    "$(( total <= limit ? limit - total : total - limit ))"
[ "$total" -le "$limit" ]
