"""Child processes that do not outlive their parent."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def stop_with_this_process() -> Callable[[], None] | None:
    """What a child of this process should run first (a `preexec_fn`, an `after_in_child`
    of `os.register_at_fork`) to get SIGTERM when this process dies, even by SIGKILL,
    instead of living on without it. None where the kernel offers no such thing (only
    Linux does)."""
    if sys.platform != "linux":
        return None
    parent = os.getpid()
    libc = ctypes.CDLL(None, use_errno=True)

    def in_child() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return in_child
