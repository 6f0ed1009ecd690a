"""The capability sets (capset(2)): what a process needs to keep only some capabilities.

The part of process/privileges.py a long-lived process still needs after its start-up
(the helper's serving stage); privileges.py re-exports it. Stdlib only, no typing
import (see process/prctl.py).
"""

from __future__ import annotations

import ctypes

from sepconnect.process.libc import LIBC, errno_error
from sepconnect.process.prctl import prctl

PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
CAP_NET_ADMIN = 12
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint32) for name in ("effective", "permitted", "inheritable")]


def keep_only_capabilities(keep: frozenset[int], *, inheritable: bool = False) -> None:
    """Make ``keep`` the effective and permitted set, no ambient ones, and nothing
    inheritable (``inheritable``: ``keep``, so that the caller may make them ambient next,
    as the helper's start stage does before it executes its serving stage)."""
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    words = [0, 0]
    for cap in keep:
        words[cap // 32] |= 1 << (cap % 32)
    data = (_CapData * 2)(*(_CapData(w, w, w if inheritable else 0) for w in words))
    if LIBC.capset(ctypes.byref(header), data) != 0:
        raise errno_error("capset")
