#!/usr/bin/env bash
# Run (or resume) issue 7's study inside one device call, then pack its results into
# OUTDIR/first-results.tar.gz (no weights, no checkpoints: a call returns at most 16 MiB a file). The
# study is stopped with SIGINT after SECONDS (keep it 60 s under the call limit): the run in flight saves
# a checkpoint and the next call resumes it (the machine keeps RUNS_DIR while it stays warm).
#   usage: scripts/device-first-results.sh DATA_DIR RUNS_DIR OUTDIR SECONDS
set -o pipefail
data=${1:?DATA_DIR}; runs=${2:?RUNS_DIR}; out=${3:?OUTDIR}; secs=${4:?SECONDS}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$out"
if ! python3 -c "import fla, tilelang, schedulefree, mamba_ssm" 2>/dev/null; then
    if [ -d .wheels/core ]; then bash scripts/install-gpu.sh .wheels; else echo "warning: GPU extras missing" >&2; fi
fi
if [ ! -d "$runs" ] && [ -f .carry/first-results.tar.gz ]; then      # continue on a fresh machine
    mkdir -p "$(dirname "$runs")" && tar -C "$(dirname "$runs")" -xzf .carry/first-results.tar.gz
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
# -k 60: within a 600 s call the runs get 60 s (not the study's 300 s) to save their checkpoints
timeout -s INT -k 60 "$secs" python3 -m elmanlab study studies/first-results-100m.yaml \
    --data "$data/corpus-train.txt.zst" --val-data "$data/corpus-val.txt.zst" --out "$runs" --gpus 0
echo "study exit code $?"
tar -C "$(dirname "$runs")" -czf "$out/first-results.tar.gz" --exclude=checkpoints --exclude="*.safetensors" "$(basename "$runs")"
ls -la "$out"
