"""SIGTERM (what Ray jobs, Slurm and Kubernetes send before they kill) and SIGINT (Ctrl-C) in the driver.

The first signal asks the loop to stop at the next step boundary: the step in flight finishes, a checkpoint is
written (`trainer.checkpoint_on_signal`), then `Stopped` unwinds the run like an error (actors shut down, the
report written, exit 128 + the signal's number), so preemption loses no finished step. A second signal of either
kind, or the first with `trainer.checkpoint_on_signal=false`, raises `Stopped` at once, wherever the driver is.
"""

from __future__ import annotations

import signal
import sys
import threading

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(BaseException):
    """The run was stopped by a signal (a BaseException: no `except Exception` on the way swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_state = {"pending": None, "graceful": True}


def _handle(signum: int, frame: object) -> None:
    if _state["graceful"] and _state["pending"] is None:
        _state["pending"] = signum
        print(f"[rlpost] {signal.Signals(signum).name}: stopping after the current step (checkpoint first); send "
              "it again to stop at once", file=sys.stderr, flush=True)
        return
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    raise Stopped(signum)


def install(graceful: bool | None = None) -> None:
    """Handle SIGTERM/SIGINT as above (only the main thread can; elsewhere a no-op). `graceful` (None keeps the
    current choice): whether the first signal waits for the step boundary."""
    if graceful is not None:
        _state["graceful"] = graceful
    if threading.current_thread() is threading.main_thread():
        for sig in SIGNALS:
            signal.signal(sig, _handle)


def installed() -> bool:
    return signal.getsignal(signal.SIGINT) is _handle


def pending() -> int | None:
    """The signal that asked for a stop at the step boundary, if one did."""
    return _state["pending"]
