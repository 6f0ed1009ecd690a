"""Privileges through capset(2) and the uid changes that keep a capability, for all
three programs; prctl(2) and the bounding set are process/prctl.py's and process/lockdown.py's
(re-exported here).

Stdlib only: the helper loads it too. No typing import (process/prctl.py says why).
"""

from __future__ import annotations

import os

from sepconnect.process.capabilities import CAP_NET_ADMIN as CAP_NET_ADMIN  # re-exported
from sepconnect.process.capabilities import PR_CAP_AMBIENT
from sepconnect.process.capabilities import keep_only_capabilities as keep_only_capabilities
from sepconnect.process.lockdown import PR_SET_NO_NEW_PRIVS as PR_SET_NO_NEW_PRIVS
from sepconnect.process.lockdown import drop_bounding_set as drop_bounding_set
from sepconnect.process.lockdown import no_new_privs_and_undumpable as no_new_privs_and_undumpable
from sepconnect.process.prctl import PR_SET_DUMPABLE as PR_SET_DUMPABLE
from sepconnect.process.prctl import PR_SET_NAME as PR_SET_NAME
from sepconnect.process.prctl import prctl as prctl

PR_SET_KEEPCAPS = 8
PR_CAP_AMBIENT_RAISE = 2


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
