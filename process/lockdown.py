"""What a process does once, early, to shut doors for good: empty the capability bounding
set, set no_new_privs, become undumpable (prctl(2), through process/prctl.py).

Apart from prctl.py so that a process that only needs prctl(2) later (the helper's
serving stage: its title and dumpable flag) does not load these. Stdlib only, no typing
import (process/prctl.py says why): the launcher's root stage and every program's start
load it.
"""

from __future__ import annotations

from sepconnect.process.prctl import PR_SET_DUMPABLE, prctl

PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
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


def no_new_privs_and_undumpable() -> None:
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    prctl(PR_SET_DUMPABLE, 0)
