"""Stopping a training run gracefully on a signal.

The first SIGINT (Ctrl-C, or a study being stopped) asks the loop to end after the step in flight;
the trainer then saves a checkpoint, so ``--resume`` continues exactly. A second one (2 s or more
later) interrupts at once. SIGUSR1 (what a study sends its runs when it is interrupted) asks for
the same graceful stop and never escalates. Single-process runs in the main thread only (DDP ranks
keep the default behaviour).
"""
from __future__ import annotations

import signal
import sys
import threading
import time


class GracefulStop:
    """A run's stop request and the SIGINT/SIGUSR1 handlers that set it while installed.

    ``requested`` is read by the loop between steps. ``uninstall()`` puts the previous handlers back
    unless a stop was requested: then they are kept, to absorb the repeat that a signal sent to a
    whole process group brings."""

    def __init__(self):
        self.flag = {"requested": False, "at": 0.0}   # the handlers hold this dict, never the trainer
        self._old: dict = {}                            # signal -> the handler it had before install()

    @property
    def requested(self) -> bool:
        return self.flag["requested"]

    def install(self, world: int) -> None:
        if world > 1 or threading.current_thread() is not threading.main_thread():
            return

        flag = self.flag        # the handler may outlive the trainer: it holds this dict, not the model

        def handler(signum, frame):
            # A signal to a process group (Ctrl-C, `timeout`) reaches a study and its runs at once,
            # and the study then forwards one more: a repeat within 2 s is that same request.
            if flag["requested"]:
                if time.monotonic() - flag["at"] > 2.0:
                    raise KeyboardInterrupt
                return
            flag.update(requested=True, at=time.monotonic())
            sys.stderr.write("\ninterrupt: stopping after this step and saving a checkpoint "
                             "(interrupt again to stop at once)\n")

        def request(signum, frame):
            # a study's own request (SIGUSR1): the same graceful stop, never escalated, so that it
            # cannot be mistaken for a second Ctrl-C however late it arrives
            if not flag["requested"]:
                handler(signum, frame)
        if hasattr(signal, "SIGUSR1"):
            self._old[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, request)
        self._old[signal.SIGINT] = signal.signal(signal.SIGINT, handler)

    def uninstall(self) -> None:
        if self.flag["requested"]:                      # kept: they absorb the repeat
            return
        for sig, old in reversed(list(self._old.items())):
            if old is not None:
                signal.signal(sig, old)
        self._old = {}
