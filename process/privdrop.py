"""Taking another account for good: the one privilege drop of the processes root starts
with (the launcher's root stage, its children, and the helper's start stage).

Stdlib only (and process/prctl.py, process/lockdown.py). process/capabilities.py
(capset) is loaded only for a drop that keeps a capability (the helper's): the root
stage keeps none. No typing import (process/prctl.py says why).
"""

from __future__ import annotations

import os

from sepconnect.process import lockdown, prctl

PR_SET_KEEPCAPS = 8


def become(
    uid: int, gid: int, groups: tuple[int, ...] = (), *, keep: frozenset[int] = frozenset()
) -> None:
    """Take *uid*, *gid* and *groups* for good with no capability but *keep* (effective
    and permitted; the bounding set emptied but for them), no_new_privs, not dumpable
    (only root can touch us now); then prove root cannot come back. The bounding set
    goes first, while CAP_SETPCAP is still effective."""
    lockdown.drop_bounding_set(keep=keep)
    if keep:
        prctl.prctl(PR_SET_KEEPCAPS, 1)  # the permitted set survives setresuid
    os.setgroups(groups)
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    lockdown.no_new_privs_and_undumpable()
    if keep:
        from sepconnect.process.capabilities import keep_only_capabilities

        prctl.prctl(PR_SET_KEEPCAPS, 0)
        keep_only_capabilities(keep)  # the effective set did not survive
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise RuntimeError("privilege drop failed: setuid(0) succeeded")
