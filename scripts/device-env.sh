# Sourced by the device session scripts: the environment of a call on the GPU machine.
#   device_setup OUTDIR   -> exports PYTHONUNBUFFERED and PYTHONPATH, makes OUTDIR, installs the GPU
#                            extras from .wheels unless they are there (the machine stays warm ~30 s),
#                            and writes the GPU's name to OUTDIR/gpu.txt
device_setup() {
    mkdir -p "$1"
    export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
    python3 -c "import fla, schedulefree, mamba_ssm" 2>/dev/null || bash scripts/install-gpu.sh .wheels > "$1/install.log" 2>&1
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader | tee "$1/gpu.txt"
}
