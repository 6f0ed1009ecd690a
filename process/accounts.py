"""The accounts sepconnect's processes run as (docs/usage.md, "Accounts").

The install step (scripts/install-system.sh) creates two system accounts: the service
account of the supervisor and the worker, and the helper's own. Without them, the
supervisor runs as ``nobody`` and the helper as :data:`HELPER_FALLBACK_UID`, a fixed uid
that no account may have (checked: refused if one does). Never uid 0, and never the same
uid for the helper and the supervisor.
"""

from __future__ import annotations

import pwd
from typing import Final

SERVICE_ACCOUNT: Final = "sepconnect"
SERVICE_FALLBACK: Final = "nobody"
HELPER_ACCOUNT: Final = "sepconnect-helper"
HELPER_FALLBACK_UID: Final = 65533
"""The helper's uid (and gid) where the install step did not create its account:
65533 is in none of Debian's or systemd's allocated ranges and is not nobody (65534)."""
WORKER_ACCOUNT: Final = "sepconnect-worker"
WORKER_FALLBACK_ID: Final = 65532
"""The workers' uid and gid where the system has no ``sepconnect-worker`` account: the
top of the 16-bit range below ``nobody`` (65534) and the helper's fallback (65533), free
on Debian and in the usual container images (distroless uses it as "nonroot": there it
must be the worker account, or be freed). launcher/session_accounts.py checks it."""


class AccountError(ValueError):
    """No usable account: the message says which and why."""


def service_account(name: str | None) -> tuple[str, int, int]:
    """(name, uid, gid) of ``--setuid NAME``, else of sepconnect, else of nobody."""
    candidates = [name] if name else [SERVICE_ACCOUNT, SERVICE_FALLBACK]
    for candidate in candidates:
        try:
            entry = pwd.getpwnam(candidate)
        except KeyError:
            continue
        if entry.pw_uid == 0:
            raise AccountError(f"--setuid {candidate}: the unprivileged side never runs as root")
        return candidate, entry.pw_uid, entry.pw_gid
    raise AccountError(f"no such account: {' or '.join(candidates)}")


def worker_default() -> tuple[str, int, int]:
    """(name, uid, gid) of sepconnect-worker, else the fixed :data:`WORKER_FALLBACK_ID`
    (unchecked: launcher/session_accounts.py's worker_account refuses what is not theirs)."""
    try:
        entry = pwd.getpwnam(WORKER_ACCOUNT)
    except KeyError:
        return str(WORKER_FALLBACK_ID), WORKER_FALLBACK_ID, WORKER_FALLBACK_ID
    return WORKER_ACCOUNT, entry.pw_uid, entry.pw_gid
