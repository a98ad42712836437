#!/usr/bin/env bash
# Run a study on the GPU machine in time-limited sessions (each call <= 10 minutes, a machine held
# <= 30 minutes): start it in the background with --stop-after, poll it, collect what finished.
# Completed runs come back in a tarball without weights; unpack it into .study-state/NAME here and
# carry that folder next session, or commit it as docs/results/NAME (which travels with the tree): the
# study resumes from either, skipping every run whose summary.json exists.
#   usage: scripts/device-study-session.sh start|poll|collect|once|keep STUDY.yaml OUTDIR
#   once:  all in one call (a lent machine can be taken back between calls, and with it the runs in
#          flight): start, re-pack the finished runs into OUTDIR every 20 s (what is under $OUT comes back
#          even when the call runs out of time), collect when the study ends or DEADLINE_S seconds
#          (default 500) after the call began (CALL_T0, a Unix time, default now), then stop the study
#          (a run still in flight then is lost: set FINISH_BY to end the runs before DEADLINE_S)
#   keep:  once, but the study is left running at the deadline: the next call on the warm machine (it stays
#          warm ~30 s) continues it (no second start; the runs in flight go on between calls), and what
#          each call packs has the runs finished so far (land each with land-collect.sh: it leaves out the
#          run in flight). A fresh machine starts the study again from docs/results/NAME. FINISH_IN sets
#          finish-at (below) for the runs started after it: the lease's seconds left, less a margin, so
#          that no run is still in flight when the lease ends. The last call of a lease: WAIT_END=1 (wait
#          for the study to end by DEADLINE_S, then stop it)
#   env:   STOP_AFTER (minutes after which no new run starts; default 12), FINISH_BY (minutes: start only
#          runs expected to end by then, from the finished runs of their model, e.g. 26 in a 30-minute
#          lease started 2-3 minutes in; before any run has finished, runs follow STOP_AFTER), FINISH_IN
#          (poll: seconds from now by which runs should end, written to the study folder's finish-at file,
#          which replaces FINISH_BY: set it once the lease's end is known), POLL_S (poll: half the seconds
#          it waits; default 270), WAIT_S (collect: seconds it waits for the study to end; default 540),
#          GPUS (default 0), JOBS (per GPU; default 4), SOLO_ABOVE (start: runs of more parameters run alone, e.g. 150M),
#          ONLY (start: --only, comma-separated run-name patterns: only those run),
#          DATA (default .data/corpus-slice-32M.txt.zst), VAL (default .data/corpus-val.txt.zst)
#   carry: .wheels (first call on a fresh machine), .data, .study-state (when resuming)
# Triton's autotuning results (mamba_ssm's and fla's kernels tune for minutes in the first process on a
# fresh machine; elmanlab keeps them on disk, ops/_dispatch.py) go to a cache of the study's own and come
# back as triton-autotune.tar.gz: put it in .study-state/ or commit it as studies/state/, and the next session's runs skip the tuning
# (the winners only; each still compiles). Loss runs only: runs that share a GPU tune under contention,
# so the speed benchmarks keep the default cache and tune alone.
set -o pipefail
phase=${1:?start, poll, collect, once or keep}
study=${2:?STUDY.yaml}
out=$(realpath -m "${3:?OUTDIR}")
name=$(basename "$study" .yaml)
mkdir -p "$out"
source scripts/device-env.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
work=${STUDY_WORK:-/tmp/elmanlab-study}     # where the study runs (the tests set it)
dir=$work/$name
export TRITON_CACHE_AUTOTUNING=1 TRITON_CACHE_DIR=$work/triton
# whether the study's process runs (a killed one that no init reaps stays a zombie, which kill -0 finds)
running() {
    local p
    p=$(cat "$work/$name.pid" 2>/dev/null) && [ -n "$p" ] && kill -0 "$p" 2>/dev/null \
        && ! grep -q ') Z ' "/proc/$p/stat" 2>/dev/null
}
# the study folder without weights, deadline or lock, into OUTDIR/NAME.tar.gz (written aside, then moved)
pack() {
    tar -C "$work" -czf "$out/.snap.tar.gz" --exclude=checkpoints --exclude="*.safetensors" --exclude=finish-at \
        --exclude=.study.lock "$name" && mv "$out/.snap.tar.gz" "$out/$name.tar.gz"
}
case $phase in
once|keep)
    t0=${CALL_T0:-$(date +%s)}
    if [ "$phase" = keep ] && running; then
        device_setup "$out"
        echo "continuing the study started in an earlier call on this machine"
    else
        bash "$0" start "$study" "$out" || exit
    fi
    [ -n "${FINISH_IN:-}" ] && echo $(( t0 + FINISH_IN )) > "$dir/finish-at" \
        && echo "runs start only if expected to end within $FINISH_IN s of the call's start (finish-at)"
    while running && [ $(( $(date +%s) - t0 )) -lt "${DEADLINE_S:-500}" ]; do
        left=$(( ${DEADLINE_S:-500} - ($(date +%s) - t0) ))
        sleep $(( left < 20 ? left : 20 ))
        pack 2>/dev/null
        cp "$work/$name.log" "$out/" 2>/dev/null
    done
    WAIT_S=2 bash "$0" collect "$study" "$out"
    if running; then
        if [ "$phase" = once ] || [ "${WAIT_END:-0}" = 1 ]; then
            kill -9 -- -"$(cat $work/$name.pid)" && echo "stopped the study at the deadline: the runs in flight are lost"
        else
            echo "left running: the next call on this machine continues it (a fresh machine starts again from docs/results)"
            touch "$out/left-running"   # land-collect.sh: the run in flight is not lost
        fi
    fi
    exit 0
    ;;
