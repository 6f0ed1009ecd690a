"""The C library, for the few calls the os module lacks (prctl, capset, syscall, recvmmsg…).

One handle on the program's own symbol namespace (libc is in it): no
``ctypes.util.find_library``, which runs ``ldconfig -p`` in a child at every start.
Each module sets the argument and result types of the functions it calls. Stdlib
only: the helper loads it too.
"""

from __future__ import annotations

import ctypes
import os

LIBC = ctypes.CDLL(None, use_errno=True)


def errno_error(what: str) -> OSError:
    """The OSError for the errno a call through :data:`LIBC` just left."""
    code = ctypes.get_errno()
    return OSError(code, f"{what}: {os.strerror(code)}")
