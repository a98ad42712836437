# Sourced by the device session scripts: the environment of a call on the GPU machine.
#   device_setup OUTDIR   -> exports PYTHONUNBUFFERED and PYTHONPATH, makes OUTDIR, installs the GPU
#                            extras from .wheels unless they are there (the machine stays warm ~30 s),
#                            and writes the GPU's name to OUTDIR/gpu.txt
device_setup() {
    mkdir -p "$1"
    export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
    # installed already (a warm machine)? find_spec, not import: `import mamba_ssm` always fails here (its
    # __init__ wants the CUDA extension the wheelhouse leaves out; elmanlab imports its Triton modules
    # around it), which made every call reinstall, TileLang's unpacking included, until 2026-12-07
    local want="fla schedulefree mamba_ssm"; [ -f .wheels/tilelang.tar.xz ] && want="$want tilelang"
    python3 -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in sys.argv[1:]))" $want 2>/dev/null \
        || bash scripts/install-gpu.sh .wheels > "$1/install.log" 2>&1
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader | tee "$1/gpu.txt"
}
