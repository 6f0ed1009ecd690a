"""The worker's account, and the worker spawner started under it (launcher side).

The worker runs under a uid of its own: never root's, the supervisor's or the helper's
(docs/security.md). The launcher, while still root, starts the spawner
(``sepconnect-spawner``, spawner/) under that uid; the supervisor then asks it for each
worker. In the split units the spawner is its own socket-activated service
(sepconnect-spawner@.service) and the unprivileged session connects to it instead
(``--spawner-socket``).

The account: ``sepconnect-worker`` if it exists (the install step creates it; docs/usage.md,
"Accounts"), else the fixed uid and gid :data:`WORKER_FALLBACK_ID`, which must then belong
to no account and no group on this system.
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from sepconnect.process import privileges, programs

WORKER_ACCOUNT: Final = "sepconnect-worker"
WORKER_FALLBACK_ID: Final = 65532
"""The worker's uid and gid where the system has no ``sepconnect-worker`` account: the
top of the 16-bit range below ``nobody`` (65534) and the helper's fallback (65533), free
on Debian and in the usual container images (distroless uses it as "nonroot": there it
must be the worker account, or be freed)."""
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


def start_spawner(
    account: WorkerAccount, supervisor_uid: int, *, allow_weak_sandbox: bool
) -> tuple[subprocess.Popen[bytes], socket.socket, socket.socket]:
    """Start the spawner as ``account`` (we are root), with the first worker's channel
    end, which it starts at once; returns it, our end of its channel and our end of the
    first worker's.

    Between fork and exec the child empties its capability bounding set, drops every
    supplementary group, takes the account's gid and uid (all three of each) and sets
    no_new_privs, so the spawner program never runs with root's uid or a capability.
    """

    def become_the_worker_account() -> None:  # in the child; the launcher is one thread
        privileges.drop_bounding_set()
        os.setgroups([])
        os.setresgid(account.gid, account.gid, account.gid)
        os.setresuid(account.uid, account.uid, account.uid)
        privileges.prctl(privileges.PR_SET_NO_NEW_PRIVS, 1)

    # Plain socket calls: the codec (ipc/wire.py) is none of the root phase's code.
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    worker_ours, worker_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    argv = [
        *programs.program("sepconnect-spawner", "sepconnect.spawner"),
        "--fd",
        str(theirs.fileno()),
        "--peer-uid",
        str(supervisor_uid),
        "--first-worker",
        str(worker_theirs.fileno()),
    ]
    if allow_weak_sandbox:
        argv.append("--allow-weak-sandbox")
    try:
        proc = subprocess.Popen(
            argv,
            pass_fds=(theirs.fileno(), worker_theirs.fileno()),
            stdin=subprocess.DEVNULL,
            process_group=0,  # a ^C at the terminal is the supervisor's to handle
            close_fds=True,
            env=programs.child_environment(),
            preexec_fn=become_the_worker_account,
        )
    except BaseException:
        ours.close()
        worker_ours.close()
        raise
    finally:
        theirs.close()
        worker_theirs.close()
    return proc, ours, worker_ours


def connect_spawner(path: str) -> socket.socket:
    """The split units: the spawner's socket (sepconnect-spawner.socket, Accept=yes)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        raise SpawnerSetupError(f"--spawner-socket {path}: {exc.strerror or exc}") from None
    return sock


def open_spawner(
    spawner_socket: str | None,
    service_uid: int,
    service_gid: int,
    *,
    helper_uid: int | None = None,
    allow_weak_sandbox: bool,
) -> tuple[subprocess.Popen[bytes] | None, socket.socket, socket.socket | None]:
    """The spawner for this session: the split units' socket, or started here (as root)
    under the workers' account. Returns the process we started (None for the socket),
    our end of its channel, and our end of the first worker's channel if it starts one
    at once (the one we start does)."""
    if spawner_socket is not None:
        return None, connect_spawner(spawner_socket), None
    account = worker_account(service_uid, service_gid, helper_uid=helper_uid)
    return start_spawner(account, service_uid, allow_weak_sandbox=allow_weak_sandbox)
