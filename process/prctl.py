"""prctl(2): the one prctl wrapper, and the flags a process sets while it runs.

Apart from process/privileges.py (capset(2) and the uid changes that keep a capability)
so that the launcher's root stage, which keeps none, loads only this and
process/lockdown.py (the bounding set, no_new_privs). Stdlib only (and
process/libc.py's handle): the helper loads it too. No typing import (constants without
``Final``), here and in libc.py: the spawner starts its first worker after importing
them and before the codec's imports, and typing (with re) would delay the worker by ~5 ms.
"""

from __future__ import annotations

import ctypes

from sepconnect.process.libc import LIBC, errno_error

PR_SET_DUMPABLE = 4
PR_SET_NAME = 15

LIBC.prctl.argtypes = [ctypes.c_int, *[ctypes.c_ulong] * 4]
LIBC.prctl.restype = ctypes.c_int


def prctl(option: int, arg2: int = 0, arg3: int = 0) -> int:
    """prctl(2) (an address, for the options that take a pointer); its result."""
    result = int(LIBC.prctl(option, arg2, arg3, 0, 0))
    if result < 0:
        raise errno_error(f"prctl({option}, {arg2})")
    return result
