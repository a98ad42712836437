import os

import pytest
import torch

# Under pytest-xdist (the README's `-n 2`) each worker, and the processes its tests start, keeps to one
# thread, so that the workers share the cores instead of contending for them.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
else:
    torch.set_num_threads(min(2, os.cpu_count() or 1))


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative RMS error ||out - ref|| / ||ref||."""
    out, ref = out.double(), ref.double()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-300)).item()


@pytest.fixture
def rel():
    return rel_err


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
