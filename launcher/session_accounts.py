"""The helper's and the workers' accounts, as the planner checks them (launcher side).

The helper runs under an account of its own: ``sepconnect-helper`` if it exists, else
the fixed uid :data:`HELPER_FALLBACK_UID` (process/accounts.py), never root's, never the
service account's.

The worker runs under a uid of its own: never root's, the supervisor's or the helper's
(docs/security.md). The launcher's root stage starts the spawner (``sepconnect-spawner``,
spawner/) under that uid (launcher/rootstage.py); the supervisor then asks it for each
worker. In the split units the spawner is its own socket-activated service
(sepconnect-spawner@.service) and the unprivileged session connects to it instead
(``--spawner-socket``).

The account: ``sepconnect-worker`` if it exists (the install step creates it; docs/usage.md,
"Accounts"), else the fixed uid and gid :data:`WORKER_FALLBACK_ID`, which must then belong
to no account and no group on this system.
"""

from __future__ import annotations

import grp
import pwd
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from sepconnect.process.accounts import (
    HELPER_ACCOUNT,
    HELPER_FALLBACK_UID,
    WORKER_ACCOUNT,
    WORKER_FALLBACK_ID,
    AccountError,
)

__all__ = [
    "WORKER_ACCOUNT",
    "WORKER_FALLBACK_ID",
    "SpawnerSetupError",
    "helper_account",
    "worker_account",
]
NO_LOGIN_SHELLS: Final = frozenset(
    {"/usr/sbin/nologin", "/sbin/nologin", "/bin/false", "/usr/bin/false"}
)


class SpawnerSetupError(Exception):
    """The worker's account or the spawner cannot be set up (exit USAGE)."""


@dataclass(frozen=True, slots=True)
class WorkerAccount:
    name: str
    uid: int
    gid: int


def worker_account(
    service_uid: int,
    service_gid: int,
    *,
    helper_uid: int | None = None,
    getpwnam: Callable[[str], pwd.struct_passwd] = pwd.getpwnam,
    getpwuid: Callable[[int], pwd.struct_passwd] = pwd.getpwuid,
    getgrgid: Callable[[int], grp.struct_group] = grp.getgrgid,
) -> WorkerAccount:
    """The account the workers run as; SpawnerSetupError if it would be anyone's but theirs."""
    try:
        entry: pwd.struct_passwd | None = getpwnam(WORKER_ACCOUNT)
    except KeyError:
        entry = None
    if entry is not None:
        name, uid, gid = WORKER_ACCOUNT, entry.pw_uid, entry.pw_gid
        if entry.pw_shell not in NO_LOGIN_SHELLS:
            raise SpawnerSetupError(
                f"the {name} account has the login shell {entry.pw_shell!r}: it must be no "
                f"one's login (e.g. /usr/sbin/nologin)"
            )
    else:
        name, uid, gid = str(WORKER_FALLBACK_ID), WORKER_FALLBACK_ID, WORKER_FALLBACK_ID
        for kind, lookup in (("uid", getpwuid), ("gid", getgrgid)):
            try:
                owner = lookup(WORKER_FALLBACK_ID)
            except KeyError:
                continue
            raise SpawnerSetupError(
                f"no {WORKER_ACCOUNT} account, and the workers' fixed {kind} "
                f"{WORKER_FALLBACK_ID} belongs to {owner[0]!r}: create the {WORKER_ACCOUNT} "
                "account (docs/usage.md, Accounts)"
            )
    if uid == 0 or gid == 0:
        raise SpawnerSetupError(f"the {name} account must not have root's uid or gid")
    if uid == service_uid or gid == service_gid:
        raise SpawnerSetupError(
            f"the {name} account (uid {uid}, gid {gid}) must not share the service account's "
            f"uid {service_uid} or gid {service_gid}"
        )
    if helper_uid is not None and helper_uid in (uid, gid):
        raise SpawnerSetupError(
            f"the {name} account (uid {uid}, gid {gid}) must not share the privileged "
            f"helper's uid {helper_uid}"
        )
    return WorkerAccount(name, uid, gid)


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
