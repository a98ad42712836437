#!/usr/bin/env bash
# Run a study on the GPU machine in time-limited sessions (each call <= 10 minutes, a machine held
# <= 30 minutes): start it in the background with --stop-after, poll it, collect what finished.
# Completed runs come back in a tarball without weights; unpack it into .study-state/NAME here and
# carry that folder next session: the study resumes, skipping every run whose summary.json exists.
#   usage: scripts/device-study-session.sh start|poll|collect STUDY.yaml OUTDIR
#   env:   STOP_AFTER (minutes after which no new run starts; default 12), JOBS (per GPU; default 4),
#          DATA (default .data/corpus-slice-48M.txt.zst), VAL (default .data/corpus-val.txt.zst)
#   carry: .wheels (first call on a fresh machine), .data, .study-state (when resuming)
set -o pipefail
phase=${1:?start, poll or collect}
study=${2:?STUDY.yaml}
out=$(realpath -m "${3:?OUTDIR}")
name=$(basename "$study" .yaml)
mkdir -p "$out"
source scripts/device-env.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
work=/tmp/elmanlab-study
dir=$work/$name
case $phase in
start)
    device_setup "$out"
    mkdir -p "$work"
    [ -d ".study-state/$name" ] && [ ! -d "$dir" ] && cp -r ".study-state/$name" "$dir"
    setsid nohup python3 -m elmanlab study "$study" --out "$dir" --gpus 0 --jobs-per-gpu "${JOBS:-4}" \
        --stop-after "${STOP_AFTER:-12}" --data "${DATA:-.data/corpus-slice-48M.txt.zst}" \
        --val-data "${VAL:-.data/corpus-val.txt.zst}" > "$work/$name.log" 2>&1 < /dev/null &
    echo $! > "$work/$name.pid"
    sleep 20; tail -n 5 "$work/$name.log"
    ;;
poll)
    for _ in $(seq 1 ${POLL_S:-270}); do kill -0 "$(cat $work/$name.pid)" 2>/dev/null || break; sleep 2; done
    tail -c 3000 "$work/$name.log" | tr '\r' '\n' | tail -n 8
    ;;
collect)
    for _ in $(seq 1 270); do kill -0 "$(cat $work/$name.pid)" 2>/dev/null || break; sleep 2; done
    kill -0 "$(cat $work/$name.pid)" 2>/dev/null && echo "study still running: collect again"
    tail -c 4000 "$work/$name.log" | tr '\r' '\n' | tail -n 12
    cp "$work/$name.log" "$out/"
    tar -C "$work" -czf "$out/$name.tar.gz" --exclude=checkpoints --exclude="*.safetensors" "$name"
    du -sh ~/.triton/cache 2>/dev/null | sed 's/^/triton cache: /'     # could it travel back, to spare the next start its tuning?
    ;;
esac
ls -la "$out"
