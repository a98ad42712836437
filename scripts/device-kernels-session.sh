#!/usr/bin/env bash
# Issue 17 on the GPU machine: the Elman kernels' GPU tests and the width sweep, then (phase b) the
# E88 variants and the end-to-end rows. One device call per phase (each at most 10 minutes).
#   usage: scripts/device-kernels-session.sh a|b OUTDIR    (ELMANLAB_SOURCE_COMMIT=<sha> set)
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
    echo "phase b is written when the E88 variant lands"
    ;;
esac
ls -la "$out"
