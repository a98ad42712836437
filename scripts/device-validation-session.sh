#!/usr/bin/env bash
# Issue 16's remaining GPU work and issue 18's GPU runs, in three device calls on one warm machine
# (each call at most 10 minutes; a machine stays warm about 30 s between calls):
#   a  install; start studies/shakespeare-10m.yaml in the background (8 runs at once on the GPU, loss
#      only, outliving the call); run every GPU test (pytest -m gpu) beside it; logs to OUT
#   b  wait for the study, archive it (no weights) to OUT; then the throughput benchmark alone
#   c  finish the throughput benchmark (--resume), archive it to OUT
#   usage: scripts/device-validation-session.sh a|b|c OUTDIR     (ELMANLAB_SOURCE_COMMIT=<sha> set)
set -o pipefail
phase=${1:?a, b or c}
out=$(realpath "${2:?OUTDIR}")
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
work=/tmp/elmanlab-session
mkdir -p "$work"
bench=(python3 benchmarks/throughput.py --models transformer,mamba2,gdn,e1,e88 --params 100M,400M --batch 16
       --mode eager,graph --warmup 4 --steps 15 --out "$work/throughput-h200-2026-12-03")
case $phase in
a)
    python3 -c "import fla, tilelang, mamba_ssm" 2>/dev/null || bash scripts/install-gpu.sh .wheels > "$out/install.log" 2>&1
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt"
    setsid nohup python3 -m elmanlab study studies/shakespeare-10m.yaml --out "$work/shakespeare-10m" --gpus 0 \
        --jobs-per-gpu 8 > "$work/study.log" 2>&1 < /dev/null &
    echo $! > "$work/study.pid"
    timeout 520 python3 -m pytest -q -m gpu tests -p no:cacheprovider -rs > "$out/gputests.log" 2>&1
    echo "pytest exit $?" >> "$out/gputests.log"
    tail -n 5 "$out/gputests.log"
    tail -n 3 "$work/study.log" | tee "$out/study-progress.log"
    ;;
b)
    for _ in $(seq 1 120); do kill -0 "$(cat $work/study.pid)" 2>/dev/null || break; sleep 2; done
    tail -n 15 "$work/study.log" | tee "$out/study-tail.log"
    cp "$work/study.log" "$out/"
    tar -C "$work" -czf "$out/shakespeare-10m.tar.gz" --exclude=checkpoints --exclude="*.safetensors" shakespeare-10m
    kill -0 "$(cat $work/study.pid)" 2>/dev/null && { echo "study still running: no throughput now"; exit 0; }
    timeout 400 "${bench[@]}" > "$out/throughput.log" 2>&1
    cp "$work"/throughput-h200-2026-12-03.* "$out/" 2>/dev/null
    tail -n 30 "$out/throughput.log"
    ;;
c)
    timeout 540 "${bench[@]}" --resume > "$out/throughput-c.log" 2>&1
    cp "$work"/throughput-h200-2026-12-03.* "$out/" 2>/dev/null
    tail -n 40 "$out/throughput-c.log"
    ;;
esac
ls -la "$out"
