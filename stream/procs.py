"""Child processes that must never outlive us: each runs in its own process group."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys

_PR_SET_PDEATHSIG = 1
# Resolved before any fork: the child then only calls it (no lookup, no import after fork).
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None


def die_with_parent() -> None:
    """``preexec_fn`` for a child that must not outlive the thread that starts it: the kernel sends
    it SIGTERM when that thread ends, even if the parent is SIGKILLed and runs no clean-up."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_process_group(proc: subprocess.Popen, timeout: float = 10.0, sig: int = signal.SIGTERM) -> int | None:
    """Stop ``proc`` and everything it started: ``sig`` (SIGTERM) to its group, SIGKILL after ``timeout``.

    ``proc`` must have been started with ``start_new_session=True``. Returns its exit code.
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    # The group may still hold grandchildren that ignored SIGTERM.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode
