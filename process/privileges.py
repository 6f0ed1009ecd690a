"""Privileges and process flags through prctl(2) and capset(2), for all three programs.

The one prctl wrapper (process/libc.py's handle). Stdlib only: the helper loads it too.
No typing import (constants without ``Final``), here and in libc.py: the spawner starts
its first worker after importing them and before the codec's imports, and typing (with
re) would delay the worker by ~5 ms.
"""

from __future__ import annotations

import os

from sepconnect.process.capabilities import CAP_NET_ADMIN as CAP_NET_ADMIN  # re-exported
from sepconnect.process.capabilities import PR_CAP_AMBIENT
from sepconnect.process.capabilities import PR_SET_DUMPABLE as PR_SET_DUMPABLE
from sepconnect.process.capabilities import PR_SET_NAME as PR_SET_NAME
from sepconnect.process.capabilities import keep_only_capabilities as keep_only_capabilities
from sepconnect.process.capabilities import prctl as prctl

PR_SET_KEEPCAPS = 8
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT_RAISE = 2
_LAST_CAP_FALLBACK = 63  # /proc unreadable: drop every number the kernel may know


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


def raise_ambient(cap: int) -> None:
    """Make ``cap`` (permitted and inheritable already) ambient: a program we execute,
    not being root, keeps it. :func:`keep_only_capabilities` takes it back."""
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap)


def no_new_privs_and_undumpable() -> None:
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    prctl(PR_SET_DUMPABLE, 0)


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
