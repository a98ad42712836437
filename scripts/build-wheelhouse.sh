#!/usr/bin/env bash
# Build the wheelhouse of elmanlab's GPU extras, where the package registries are reachable.
#
#   usage: scripts/build-wheelhouse.sh [DIR]        (default DIR: .wheels, ignored by git)
#   env:   PY=3.12 (the GPU machine's Python)  PLATFORM=manylinux_2_28_x86_64
#
# Makes
#   DIR/core/        flash-linear-attention + fla-core, schedulefree, einops, zstandard and a
#                    pure-Python wheel of mamba_ssm built here from its sdist without the CUDA
#                    extension (MAMBA_SKIP_CUDA_BUILD=TRUE: only its Triton kernels, which elmanlab uses)
#   DIR/tilelang.tar.xz   TileLang + apache-tvm-ffi + torch-c-dlpack-ext + z3-solver, unpacked and
#                    recompressed with xz (81 MB of wheels -> 35.2 MB), less z3-solver's command-line
#                    program (22 MB unpacked; TileLang uses z3 through libz3.so, never the program) and C++ sources
#                    nothing reads at run time (below), with libz3.so stored as a link to its twin, so that
#                    DIR, the 32 MB corpus slice and the tree travel in one 64 MiB call
#                    (scripts/carry-size.sh); scripts/install-gpu.sh turns it back into the wheels.
#                    TileLang is needed for a correct Gated DeltaNet backward on Hopper GPUs with
#                    Triton 3.4-3.7.0 (fla issue #640). Skip it with NO_TILELANG=1.
# Building the mamba_ssm wheel needs torch, setuptools, wheel and packaging installed here.
set -euo pipefail
dir=${1:-.wheels}
py=${PY:-3.12}
plat=${PLATFORM:-manylinux_2_28_x86_64}
mkdir -p "$dir/core"
dir=$(cd "$dir" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

plat_args=(--python-version "$py" --implementation cp --only-binary :all: --platform "$plat"
           --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
python3 -m pip download -q --no-deps -d "$dir/core" flash-linear-attention==0.6.0 fla-core==0.6.0 \
    schedulefree==1.4.1 einops==0.8.2
python3 -m pip download -q --no-deps "${plat_args[@]}" -d "$dir/core" zstandard==0.23.0

MAMBA_SKIP_CUDA_BUILD=TRUE python3 -m pip download -q --no-deps --no-binary :all: --no-build-isolation \
    -d "$tmp/sdist" mamba-ssm==2.3.2.post1     # its setup.py runs even for a download: torch from here
tar -xzf "$tmp"/sdist/mamba_ssm-*.tar.gz -C "$tmp"
MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE python3 -m pip wheel -q --no-deps --no-build-isolation \
    -w "$dir/core" "$tmp"/mamba_ssm-*/

if [ "${NO_TILELANG:-0}" != 1 ]; then
    python3 -m pip download -q --no-deps "${plat_args[@]}" -d "$tmp/tl" tilelang==0.1.15 \
        apache-tvm-ffi==0.1.12 torch-c-dlpack-ext==0.1.5 z3-solver==4.15.4.0
    mkdir -p "$tmp/unpacked"
    for w in "$tmp"/tl/*.whl; do
        n=$(basename "$w")
        mkdir "$tmp/unpacked/$n"
        python3 -m zipfile -e "$w" "$tmp/unpacked/$n"
    done
    # z3's command-line program, and its line in the wheel's RECORD (pip installs what RECORD lists)
    z3=("$tmp"/unpacked/z3_solver-*.whl)
    rm "$z3"/z3_solver-*.data/data/bin/z3 && rmdir "$z3"/z3_solver-*.data/data/bin "$z3"/z3_solver-*.data/data "$z3"/z3_solver-*.data
    sed -i '/^z3_solver-[^/]*\.data\/data\/bin\/z3,/d' "$z3"/z3_solver-*.dist-info/RECORD
    # C++ sources the wheels ship but nothing reads at run time, with their RECORD lines: tvm-ffi's
    # libbacktrace (2.7 MB, for building libtvm_ffi, which is shipped built), TVM's src/ (13 MB, built
    # into libtvm_compiler.so; TileLang's kernels include tilelang/src/tl_templates, TVM's include/ and
    # cutlass/include only) and CUTLASS's profiler and library tools (2.2 MB); 2.0 MB less compressed.
    # libz3.so becomes a link to its identical twin libz3.so.4.15 (install-gpu.sh's zip follows it,
    # so the rebuilt wheel holds both files as before)
    ffi=("$tmp"/unpacked/apache_tvm_ffi-*.whl)
    rm -r "$ffi"/tvm_ffi/3rdparty/libbacktrace
    sed -i '/^tvm_ffi\/3rdparty\/libbacktrace\//d' "$ffi"/apache_tvm_ffi-*.dist-info/RECORD
    tl=("$tmp"/unpacked/tilelang-*.whl)
    rm -r "$tl"/tilelang/3rdparty/tvm/src "$tl"/tilelang/3rdparty/cutlass/tools/library "$tl"/tilelang/3rdparty/cutlass/tools/profiler
    sed -i -E '/^tilelang\/3rdparty\/(tvm\/src|cutlass\/tools\/(library|profiler))\//d' "$tl"/tilelang-*.dist-info/RECORD
    cmp "$z3"/z3/lib/libz3.so "$z3"/z3/lib/libz3.so.4.15 && ln -sf libz3.so.4.15 "$z3"/z3/lib/libz3.so
    echo "compressing TileLang (xz -9e in one thread, one block: 0.5 MB smaller than threaded; about 5 minutes)..."
    tar -C "$tmp/unpacked" -cf - . | xz -9e -T1 > "$dir/tilelang.tar.xz.tmp"
    mv "$dir/tilelang.tar.xz.tmp" "$dir/tilelang.tar.xz"
fi
du -sh "$dir"/core "$dir"/tilelang.tar.xz 2>/dev/null || true
echo "wheelhouse ready in $dir: on the GPU machine run scripts/install-gpu.sh $dir"
