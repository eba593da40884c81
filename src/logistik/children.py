"""Child processes that die with their parent."""

from __future__ import annotations

import ctypes
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a child before exec (a `preexec_fn`): ask Linux to SIGTERM it when its parent dies.

    Linux means the thread that started the child: start it from a thread that lives as long
    as the child should.
    """
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: the child outlives a killed parent; a normal exit still stops it
