#!/usr/bin/env bash
# One device call for the baselines: Triton autotune results restored, the wheelhouse installed, GPU
# tests, doctor --probe, throughput; everything written under OUTDIR as it happens (a timeout keeps
# what was done), and the autotune results saved back for the next fresh machine.
#   usage: scripts/device-baselines.sh OUTDIR BENCH_SECONDS [throughput.py args...]
#   env:   TESTS         test files (default tests/ops tests/test_layers_fast_paths.py tests/test_train_gpu.py)
#          TEST_SECONDS  limit for the tests (default 300); SKIP_TESTS=1 skips them
#          DOCTOR_ARGS   (default --probe); AUTOTUNE  tarball of Triton autotune results
#                        (default .carry/triton-autotune.tgz: restored if there, rewritten to OUTDIR)
# A fresh machine spends minutes tuning fla's and mamba_ssm's Triton kernels and JIT-compiling
# TileLang's per shape; with the autotune results restored only the chosen configurations compile.
set -o pipefail
out=${1:?OUTDIR}; secs=${2:?BENCH_SECONDS}; shift 2
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$out"
out=$(realpath -m "$out")
t0=$(date +%s)
status=0
stamp() { while IFS= read -r l || [ -n "$l" ]; do printf '%(%T)T %s\n' -1 "$l"; done; }   # keeps a cut last line
quiet() { grep --line-buffered -v "TileLang:tilelang.jit.kernel:INFO"; }   # TileLang's per-kernel JIT chatter
save_autotune() { (cd ~ && find .triton/cache -name '*.autotune.json' 2>/dev/null | tar czf "$out/triton-autotune.tgz" -T -); }
autotune=${AUTOTUNE:-.carry/triton-autotune.tgz}
[ -f "$autotune" ] && tar -C ~ -xzf "$autotune" && echo "restored $(tar tzf "$autotune" | wc -l) autotune results"
if ! python3 -c "import fla, tilelang" 2>/dev/null; then
    bash scripts/install-gpu.sh .wheels > "$out/install.log" 2>&1
    tail -12 "$out/install.log"
fi
echo "install: $(( $(date +%s) - t0 )) s"
if [ "${SKIP_TESTS:-0}" != 1 ]; then
    timeout "${TEST_SECONDS:-300}" python3 -m pytest -v -rf --tb=line -W ignore -p no:cacheprovider \
        ${TESTS:-tests/ops tests/test_layers_fast_paths.py tests/test_train_gpu.py} 2>&1 | quiet | stamp > "$out/gputests.log"
    [ "${PIPESTATUS[0]}" = 0 ] || status=1
    grep -E "FAILED|ERROR|passed|failed|^[0-9:]+ E " "$out/gputests.log" | tail -30
    echo "tests: $(grep -c PASSED "$out/gputests.log") passed so far, $(( $(date +%s) - t0 )) s"
    save_autotune
fi
timeout 300 python3 -m elmanlab doctor ${DOCTOR_ARGS---probe} 2>&1 | quiet | stamp > "$out/doctor.log"
[ "${PIPESTATUS[0]}" = 0 ] || status=1
cat "$out/doctor.log"
echo "doctor: $(( $(date +%s) - t0 )) s"
case " $* " in *" --out "* | *" --out="*) ;; *) set -- "$@" --out "$out/throughput" ;; esac
timeout "$secs" python3 benchmarks/throughput.py "$@" 2>&1 | quiet | stamp > "$out/bench.log"
[ "${PIPESTATUS[0]}" = 0 ] || status=1
tail -25 "$out/bench.log"
save_autotune
echo "all done: $(( $(date +%s) - t0 )) s (exit $status: nonzero when tests, doctor or the benchmark failed)"
exit $status
