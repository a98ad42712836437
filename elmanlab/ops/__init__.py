"""Recurrence kernels, one folder per recurrence.

Every public entry point takes ``[batch, time, ...]`` tensors and an optional initial state and
returns ``(output, final_state)``. Each folder holds a plain-PyTorch reference that defines the
math (``reference.py``) and, where one exists, a fast GPU kernel. The public function picks the
fast kernel on CUDA and the reference elsewhere; :func:`force_reference` switches fast kernels
off globally (also ``ELMANLAB_REFERENCE=1`` in the environment). Every folder answers
``backend_info(**shapes)``: ``{"path", "fast", "reason"}`` and ``"fix"`` when not fast, what its
entry point will run on this machine; :func:`implementations_used` says what each op did run in
this process (recorded by the branch that ran, after every fallback). CUDA kernels of the
package's own are built by ``_build.py`` on first use.
"""
from elmanlab.ops._dispatch import (REFERENCE, fast_path_enabled, force_reference, implementations_used,
                                    reference_forced, reset_implementations_used)

__all__ = ["force_reference", "fast_path_enabled", "reference_forced", "implementations_used",
           "reset_implementations_used", "REFERENCE"]
