"""scripts/install-gpu.sh: the offline installer of the GPU extra."""
import subprocess
from pathlib import Path


def test_install_script_refuses_missing_wheelhouse(tmp_path):
    script = Path(__file__).resolve().parents[1] / "scripts" / "install-gpu.sh"
    r = subprocess.run(["bash", str(script), str(tmp_path / "none")], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error:") and "build-wheelhouse" in r.stderr


FAKE_PYTHON = r"""#!/usr/bin/env bash
# stands in for python3 in build-wheelhouse.sh: logs each call with MAMBA_SKIP_CUDA_BUILD and makes
# the files pip would have made
echo "${MAMBA_SKIP_CUDA_BUILD:-unset}|$*" >> "$FAKE_LOG"
[ "$1 $2" = "-m pip" ] || exit 0
out=""; prev=""
for a in "$@"; do { [ "$prev" = "-d" ] || [ "$prev" = "-w" ]; } && out=$a; prev=$a; done
mkdir -p "$out"
if [ "$3" = "wheel" ]; then touch "$out/mamba_ssm-2.3.2.post1-py3-none-any.whl"; exit 0; fi
for a in "$@"; do
  case "$a" in
    mamba-ssm==*) d=$(mktemp -d); mkdir "$d/mamba_ssm-2.3.2.post1"
                  tar -czf "$out/mamba_ssm-2.3.2.post1.tar.gz" -C "$d" mamba_ssm-2.3.2.post1 ;;
    *==*) touch "$out/${a%%==*}.whl" ;;
  esac
done
"""


def test_build_wheelhouse_builds_mamba_without_cuda_or_isolation(tmp_path):
    """On a CPU-only machine mamba_ssm's setup.py runs already for the sdist download: that step, like
    the wheel build, needs MAMBA_SKIP_CUDA_BUILD and the local torch (no build isolation)."""
    import os
    script = Path(__file__).resolve().parents[1] / "scripts" / "build-wheelhouse.sh"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "python3"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    log = tmp_path / "calls.log"
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_LOG=str(log), NO_TILELANG="1")
    r = subprocess.run(["bash", str(script), str(tmp_path / "wh")], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    calls = log.read_text().splitlines()
    mamba = [c for c in calls if "mamba" in c]
    assert len(mamba) == 2, calls                      # the sdist download, then the wheel build
    for c in mamba:
        skip, args = c.split("|", 1)
        assert skip == "TRUE" and "--no-build-isolation" in args, c
    built = sorted(p.name for p in (tmp_path / "wh" / "core").iterdir())
    assert "mamba_ssm-2.3.2.post1-py3-none-any.whl" in built and "flash-linear-attention.whl" in built
