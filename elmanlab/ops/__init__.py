"""Recurrence kernels, one folder per recurrence.

Every public entry point takes ``[batch, time, ...]`` tensors and an optional initial state and
returns ``(output, final_state)``. Each folder holds a plain-PyTorch reference that defines the
math (``reference.py``) and, where one exists, a fast GPU kernel. The public function picks the
fast kernel on CUDA and the reference elsewhere; :func:`force_reference` switches fast kernels
off globally (also ``ELMANLAB_REFERENCE=1`` in the environment). Every folder answers
``backend_info(**shapes)``: ``{"path", "fast", "reason"}``, what its entry point runs on this machine.
CUDA kernels of the package's own are built by ``_build.py`` on first use.
"""
from elmanlab.ops._dispatch import force_reference, fast_path_enabled, reference_forced

__all__ = ["force_reference", "fast_path_enabled", "reference_forced"]
