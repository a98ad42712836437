#!/usr/bin/env bash
# On this machine, after a device call that collected a study (scripts/device-study-session.sh collect
# or once): put what came back where the next call resumes from, and commit it at once (a session
# whose end is lost keeps its runs).
#   - NAME.tar.gz is unpacked into docs/results/NAME (the study's folder, runs without weights); a run
#     that was in flight when the study stopped (no summary.json) is left out: it is lost, and the
#     next call runs it again from the start; its training lines so far are kept as
#     docs/results/NAME/sessions/DATE-TAG-lost-RUN.metrics.jsonl (evidence, not a result); when the call
#     says the study was left running (device-study-session.sh keep), the run goes on in the lease's next
#     call, so its lines are not kept as a lost run's
#   - NAME.log is kept as docs/results/NAME/sessions/DATE-TAG.log (appended when that file exists; a
#     study continued over a lease's calls (keep) writes one growing log: lines already there are not
#     appended again)
#   - triton-autotune.tar.gz, when it holds any tuning result, becomes studies/state/triton-autotune.tar.gz
#     (the next session's Mamba2 / GDN runs skip Triton's tuning)
#   usage: scripts/land-collect.sh FILES_DIR NAME TAG     e.g. /work/.device/3/o scaling-small h100
set -euo pipefail
src=${1:?FILES_DIR: the folder holding NAME.tar.gz}
name=${2:?NAME: the study name}
tag=${3:?TAG: the GPU, e.g. h100}
dest=docs/results/$name
[ -f "$src/$name.tar.gz" ] || { echo "error: $src/$name.tar.gz not found: give the folder the files came back in" >&2; exit 2; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tar -C "$tmp" -xzf "$src/$name.tar.gz"
[ -f "$tmp/$name/study.json" ] || { echo "error: $name.tar.gz holds no $name/study.json" >&2; exit 2; }
# sessions/ in the pack is the copy the call carried of this repository's own: landing it would undo
# what was landed since that call's tree was sent (the log appended here, earlier lost runs' lines)
rm -rf "$tmp/$name/sessions"
kept_running=0
[ -f "$src/left-running" ] && kept_running=1
python3 - "$tmp/$name" "$(date +%F)-$tag" "$kept_running" <<'EOF'
import json, shutil, sys
from pathlib import Path
d = Path(sys.argv[1])
for rd in sorted(p for p in d.iterdir() if p.is_dir() and p.name not in ("logs", "sessions", "plots")):
    if (rd / "config.json").exists() and not (rd / "summary.json").exists():
        kept, lines = "", rd / "metrics.jsonl"
        if sys.argv[3] == "1":
            shutil.rmtree(rd)
            print(f"left out {rd.name}: in flight, left running for the lease's next call (keep)")
            continue
        if lines.exists() and lines.stat().st_size:
            (d / "sessions").mkdir(exist_ok=True)
            lost = d / "sessions" / f"{sys.argv[2]}-lost-{rd.name}.metrics.jsonl"
            shutil.copy(lines, lost)
            kept = f"; its training lines so far: sessions/{lost.name}"
        shutil.rmtree(rd)
        print(f"left out {rd.name}: in flight when the study stopped (no summary.json){kept}")
state = json.loads((d / "study.json").read_text())
for j in state["jobs"]:
    # the record of a run stopped in flight says "running": it is not, and the next call runs it again
    if j.get("status") == "running" and not (d / j["id"] / "summary.json").exists():
        j["status"], j["error"] = "interrupted", "in flight when the call's deadline stopped the study: lost, runs again"
(d / "study.json").write_text(json.dumps(state, indent=2) + "\n")
done = [j["id"] for j in state["jobs"] if j.get("status") == "completed"]
print(f"{len(done)} runs completed in the study's record")
(d / ".study.lock").unlink(missing_ok=True)      # a study stopped at a deadline leaves its lock
EOF
mkdir -p "$dest"
cp -r "$tmp/$name/." "$dest/"
if [ -f "$src/$name.log" ]; then
    mkdir -p "$dest/sessions"
    log="$dest/sessions/$(date +%F)-$tag.log"; touch "$log"
    tr '\r' '\n' < "$src/$name.log" | grep -v '^ *$' | grep -v '%|' | awk 'FILENAME == ARGV[1] { seen[$0]; next } !($0 in seen)' "$log" - >> "$log" || true
fi
paths=("$dest")
if [ -f "$src/triton-autotune.tar.gz" ] && [ "$(tar -tzf "$src/triton-autotune.tar.gz" | grep -c autotune.json)" -gt 0 ]; then
    mkdir -p studies/state
    cp "$src/triton-autotune.tar.gz" studies/state/triton-autotune.tar.gz
    paths+=(studies/state/triton-autotune.tar.gz)
fi
git add "${paths[@]}"
git commit -qm "$name: the runs collected on $(date +%F) ($tag)" && git log --oneline -1
