"""scripts/install-gpu.sh: the offline installer of the GPU extra."""
import subprocess
from pathlib import Path


def test_install_script_refuses_missing_wheelhouse(tmp_path):
    script = Path(__file__).resolve().parents[1] / "scripts" / "install-gpu.sh"
    r = subprocess.run(["bash", str(script), str(tmp_path / "none")], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error:") and "build-wheelhouse" in r.stderr
