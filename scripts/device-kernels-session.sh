#!/usr/bin/env bash
# Issue 17 on the GPU machine: the Elman kernels' GPU tests and the width sweep, then (phase b) the
# E88 variants and the end-to-end rows. One device call per phase (each at most 10 minutes).
#   usage: scripts/device-kernels-session.sh a|b|c OUTDIR    (ELMANLAB_SOURCE_COMMIT=<sha> set)
set -o pipefail
phase=${1:?a or b}
out=$(realpath "${2:?OUTDIR}")
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
python3 -c "import fla, schedulefree, mamba_ssm" 2>/dev/null || bash scripts/install-gpu.sh .wheels > "$out/install.log" 2>&1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader | tee "$out/gpu.txt"
case $phase in
a)
    timeout 240 python3 -m pytest -q -m gpu tests/ops/test_elman.py -p no:cacheprovider -rs > "$out/gputests-elman.log" 2>&1
    echo "pytest exit $?" >> "$out/gputests-elman.log"
    tail -n 15 "$out/gputests-elman.log"
    timeout 300 python3 benchmarks/kernels.py --only TANH,LINEAR --no-loops --out "$out/kernels-wide-h200.json" \
        > "$out/kernels-wide.log" 2>&1
    echo "bench exit $?" >> "$out/kernels-wide.log"
    tail -n 60 "$out/kernels-wide.log"
    ;;
b)
    timeout 100 python3 -m pytest -q -m gpu tests/ops/test_elman.py -k "sync_modes or wide_kernel" -p no:cacheprovider \
        > "$out/gputests-elman-sync.log" 2>&1
    echo "pytest exit $?" >> "$out/gputests-elman-sync.log"
    tail -n 3 "$out/gputests-elman-sync.log"
    timeout 120 python3 benchmarks/kernels.py --only TANH --quick --widths 1024,1760,2112,2560,4096 --long "" \
        --out "$out/kernels-sync-h200.json" > "$out/kernels-sync.log" 2>&1
    grep "^| tanh" "$out/kernels-sync.log"
    timeout 150 python3 -m pytest -q -m gpu tests/ops/test_e88.py -p no:cacheprovider > "$out/gputests-e88.log" 2>&1
    echo "pytest exit $?" >> "$out/gputests-e88.log"
    tail -n 8 "$out/gputests-e88.log"
    timeout 200 python3 scripts/e88-ab.py --out "$out/e88-ab-h200.json" --c-sweep 4,6,9 > "$out/e88-ab.log" 2>&1
    echo "e88-ab exit $?" >> "$out/e88-ab.log"
    tail -n 45 "$out/e88-ab.log"
    ;;
c)
    timeout 90 python3 -m pytest -q -m gpu tests/ops/test_e88.py -p no:cacheprovider > "$out/gputests-e88.log" 2>&1
    echo "pytest exit $?" >> "$out/gputests-e88.log"
    tail -n 4 "$out/gputests-e88.log"
    timeout 250 python3 scripts/e88-ab.py --out "$out/e88-ab-n48-h200.json" --shapes 32:48,44:48,64:32 --no-check \
        --c-sweep 4,6 > "$out/e88-ab-n48.log" 2>&1
    echo "e88-ab exit $?" >> "$out/e88-ab-n48.log"
    grep -v TileLang "$out/e88-ab-n48.log" | tail -n 30
    ELMANLAB_E88_KERNEL=v3 ELMANLAB_ELMAN_SYNC=release timeout 220 python3 benchmarks/throughput.py \
        --models e1,e42,e88 --params 400M --batch 16 --mode graph --warmup 4 --steps 15 \
        --out "$out/throughput-400m-h200" > "$out/throughput.log" 2>&1
    echo "throughput exit $?" >> "$out/throughput.log"
    tail -n 20 "$out/throughput.log"
    ;;
esac
ls -la "$out"
