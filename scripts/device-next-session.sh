#!/usr/bin/env bash
# The GPU work left after 2026-12-03 (issue 17), in calls on one warm machine (each <= 10 minutes;
# the machine stays warm about 30 s between calls, so make them back to back):
#   a  install; every Elman/E88 GPU test (the refactored kernels, the multi-tile pass, the pipelined
#      build, the back-off barrier, E88 v2 and v3); the Elman tanh rows at B16/B64 with each
#      barrier and the multi-tile / pipelined builds beside the defaults, and the probes that time the
#      16-unit kernel without its barrier, state loads or mma's (where the ~4 us per step go)
#   b  end to end: the seeds' E88 500M n48 rows and E1 400M beside them (graph step, B16; Mamba2 400M's
#      row is committed: throughput-h200-2026-12-03), E88 with q/k fp32 (the default: its fp32 kernel
#      runs) against qk_autocast=true (its bf16 kernel), qk_autocast's loss over 300 steps, then
#      start E42 400M for 1,500 steps at the seeds' settings in the background (non-finite steps counted)
#   c  collect the E42 run (about 6 minutes after b)
#   e  E88 v2 and v3 side by side (correctness, then fwd+bwd beside fla's GDN; v3 at C 4 and 5 forced too)
#   usage: scripts/device-next-session.sh a|e|b|c OUTDIR   (ELMANLAB_SOURCE_COMMIT=<sha> set; carry .wheels
#          and .data, made by: python3 scripts/make-corpus-slice.py)
set -o pipefail
phase=${1:?a, e, b or c}
out=$(realpath -m "${2:?OUTDIR}")
source scripts/device-env.sh
device_setup "$out"
work=/tmp/elmanlab-next
mkdir -p "$work"
case $phase in
a)
    timeout 200 python3 -m pytest -q -m gpu tests/ops/test_elman.py tests/ops/test_e88.py -p no:cacheprovider \
        > "$out/gputests-kernels.log" 2>&1
    echo "pytest exit $?" >> "$out/gputests-kernels.log"
    tail -n 6 "$out/gputests-kernels.log"
    timeout 200 python3 benchmarks/kernels.py --only TANH --widths 1024,1760,2112,3584 --long "" --probe 1024,1760 \
        --out "$out/kernels-multi-h200.json" > "$out/kernels-multi.log" 2>&1
    grep "^| " "$out/kernels-multi.log"
    ;;
e)
    timeout 420 python3 scripts/e88-ab.py --out "$out/e88-ab-h200.json" --kernels v2,v3 \
        --shapes 44:48,32:48,56:32 --c-sweep 4,5 > "$out/e88-ab.log" 2>&1
    echo "e88-ab exit $?" >> "$out/e88-ab.log"
    grep -v TileLang "$out/e88-ab.log" | tail -n 60
    ;;
b)
    timeout 300 python3 benchmarks/throughput.py --models e1 --params 400M --batch 16 --mode graph \
        --config e88:2944x20:n_state=48,n_heads=44 --config e88:3328x24:n_state=48,n_heads=32 \
        --config e88:2944x20:n_state=48,n_heads=44,qk_autocast=true --config e88:1664x36 \
        --config e88:1664x36:qk_autocast=true \
        --warmup 4 --steps 15 --out "$out/throughput-e88-500m-h200" > "$out/throughput.log" 2>&1
    echo "throughput exit $?" >> "$out/throughput.log"
    tail -n 12 "$out/throughput.log"
    # qk_autocast's loss: E88 400M 300 steps, q/k fp32 (seeds 42, 43) and bf16 (seed 42): is the
    # bf16-q/k run's distance from the fp32 run inside the distance between two seeds?
    for run in "42 no-qk-autocast" "42 qk-autocast" "43 no-qk-autocast"; do
        set -- $run
        timeout 150 python3 -m elmanlab train e88 --params 400M --steps 300 --batch-size 16 --seq-len 512 \
            --lr 3e-4 --weight-decay 0.1 --seed $1 --$2 --data .data/corpus-slice-16M.txt.zst --val-data .data/corpus-val.txt.zst \
            --eval-bytes 500000 --no-progress --out "$work/e88-$2-s$1" > "$out/e88-$2-s$1.log" 2>&1
        tail -n 3 "$out/e88-$2-s$1.log"; cp "$work/e88-$2-s$1/summary.json" "$out/e88-$2-s$1-summary.json"
    done
    setsid nohup python3 -m elmanlab train e42 --params 400M --steps 1500 --batch-size 16 --seq-len 512 \
        --lr 3e-4 --weight-decay 0.1 --seed 42 --data .data/corpus-slice-16M.txt.zst --val-data .data/corpus-val.txt.zst --eval-bytes 500000 \
        --no-progress --out "$work/e42-400m-1500" > "$work/e42.log" 2>&1 < /dev/null &
    echo "E42 400M started: $work/e42-400m-1500"
    ;;
c)
    for _ in $(seq 1 270); do [ -f "$work/e42-400m-1500/summary.json" ] && break; sleep 2; done
    tail -n 20 "$work/e42.log" | tee "$out/e42-tail.log"
    cp "$work/e42.log" "$out/" 2>/dev/null
    tar -C "$work" -czf "$out/e42-400m-1500.tar.gz" --exclude=checkpoints --exclude="*.safetensors" e42-400m-1500
    ;;
esac
ls -la "$out"
