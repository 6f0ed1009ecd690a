"""Process hardening shared by the unprivileged processes (prctl through libc).

The privileged helper has its own copy of what it needs: it imports nothing
from outside its package.
"""

from __future__ import annotations

import ctypes
import os

PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38

# the program's own symbol namespace (libc is in it): no ctypes.util.find_library,
# which runs `ldconfig -p` in a child process at every start
_libc = ctypes.CDLL(None, use_errno=True)
_libc.prctl.argtypes = [
    ctypes.c_int,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
]
_libc.prctl.restype = ctypes.c_int


def prctl(option: int, arg2: int = 0) -> None:
    if _libc.prctl(option, arg2, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")


def last_cap() -> int:
    with open("/proc/sys/kernel/cap_last_cap") as f:
        return int(f.read())


def drop_bounding_set() -> None:
    """Empty the capability bounding set (needs CAP_SETPCAP, so call it while root)."""
    for cap in range(last_cap() + 1):
        prctl(PR_CAPBSET_DROP, cap)


def no_new_privs_and_undumpable() -> None:
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    prctl(PR_SET_DUMPABLE, 0)


def drop_to(uid: int, gid: int, *, extra_groups: tuple[int, ...] = ()) -> None:
    """Become uid/gid for good: groups, gid, uid; then prove root cannot come back."""
    os.setgroups([gid, *extra_groups])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise RuntimeError("privilege drop failed: setuid(0) succeeded")
