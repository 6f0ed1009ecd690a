"""Privileges through capset(2) and the uid changes that keep a capability, for all
three programs; prctl(2) and the bounding set are process/prctl.py's (re-exported here).

Stdlib only: the helper loads it too. No typing import (process/prctl.py says why).
"""

from __future__ import annotations

import ctypes
import os

from sepconnect.process.libc import LIBC, errno_error
from sepconnect.process.prctl import PR_SET_DUMPABLE as PR_SET_DUMPABLE
from sepconnect.process.prctl import PR_SET_NO_NEW_PRIVS as PR_SET_NO_NEW_PRIVS
from sepconnect.process.prctl import drop_bounding_set as drop_bounding_set
from sepconnect.process.prctl import no_new_privs_and_undumpable as no_new_privs_and_undumpable
from sepconnect.process.prctl import prctl as prctl

PR_SET_KEEPCAPS = 8
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4
CAP_NET_ADMIN = 12
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


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


def raise_ambient(cap: int) -> None:
    """Make ``cap`` (permitted and inheritable already) ambient: a program we execute,
    not being root, keeps it. :func:`keep_only_capabilities` takes it back."""
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap)


def drop_to(
    uid: int, gid: int, *, extra_groups: tuple[int, ...] = (), keep: frozenset[int] = frozenset()
) -> None:
    """Become uid/gid for good: groups, gid, uid, keeping the capabilities ``keep`` (in
    the permitted and effective sets, nothing else); then prove root cannot come back."""
    if keep:
        prctl(PR_SET_KEEPCAPS, 1)  # the permitted set survives setresuid (effective does not)
    os.setgroups([gid, *extra_groups])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if keep:
        prctl(PR_SET_KEEPCAPS, 0)
        keep_only_capabilities(keep)
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise RuntimeError("privilege drop failed: setuid(0) succeeded")
