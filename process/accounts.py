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


def helper_account(name: str | None, service_uid: int) -> tuple[str, int, int]:
    """(name, uid, gid) of ``--helper-user NAME``, else of sepconnect-helper, else the
    fixed :data:`HELPER_FALLBACK_UID` (with no account of its own)."""
    try:
        entry = pwd.getpwnam(name or HELPER_ACCOUNT)
        found = entry.pw_name, entry.pw_uid, entry.pw_gid
    except KeyError:
        if name:
            raise AccountError(f"--helper-user {name}: no such account") from None
        try:
            owner = pwd.getpwuid(HELPER_FALLBACK_UID).pw_name
        except KeyError:
            found = str(HELPER_FALLBACK_UID), HELPER_FALLBACK_UID, HELPER_FALLBACK_UID
        else:
            raise AccountError(
                f"uid {HELPER_FALLBACK_UID}, the helper's when it has no account, belongs to "
                f"{owner}: create the helper's account (scripts/install-system.sh) or name "
                "one with --helper-user"
            ) from None
    if found[1] == 0:
        raise AccountError(f"--helper-user {found[0]}: the helper never runs as root")
    if found[1] == service_uid:
        raise AccountError(
            f"--helper-user {found[0]}: the helper needs a uid of its own, not the "
            "unprivileged side's"
        )
    return found
