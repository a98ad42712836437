#!/usr/bin/env bash
# One device call for the baselines: install the wheelhouse, GPU tests, doctor, throughput.
#   usage: scripts/device-baselines.sh OUTDIR BENCH_SECONDS [benchmark args...]
set -o pipefail
out=${1:?OUTDIR}; secs=${2:?BENCH_SECONDS}; shift 2
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$out"
t0=$(date +%s)
if ! python3 -c "import fla, tilelang" 2>/dev/null; then
    bash scripts/install-gpu.sh .wheels 2>&1 | tee "$out/install.log"
fi
echo "install: $(( $(date +%s) - t0 )) s"
if [ "${SKIP_TESTS:-0}" != 1 ]; then
    timeout ${TEST_SECONDS:-180} python3 -m pytest -q -p no:cacheprovider ${TESTS:-tests/test_baselines_gpu.py} 2>&1 | tail -40 | tee "$out/gputests.log"
    echo "tests done: $(( $(date +%s) - t0 )) s"
fi
timeout 60 python3 -m elmanlab doctor ${DOCTOR_ARGS:-} 2>&1 | tee "$out/doctor.log"
echo "doctor done: $(( $(date +%s) - t0 )) s"
timeout "$secs" python3 benchmarks/throughput.py "$@" 2>&1 | tee "$out/bench.log"
cp benchmarks/results/throughput-* "$out/" 2>/dev/null
echo "all done: $(( $(date +%s) - t0 )) s"
