"""prctl(2) and the capability sets (capset(2)): what a process needs to keep only some
capabilities and to name itself.

The part of process/privileges.py a long-lived process still needs after its start-up
(the helper's serving stage, process/title.py); privileges.py re-exports it. Stdlib
only, no typing import (see privileges.py).
"""

from __future__ import annotations

import ctypes

from sepconnect.process.libc import LIBC, errno_error

PR_SET_DUMPABLE = 4
PR_SET_NAME = 15
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
CAP_NET_ADMIN = 12
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

LIBC.prctl.argtypes = [
    ctypes.c_int,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
]
LIBC.prctl.restype = ctypes.c_int


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


def prctl(option: int, arg2: int = 0, arg3: int = 0) -> int:
    """prctl(2) (an address, for the options that take a pointer); its result."""
    result = int(LIBC.prctl(option, arg2, arg3, 0, 0))
    if result < 0:
        raise errno_error(f"prctl({option}, {arg2})")
    return result


def keep_only_capabilities(keep: frozenset[int], *, inheritable: bool = False) -> None:
    """Make ``keep`` the effective and permitted set, no ambient ones, and nothing
    inheritable (``inheritable``: ``keep``, so that :func:`raise_ambient` may follow)."""
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    words = [0, 0]
    for cap in keep:
        words[cap // 32] |= 1 << (cap % 32)
    data = (_CapData * 2)(*(_CapData(w, w, w if inheritable else 0) for w in words))
    if LIBC.capset(ctypes.byref(header), data) != 0:
        raise errno_error("capset")
