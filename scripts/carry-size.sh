#!/usr/bin/env bash
# What a device call carries, against its 64 MiB: the working tree that travels (tracked files and
# untracked ones git does not ignore) plus the carried paths. Run it before a call whose carry is new.
#
#   usage: scripts/carry-size.sh [CARRIED_PATH ...]
#   e.g.   scripts/carry-size.sh .wheels .data/corpus-slice-32M.txt.zst .data/corpus-val.txt.zst
# Prints each part in bytes and the margin; exits 1 when the whole is over 64 MiB. Each file and folder
# is counted as a tar archive holds it (a 512-byte header, the file padded to 512 bytes): on 2026-12-07
# the device refused a tree whose plain bytes were 0.37 MB under the limit, and took one 0.67 MB under
# it, so its measure adds some 0.4-0.6 MB for ~750 files and ~140 folders; this count adds ~0.64 MB.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
limit=$(( 64 * 1024 * 1024 ))
# bytes as a tar archive holds them: files padded to 512 plus a 512-byte header each, 512 a folder
tarsize='{s += $1 + (512 - $1 % 512) % 512 + 512} END {print s + 0}'
mapfile -d '' files < <(git ls-files -z --cached --others --exclude-standard)   # the tree, listed once
# the files' sizes, then a 0 for the top folder and for each folder below it that holds a file
tree=$( { printf '%s\0' "${files[@]}" | xargs -0 -r stat -c '%s' -- 2>/dev/null; echo 0
          printf '%s\n' "${files[@]}" | sed -n 's|/[^/]*$||p' | sort -u | sed 's/.*/0/'; } | awk "$tarsize")
total=$tree
printf '%12d  the tree (tracked and untracked-not-ignored files and their folders, as tar holds them)\n' "$tree"
for p in "$@"; do
    [ -e "$p" ] || { echo "error: $p does not exist: build it first (scripts/build-wheelhouse.sh, scripts/make-corpus-slice.py)" >&2; exit 2; }
    n=$( { find "$p" -type d -printf '0\n'; find "$p" -type f -printf '%s\n'; } | awk "$tarsize")
    printf '%12d  %s\n' "$n" "$p"
    total=$(( total + n ))
done
printf '%12d  in all, of %d (64 MiB): %s %d bytes\n' "$total" "$limit" "$([ "$total" -le "$limit" ] && echo margin || echo OVER by)" \
    "$(( total <= limit ? limit - total : total - limit ))"
[ "$total" -le "$limit" ]
