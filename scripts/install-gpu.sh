#!/usr/bin/env bash
# Install elmanlab's GPU extras from a wheelhouse (scripts/build-wheelhouse.sh) into the machine's
# existing torch environment, offline: no index, no dependency resolution, torch left untouched.
#
#   usage: scripts/install-gpu.sh [DIR]     (default DIR: .wheels)
#   env:   PYTHON=python3 (the interpreter that has torch)
#
# Installs DIR/core/*.whl (fla, schedulefree, einops, mamba_ssm's Triton part without its CUDA
# extension) and, when DIR/tilelang.tar.xz is there, rebuilds the TileLang wheels from it and
# installs them too. Then prints `elmanlab doctor` when elmanlab is importable.
set -euo pipefail
dir=${1:-.wheels}
python=${PYTHON:-python3}
[ -d "$dir/core" ] || { echo "error: no $dir/core: build the wheelhouse first (scripts/build-wheelhouse.sh $dir)" >&2; exit 2; }
"$python" -c "import torch" 2>/dev/null || { echo "error: $python has no torch: set PYTHON to the interpreter that has it" >&2; exit 2; }
pip=("$python" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check)
"${pip[@]}" "$dir"/core/*.whl
if [ -f "$dir/tilelang.tar.xz" ]; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    mkdir "$tmp/unpacked" "$tmp/wheels"
    tar -C "$tmp/unpacked" -xJf "$dir/tilelang.tar.xz"
    "$python" - "$tmp/unpacked" "$tmp/wheels" <<'PY'
import os, sys, zipfile
src, dst = sys.argv[1], sys.argv[2]
for name in sorted(os.listdir(src)):
    root = os.path.join(src, name)
    if not (name.endswith(".whl") and os.path.isdir(root)):
        continue
    with zipfile.ZipFile(os.path.join(dst, name), "w", zipfile.ZIP_STORED) as z:
        for dp, dns, fns in os.walk(root):
            dns.sort()
            for f in sorted(fns):
                p = os.path.join(dp, f)
                z.write(p, os.path.relpath(p, root))
PY
    "${pip[@]}" "$tmp"/wheels/*.whl
fi
"$python" -c "import importlib.metadata as m
for d in ('flash-linear-attention', 'fla-core', 'mamba-ssm', 'schedulefree', 'einops', 'tilelang', 'z3-solver'):
    try: print(f'  {d:<24} {m.version(d)}')
    except m.PackageNotFoundError: print(f'  {d:<24} -')"
if "$python" -c "import elmanlab" 2>/dev/null; then "$python" -m elmanlab doctor; fi
