#!/usr/bin/env bash
# Issue 16's GPU check in one device call: studies/trust-check-100m.yaml with the defaults (graphs on,
# each record naming its kernel); then the same study with fla hidden (GDN must stop before step 1
# with one error line, the other runs record what they ran) and GDN trained with --allow-reference
# (recorded as the reference). Records, reports and logs (no weights) go to OUTDIR/trust-check.tar.gz.
#   usage: scripts/device-trust-check.sh OUTDIR
set -o pipefail
out=${1:?OUTDIR}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$out"
out=$(realpath "$out")
runs=$(mktemp -d)/trust-check
mkdir -p "$runs"
python3 -c "import fla, tilelang, mamba_ssm" 2>/dev/null || bash scripts/install-gpu.sh .wheels > "$out/install.log" 2>&1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$runs/gpu.txt"
log() { tee -a "$runs/$1.log"; }
python3 -m elmanlab doctor 2>&1 | log doctor-with-fla; echo "doctor exit ${PIPESTATUS[0]}" | log doctor-with-fla
python3 -m elmanlab study studies/trust-check-100m.yaml --out "$runs/with-fla" --gpus 0 2>&1 | tail -n 12 | log study-with-fla
hide=$(mktemp -d)                                   # an `fla` that fails to import, first on the path
mkdir "$hide/fla" && echo 'raise ImportError("fla hidden by scripts/device-trust-check.sh")' > "$hide/fla/__init__.py"
export PYTHONPATH=$hide:$PYTHONPATH
python3 -m elmanlab doctor 2>&1 | log doctor-without-fla; echo "doctor exit ${PIPESTATUS[0]}" | log doctor-without-fla
python3 -m elmanlab study studies/trust-check-100m.yaml --out "$runs/without-fla" --gpus 0 2>&1 | tail -n 12 | log study-without-fla
python3 -m elmanlab train gdn --params 100M --steps 20 --eval-bytes 65536 --allow-reference --no-progress \
    --out "$runs/without-fla-allowed/gdn-100M" 2>&1 | log train-gdn-allow-reference
tar -C "$(dirname "$runs")" -czf "$out/trust-check.tar.gz" --exclude=checkpoints --exclude="*.safetensors" trust-check
ls -la "$out"