start)
    device_setup "$out"
    mkdir -p "$work"
    # the finished runs so far: .study-state/NAME (unpacked from the last collect), else the committed
    # docs/results/NAME (commit each collect there at once: a session whose end is lost keeps its runs)
    for state in ".study-state/$name" "docs/results/$name"; do
        [ -f "$state/study.json" ] && [ ! -d "$dir" ] && cp -r "$state" "$dir" && echo "resuming from $state"
    done
    mkdir -p "$TRITON_CACHE_DIR"
    tune=.study-state/triton-autotune.tar.gz; [ -f "$tune" ] || tune=studies/state/triton-autotune.tar.gz
    [ -f "$tune" ] && tar -C "$TRITON_CACHE_DIR" -xzf "$tune" \
        && echo "autotuning results carried: $(find "$TRITON_CACHE_DIR" -name '*.autotune.json' | wc -l)"
    setsid nohup python3 -m elmanlab study "$study" --out "$dir" --gpus "${GPUS:-0}" --jobs-per-gpu "${JOBS:-4}" \
        --stop-after "${STOP_AFTER:-12}" ${FINISH_BY:+--finish-by "$FINISH_BY"} ${SOLO_ABOVE:+--solo-above "$SOLO_ABOVE"} ${ONLY:+--only "$ONLY"} --data "${DATA:-.data/corpus-slice-32M.txt.zst}" \
        --val-data "${VAL:-.data/corpus-val.txt.zst}" > "$work/$name.log" 2>&1 < /dev/null &
    echo $! > "$work/$name.pid"
    sleep "${START_WAIT_S:-20}"; tail -n 5 "$work/$name.log"
    ;;
poll)
    [ -n "${FINISH_IN:-}" ] && echo $(( $(date +%s) + FINISH_IN )) > "$dir/finish-at" \
        && echo "runs now start only if expected to end within $FINISH_IN s (finish-at)"
    for _ in $(seq 1 ${POLL_S:-270}); do running || break; sleep 2; done
    tail -c 3000 "$work/$name.log" | tr '\r' '\n' | tail -n 8
    ;;
collect)
    for _ in $(seq 1 $(( ${WAIT_S:-540} / 2 ))); do running || break; sleep 2; done
    running && echo "study still running: collect again"
    tail -c 4000 "$work/$name.log" | tr '\r' '\n' | tail -n 12
    cp "$work/$name.log" "$out/"
    pack
    (cd "$TRITON_CACHE_DIR" 2>/dev/null && find . -name '*.autotune.json' | tar -czf "$out/triton-autotune.tar.gz" -T -) \
        && echo "autotuning results: $(tar -tzf "$out/triton-autotune.tar.gz" | wc -l) files -> triton-autotune.tar.gz (into .study-state/)"
    ;;
esac
ls -la "$out"
