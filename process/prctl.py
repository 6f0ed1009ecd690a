"""prctl(2): process flags and the capability bounding set; the one prctl wrapper.

Apart from process/privileges.py (capset(2) and the uid changes that keep a capability)
so that the launcher's root stage, which keeps none, loads only this. Stdlib only (and
process/libc.py's handle): the helper loads it too. No typing import (constants without
``Final``), here and in libc.py: the spawner starts its first worker after importing
them and before the codec's imports, and typing (with re) would delay the worker by ~5 ms.
"""

from __future__ import annotations

import ctypes

from sepconnect.process.libc import LIBC, errno_error

PR_SET_DUMPABLE = 4
PR_SET_NAME = 15
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
_LAST_CAP_FALLBACK = 63  # /proc unreadable: drop every number the kernel may know

LIBC.prctl.argtypes = [ctypes.c_int, *[ctypes.c_ulong] * 4]
LIBC.prctl.restype = ctypes.c_int


def prctl(option: int, arg2: int = 0, arg3: int = 0) -> int:
    """prctl(2) (an address, for the options that take a pointer); its result."""
    result = int(LIBC.prctl(option, arg2, arg3, 0, 0))
    if result < 0:
        raise errno_error(f"prctl({option}, {arg2})")
    return result


def last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap", "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return _LAST_CAP_FALLBACK


def drop_bounding_set(*, keep: frozenset[int] = frozenset()) -> None:
    """Empty the capability bounding set but for ``keep`` (needs CAP_SETPCAP for every
    capability still in it: call it first; one that is already gone needs nothing)."""
    for cap in range(last_cap() + 1):
        if cap not in keep:
            try:
                if prctl(PR_CAPBSET_READ, cap):
                    prctl(PR_CAPBSET_DROP, cap)
            except OSError as exc:  # numbers past the kernel's last cap (the fallback)
                if exc.errno != 22:  # EINVAL
                    raise


def no_new_privs_and_undumpable() -> None:
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    prctl(PR_SET_DUMPABLE, 0)
